"""_SUMMARY.json: the run's counts, written by the pipeline (or by run() when
there is nothing new to score) and read back by the CLI, the demo and the report."""
import json

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

EMPTY_COUNTS = {"rows": 0, "by_status": {}, "by_error_code": {}, "flagged": 0, "sources": 0}


def _path(output):
    return output.rstrip("/") + "/_SUMMARY.json"


def write(output, run_id, counts, model_info, model_uri, elapsed, images_files=(), study_files=()):
    summary = {"run_id": run_id, **counts, "model": model_info, "model_uri": model_uri,
               "elapsed_seconds": round(elapsed, 2),
               "images_per_second": round(counts["by_status"].get("ok", 0) / max(elapsed, 1e-9), 2),
               "output_files": sorted(images_files), "study_files": sorted(study_files)}
    with FileSystems.create(_path(output), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


def read(output):
    with FileSystems.open(_path(output), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read())


def exists(output):
    return FileSystems.exists(_path(output))

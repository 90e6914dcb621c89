"""_SUMMARY.json: a result's counts, written by the pipeline's finalisation
(or by run() when there is nothing new to score) and read back by the CLI,
the demo and the report. Every function takes the folder that holds the result
(`results_store.results_dir(output)`, or a staging folder before promotion)."""
import json

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

SCORE_BINS = 10
EMPTY_COUNTS = {"rows": 0, "by_status": {}, "by_error_code": {}, "flagged": 0, "out_of_distribution": 0,
                "sources": 0, "score_histogram": [0] * SCORE_BINS}
COUNT_KEYS = ("rows", "flagged", "out_of_distribution", "sources")


def _path(folder):
    return folder.rstrip("/") + "/_SUMMARY.json"


def merge_counts(a, b):
    """Counts of two runs' rows together (an incremental run carries earlier rows over)."""
    out = {k: a.get(k, 0) + b.get(k, 0) for k in COUNT_KEYS}
    out["score_histogram"] = [x + y for x, y in zip(a.get("score_histogram") or [0] * SCORE_BINS,
                                                    b.get("score_histogram") or [0] * SCORE_BINS, strict=True)]
    for key in ("by_status", "by_error_code"):
        out[key] = dict(a.get(key, {}))
        for k, v in b.get(key, {}).items():
            out[key][k] = out[key].get(k, 0) + v
    return out


def build(run_id, counts, model_info, model_uri, elapsed, images_files=(), study_files=(), result=None):
    """The summary of one run; `result` describes the whole promoted result when it holds earlier runs."""
    summary = {"run_id": run_id, **counts, "model": model_info, "model_uri": model_uri,
               "elapsed_seconds": round(elapsed, 2),
               "images_per_second": round(counts["by_status"].get("ok", 0) / max(elapsed, 1e-9), 2),
               "output_files": sorted(images_files), "study_files": sorted(study_files)}
    summary["result"] = result or {"run_ids": [run_id], **{k: counts[k] for k in (*COUNT_KEYS, "by_status",
                                                                                  "by_error_code",
                                                                                  "score_histogram")},
                                   "output_files": sorted(images_files), "study_files": sorted(study_files)}
    return summary


def write(folder, summary):
    with FileSystems.create(_path(folder), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


def read(folder):
    with FileSystems.open(_path(folder), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read())


def exists(folder):
    return FileSystems.exists(_path(folder))

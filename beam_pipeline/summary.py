"""_SUMMARY.json: a result's counts, written by the pipeline's finalisation
(or by run() when there is nothing new to score) and read back by the CLI,
the demo and the report. Every function takes the folder that holds the result
(`results_store.results_dir(output)`, or a staging folder before promotion)."""
import json

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import schema

SCORE_BINS = 10
EMPTY_COUNTS = {"rows": 0, "by_status": {}, "by_error_code": {}, "flagged": 0, "out_of_distribution": 0,
                "sources": 0, "score_histogram": [0] * SCORE_BINS}
COUNT_KEYS = ("rows", "flagged", "out_of_distribution", "sources")


def _path(folder):
    return folder.rstrip("/") + "/_SUMMARY.json"


class RowCounts(beam.CombineFn):
    """Image rows -> a result's counts (rows, statuses, error codes, flagged, OOD, sources, score histogram)."""

    def create_accumulator(self):
        return {**EMPTY_COUNTS, "by_status": {}, "by_error_code": {}, "sources": set(),
                "score_histogram": [0] * SCORE_BINS}

    def add_input(self, acc, row):
        acc["rows"] += 1
        acc["by_status"][row["status"]] = acc["by_status"].get(row["status"], 0) + 1
        if row["error_code"]:
            acc["by_error_code"][row["error_code"]] = acc["by_error_code"].get(row["error_code"], 0) + 1
        acc["flagged"] += int(row["predicted_label"] == schema.LABEL_TUMOR)
        acc["out_of_distribution"] += int(row["in_distribution"] is False)
        if row["tumor_probability"] is not None:
            acc["score_histogram"][min(int(row["tumor_probability"] * SCORE_BINS), SCORE_BINS - 1)] += 1
        acc["sources"].add(row["source_uri"])
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out["rows"] += a["rows"]
            out["flagged"] += a["flagged"]
            out["out_of_distribution"] += a["out_of_distribution"]
            out["score_histogram"] = [x + y for x, y in zip(out["score_histogram"], a["score_histogram"], strict=True)]
            out["sources"] |= a["sources"]
            for key in ("by_status", "by_error_code"):
                for k, v in a[key].items():
                    out[key][k] = out[key].get(k, 0) + v
        return out

    def extract_output(self, acc):
        return {**acc, "sources": len(acc["sources"])}


def count_rows(rows):
    """RowCounts over rows already in hand (the rows an incremental run supersedes)."""
    fn = RowCounts()
    acc = fn.create_accumulator()
    for row in rows:
        acc = fn.add_input(acc, row)
    return fn.extract_output(acc)


def subtract_counts(a, b):
    """Counts of `a` without rows `b` counted among them (superseded rows leave the result)."""
    negative = {k: -b.get(k, 0) for k in COUNT_KEYS}
    negative["score_histogram"] = [-x for x in b.get("score_histogram") or [0] * SCORE_BINS]
    for key in ("by_status", "by_error_code"):
        negative[key] = {k: -v for k, v in b.get(key, {}).items()}
    out = merge_counts(a, negative)
    for key in ("by_status", "by_error_code"):
        out[key] = {k: v for k, v in out[key].items() if v}
    return out


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

"""Peak memory of report generation against the number of image rows: it must not grow with the run.

  .venv/bin/python bench/report_memory.py --rows 100000,1000000

For each size, writes a synthetic result folder (every column of the image table filled, in Parquet
files of 100 k rows as Dataflow shards would be; series and study tables at 20 images per series and 5
series per study; 10 % of images flagged, 1 % errors; a heatmap PNG for each of the first flagged rows),
then runs `report.write_report` in a fresh process and reads its peak RSS (VmHWM). The first row is
that process's imports alone, the floor every report pays.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beam_pipeline import schema  # noqa: E402
from bench import common  # noqa: E402

FILE_ROWS = 100_000


def _column(field, n, rng, start, overrides):
    if field.name in overrides:
        return pa.array(overrides[field.name], field.type)
    t = field.type
    if pa.types.is_string(t):
        return pa.array([f"{field.name}-{(start + i) % 5000:05d}-padding-to-a-realistic-length" for i in range(n)], t)
    if pa.types.is_floating(t):
        return pa.array(rng.random(n), t)
    if pa.types.is_integer(t):
        return pa.array(rng.integers(0, 1000, n), t)
    if pa.types.is_boolean(t):
        return pa.array(rng.random(n) < 0.5, t)
    if pa.types.is_timestamp(t):
        return pa.array(np.full(n, int(time.time() * 1e6)), pa.int64()).cast(t)
    if pa.types.is_list(t):
        return pa.array([["MR"]] * n, t)
    return pa.nulls(n, t)


def _table(sch, n, rng, start=0, **overrides):
    return pa.Table.from_arrays([_column(f, n, rng, start, overrides) for f in sch], schema=sch)


def write_result(folder, rows, rng):
    os.makedirs(os.path.join(folder, "heatmaps"), exist_ok=True)
    png = _png()
    n_series = max(1, rows // 20)
    for start in range(0, rows, FILE_ROWS):
        n = min(FILE_ROWS, rows - start)
        idx = np.arange(start, start + n)
        status = np.where(idx % 100 == 7, "error", "ok")
        prob = rng.random(n)
        flagged = (prob > 0.9) & (status == "ok")
        heat = [f"{folder}/heatmaps/h{i}.png" if f and i < 2000 else None for i, f in zip(idx, flagged, strict=True)]
        series = idx // 20
        t = _table(schema.IMAGE_SCHEMA, n, rng, start, status=status.tolist(),
                   error_code=[None if s == "ok" else "undecodable_image" for s in status],
                   tumor_probability=np.where(status == "ok", prob, np.nan).tolist(), threshold=[0.5] * n,
                   predicted_label=np.where(flagged, "tumor", "no_tumor").tolist(), heatmap_path=heat,
                   series_instance_uid=[f"1.2.3.{s}" for s in series],
                   study_instance_uid=[f"1.2.{s // 5}" for s in series])
        pq.write_table(t, os.path.join(folder, f"images-{start // FILE_ROWS:05d}-of-99999.parquet"))
    for i in range(min(2000, rows)):
        with open(os.path.join(folder, "heatmaps", f"h{i}.png"), "wb") as f:
            f.write(png)
    s = _table(schema.SERIES_SCHEMA, n_series, rng, flagged=(rng.random(n_series) < 0.3).tolist(),
               study_instance_uid=[f"1.2.{k // 5}" for k in range(n_series)],
               series_instance_uid=[f"1.2.3.{k}" for k in range(n_series)])
    pq.write_table(s, os.path.join(folder, "series-00000-of-00001.parquet"))
    n_studies = max(1, n_series // 5)
    pq.write_table(_table(schema.STUDY_SCHEMA, n_studies, rng, flagged=(rng.random(n_studies) < 0.3).tolist()),
                   os.path.join(folder, "studies-00000-of-00001.parquet"))
    errors = rows // 100
    summary = {"run_id": "bench", "rows": rows, "by_status": {"ok": rows - errors, "error": errors},
               "by_error_code": {"undecodable_image": errors}, "flagged": rows // 10, "out_of_distribution": 0,
               "sources": 1, "score_histogram": [rows // 10] * 10, "model": {"model_name": "m", "model_version": "1",
                                                                           "model_sha256": "0" * 64},
               "model_uri": "/nonexistent", "elapsed_seconds": 1.0, "images_per_second": 1.0}
    with open(os.path.join(folder, "_SUMMARY.json"), "w") as f:
        json.dump(summary, f)


def _png():
    from screening_core import gradcam
    x = np.random.default_rng(0).random((128, 128))
    return gradcam.overlay_png(x, x, 0.9)


def peak_rss_mib(code):
    out = subprocess.run([sys.executable, "-c", code + "\nprint(" + common.PEAK_RSS_MIB + ")"],
                         capture_output=True, text=True, check=True, cwd=common.REPO)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="bench-report-"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = [{"image_rows": 0, "parquet_mib": 0.0, "seconds": 0.0,
             "peak_rss_mib": peak_rss_mib("import beam_pipeline.report")}]
    for n in (int(v) for v in args.rows.split(",")):
        folder = os.path.join(args.work, f"r{n}")
        write_result(folder, n, rng)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".parquet"))
        t0 = time.perf_counter()
        rss = peak_rss_mib(f"from beam_pipeline import report; report.write_report({folder!r})")
        rows.append({"image_rows": n, "parquet_mib": size / 2 ** 20, "seconds": time.perf_counter() - t0,
                     "peak_rss_mib": rss})
    common.report("report_memory", rows, {"file_rows": FILE_ROWS, "batch_rows": 65536})


if __name__ == "__main__":
    main()

"""What an incremental (--manifest) night pays at finalisation for keeping each image once and each study
whole (beam_pipeline/incremental.py), against the size of the result it carries over.

  .venv/bin/python bench/incremental_finalise.py --rows 100000,1000000

For each size, writes a promoted result of that many DICOM image rows (every column filled, Parquet files
of 100 k rows as Dataflow shards would be, 20 images per series, 5 series per study, 1 % errors) and a
night's staged tables: 400 images of 4 new studies and 100 images that re-send one series of a carried
study (they supersede its rows; the study is aggregated again with its 4 other series). Then runs
`finalise.finalise` (no report) in a fresh process, with and without the incremental step (`--step off`
makes drop_superseded and complete_studies no-ops: the carry-over alone), and reads its wall time and
peak RSS (VmHWM).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beam_pipeline import schema, studies, summary  # noqa: E402
from bench import common  # noqa: E402
from bench.report_memory import _table  # noqa: E402

FILE_ROWS = 100_000
NEW_STUDIES, PER_STUDY, RESENT = 4, 100, 20 * 5  # tonight: 4 new studies, one carried series sent 5 times over


def _images(n, start, rng, study_of, run_id):
    idx = np.arange(start, start + n)
    status = np.where(idx % 100 == 7, "error", "ok")
    prob = rng.random(n)
    return _table(schema.IMAGE_SCHEMA, n, rng, start, status=status.tolist(), run_id=[run_id] * n,
                  error_code=[None if s == "ok" else "undecodable_image" for s in status],
                  tumor_probability=[float(p) if s == "ok" else None for p, s in zip(prob, status, strict=True)],
                  threshold=[0.5] * n,
                  predicted_label=np.where((prob > 0.9) & (status == "ok"), "tumor", "no_tumor").tolist(),
                  heatmap_path=[None] * n, source_uri=[f"dicomweb://pacs/instances/{i}" for i in idx],
                  member_path=[""] * n, patient_group=[None] * n, image_format=["dicom"] * n,
                  frame_index=[0] * n, in_distribution=[True] * n,
                  series_instance_uid=[f"1.2.3.{i // 20}" for i in idx],
                  study_instance_uid=[study_of(i) for i in idx])


def _write_tables(folder, run_id, image_tables):
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, t in enumerate(image_tables):
        pq.write_table(t, os.path.join(folder, f"images-{run_id}-{i:05d}.parquet"))
        rows.extend(t.to_pylist())
    series, study_rows = studies.aggregate(rows)
    pq.write_table(pa.Table.from_pylist([studies.series_table_row(s) for s in series], schema=schema.SERIES_SCHEMA),
                   os.path.join(folder, f"series-{run_id}-00000.parquet"))
    pq.write_table(pa.Table.from_pylist([{k: s.get(k) for k in schema.STUDY_SCHEMA.names} for s in study_rows],
                                        schema=schema.STUDY_SCHEMA), os.path.join(folder, f"studies-{run_id}-00000.parquet"))
    return summary.count_rows(rows)


def build(work, n, rng):
    """<work>/out with a promoted result of n rows; returns (staging, tonight's counts)."""
    from beam_pipeline import results_store
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    results = results_store.results_dir(out)
    tables = [_images(min(FILE_ROWS, n - s), s, rng, lambda i: f"1.2.{i // 100}", "night1")
              for s in range(0, n, FILE_ROWS)]
    counts = _write_tables(results, "night1", tables)
    with open(os.path.join(results, "_SUMMARY.json"), "w") as f:
        json.dump({"run_id": "night1", **counts, "result": {"run_ids": ["night1"], **counts}}, f)
    staging = results_store.staging_dir(out, "night2-bench")
    new = _images(NEW_STUDIES * PER_STUDY, n, rng, lambda i: f"9.9.{i // PER_STUDY}", "night2")
    resent = _images(RESENT, 700, rng, lambda i: f"1.2.{i // 100}", "night2")  # study 1.2.7's instances again
    return out, staging, _write_tables(staging, "night2", [pa.concat_tables([new, resent])])


RUN = """
import json, sys, time
from beam_pipeline import finalise, incremental, results_store
out, staging, counts, step = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
if step == "off":
    incremental.drop_superseded = lambda *a, **k: []
    incremental.complete_studies = lambda *a, **k: None
names = sorted(p for p in __import__("os").listdir(staging) if p.endswith(".parquet"))
final = lambda prefix: [f"{results_store.results_dir(out)}/{p}" for p in names if p.startswith(prefix)]
plan = finalise.Plan(output=out, stage_id="night2-bench", run_id="night2", started_at=time.time(),
                     model_info={"model_name": "m", "model_version": "1", "model_sha256": "0" * 64},
                     model_uri="/nonexistent", write_report=False, carry_over=True)
t0 = time.perf_counter()
s = finalise.finalise(plan, counts, final("images-"), final("studies-"), series_files=final("series-"))
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": s["result"]["rows"]}))
"""


def _run(out, staging, counts, step):
    code = RUN + "\nprint(" + common.PEAK_RSS_MIB + ")"
    res = subprocess.run([sys.executable, "-c", code, out, staging, json.dumps(counts), step],
                         capture_output=True, text=True, cwd=common.REPO)
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    lines = res.stdout.strip().splitlines()
    return {**json.loads(lines[-2]), "peak_rss_mib": float(lines[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-incremental-")
    rows = []
    try:
        for n in (int(v) for v in args.rows.split(",")):
            for step in ("off", "on"):
                out, staging, counts = build(work, n, np.random.default_rng(0))
                r = _run(out, staging, counts, step)
                rows.append({"carried_rows": n, "incremental_step": step, "seconds": round(r["seconds"], 2),
                             "peak_rss_mib": round(r["peak_rss_mib"], 1), "result_rows": r["rows"]})
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    common.report("incremental_finalise", rows, {"file_rows": FILE_ROWS, "tonight_rows": NEW_STUDIES * PER_STUDY + RESENT,
                                                  "superseded_rows": RESENT})


if __name__ == "__main__":
    main()

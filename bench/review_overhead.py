"""Cost of the review outputs (Grad-CAM heatmaps for flagged images + HTML report):
the same run with and without them, wall time ratio.

  .venv/bin/python bench/review_overhead.py [--n 1000]
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beam_pipeline import run  # noqa: E402
from bench import common  # noqa: E402
from bench.scoring import pipeline_run  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="bench-review-"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    blobs, source = common.image_bytes(args.n)
    path = os.path.join(args.work, "a.zip")
    common.write_zip(path, blobs)
    rows = []
    for label, extra in [("without review outputs", ["--no-heatmaps", "--no-report"]),
                         ("with heatmaps + report", ["--heatmaps", "--report"])]:
        out = os.path.join(args.work, label.split()[0])
        wall = pipeline_run([path], out, args.model, 64, 64, extra)
        summary = run.read_summary(out)
        rows.append({"run": label, "images": args.n, "flagged": summary["flagged"], "wall_s": wall})
    for r in rows:
        r["ratio_to_without"] = r["wall_s"] / rows[0]["wall_s"]
    common.report("review_overhead", rows, {"source": source})


if __name__ == "__main__":
    main()

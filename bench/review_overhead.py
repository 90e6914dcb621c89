"""Cost of the review outputs (heatmaps for flagged images + HTML report): the same run with and
without them, at a realistic share of flagged images (10 %) and at the brain-mri collection's (70 %).

  .venv/bin/python bench/review_overhead.py [--n 8000]

For each tumor share, N real slices (../shared brain-mri; generated when absent) are drawn with that
share from the tumor classes, packed into one zip and scored twice with the default engine: once with
--no-heatmaps --no-report, once with both. Ratio = wall time with / without, same inputs, this one run.
The heatmaps come from the scoring pass (class-activation maps, screening_core/gradcam.py: cam_head) when the
artifact's engine returns them, else from Grad-CAM on TensorFlow (--engine tensorflow rows).
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
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--shares", default="0.0,0.7",
                        help="tumor shares to draw, comma-separated (0.0: ~13 %% flagged, 0.7: ~73 %%)")
    parser.add_argument("--engines", default="auto", help="engines to run, comma-separated")
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="bench-review-"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for share in (float(s) for s in args.shares.split(",")):
        blobs, source = common.image_bytes(args.n, seed=7, tumor_share=share)
        path = os.path.join(args.work, f"share{share}.zip")
        common.write_zip(path, blobs)
        for engine in args.engines.split(","):
            base = None
            for label, extra in [("without review outputs", ["--no-heatmaps", "--no-report"]),
                                 ("with heatmaps + report", ["--heatmaps", "--report"])]:
                out = os.path.join(args.work, f"{share}-{engine}-{label.split()[0]}")
                wall = pipeline_run([path], out, args.model, 64, 64, [*extra, "--engine", engine])
                summary = run.read_summary(out)
                base = base or wall
                rows.append({"tumor_share": share, "engine": summary.get("engine", engine), "run": label,
                             "images": args.n, "flagged": summary["flagged"], "wall_s": wall,
                             "ratio_to_without": wall / base})
    common.report("review_overhead", rows, {"source": source})


if __name__ == "__main__":
    main()

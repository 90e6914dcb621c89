"""Scaling: pipeline wall time at 1x, 4x and 16x the images (DirectRunner).

  .venv/bin/python bench/scaling.py [--base 250]

Start-up (interpreter, imports, model load) is measured separately and
subtracted; linear scaling means time(16x) - start-up <= 17 x (time(1x) - start-up).
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402
from bench.scoring import pipeline_run, startup_seconds  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=250)
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="bench-scaling-"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mode", default="multi_threading", help="DirectRunner running mode with --workers > 1")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    blobs, source = common.image_bytes(16 * args.base)
    startup = startup_seconds(args.model)
    extra = ["--direct_num_workers", str(args.workers), "--direct_running_mode",
             args.mode if args.workers > 1 else "in_memory"]
    rows, base_time = [], None
    for factor in (1, 4, 16):
        n = factor * args.base
        path = os.path.join(args.work, f"x{factor}.zip")
        common.write_zip(path, blobs[:n])
        wall = pipeline_run([path], os.path.join(args.work, f"out{factor}"), args.model, 64, 64, extra)
        work = wall - startup
        base_time = base_time or work
        rows.append({"factor": factor, "images": n, "wall_s": wall, "minus_startup_s": work,
                     "images_per_s": n / work, "time_ratio_vs_1x": work / base_time})
    common.report("scaling", rows, {"source": source, "startup_seconds": round(startup, 2),
                                    "workers": args.workers, "mode": args.mode,
                                    "linear": rows[-1]["time_ratio_vs_1x"] <= 17.0})


if __name__ == "__main__":
    main()

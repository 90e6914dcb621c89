"""CPU `model.predict` throughput of an artifact at a given batch size (issue target: >= 150 images/s).

  .venv/bin/python bench/predict_speed.py [--model <default model>] [--batch-size 64]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from screening_core import artifact
    from trainer.model import flops_per_image
    model, md = artifact.load(args.model)
    spec = md["input_spec"]
    x = np.random.default_rng(0).random((args.images, spec["height"], spec["width"], 1), np.float32)
    model.predict(x[: args.batch_size * 2], batch_size=args.batch_size, verbose=0)
    rows = []
    for i in range(args.repeats):
        t = time.perf_counter()
        model.predict(x, batch_size=args.batch_size, verbose=0)
        secs = time.perf_counter() - t
        rows.append({"repeat": i + 1, "images": args.images, "seconds": secs, "images_per_s": args.images / secs})
    common.report("predict_speed", rows, {
        "model": os.path.relpath(args.model, common.REPO), "batch_size": args.batch_size,
        "flops_per_image": flops_per_image(model),
        "model_file_mib": round(os.path.getsize(os.path.join(args.model, "model.keras")) / 2 ** 20, 2),
        "best_images_per_s": round(max(r["images_per_s"] for r in rows), 1)})


if __name__ == "__main__":
    main()

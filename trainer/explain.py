"""What does the model look at? Grad-CAM on a validation sample of an artifact.

  python -m trainer.explain models/brain-tumor-cnn/2 [--per-group 4]

Picks validation images from the artifact's validation_predictions.csv
(true positives per tumor type, true negatives, and every kind of error),
writes gradcam_sample.png (input | overlay pairs) and gradcam_sample.json
beside the artifact. The JSON gives, per group, the share of Grad-CAM mass
that falls outside the head (background, borders, text overlays): a model
that learned the source collection instead of the tumor puts mass there.
"""
import argparse
import csv
import io
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from screening_core import artifact, gradcam, preprocessing
from trainer import HelpFormatter


def _groups(rows, threshold, per_group, seed):
    rng = np.random.default_rng(seed)
    groups = {}
    for r in rows:
        pos, flagged = r["label"] == "1", float(r["score"]) >= threshold
        kind = ("TP " + r["class_name"]) if pos and flagged else ("FN " + r["class_name"]) if pos else \
            "FP " + r["class_name"] if flagged else "TN " + r["class_name"]
        groups.setdefault(kind, []).append(r)
    return {k: [v[i] for i in rng.choice(len(v), min(per_group, len(v)), replace=False)]
            for k, v in sorted(groups.items())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--per-group", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, md = artifact.load(args.artifact)
    spec = preprocessing.InputSpec.from_dict(md["input_spec"])
    explain = gradcam.make_explainer(model)
    with open(os.path.join(args.artifact, artifact.PREDICTIONS_FILE)) as f:
        rows = list(csv.DictReader(f))
    report, tiles = {}, []
    for kind, picks in _groups(rows, md["threshold"], args.per_group, args.seed).items():
        outside = []
        for r in picks:
            with tf.io.gfile.GFile(r["path"], "rb") as f:
                x = preprocessing.image_bytes_to_input(f.read(), spec)
            heat = explain(x[None])[0]
            head = x[..., 0] > 0.05
            outside.append(float(heat[~head].sum() / max(heat.sum(), 1e-9)))
            png = gradcam.overlay_png(x, heat, float(r["score"]), scale=1)
            tiles.append((kind, Image.open(io.BytesIO(png)).convert("RGB")))
        report[kind] = {"n": len(picks), "mean_heat_share_outside_head": round(float(np.mean(outside)), 3)}
    cols = 4
    w, h = tiles[0][1].size
    sheet = Image.new("RGB", (cols * w, ((len(tiles) + cols - 1) // cols) * (h + 14)), "white")
    from PIL import ImageDraw
    draw = ImageDraw.Draw(sheet)
    for i, (kind, tile) in enumerate(tiles):
        x0, y0 = (i % cols) * w, (i // cols) * (h + 14)
        sheet.paste(tile, (x0, y0 + 14))
        draw.text((x0 + 2, y0 + 1), kind, fill=(0, 0, 0))
    sheet.save(os.path.join(args.artifact, "gradcam_sample.png"))
    with open(os.path.join(args.artifact, "gradcam_sample.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

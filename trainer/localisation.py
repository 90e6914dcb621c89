"""Does the model look at the tumor? Grad-CAM against expert tumor masks.

  python -m trainer.localisation models/brain-tumor-cnn/3 --mask-dir ../shared/data/lgg/masks

For every tumor slice of the artifact's validation_predictions.csv whose file
name has a mask in --mask-dir (the LGG FLAIR masks), the mask is moved into
model-input coordinates with the same head crop as the image
(`preprocessing.project_mask`), dilated, and compared with the Grad-CAM
heatmap: the share of heat inside the mask, and the pointing game (is the
heat peak inside?). A model that learned the sequence or the collection puts
its heat elsewhere. Results go to localisation.json beside the artifact.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

from trainer import HelpFormatter


def evaluate(model, spec, rows, mask_dir, dilate_px, batch=32):
    """{split/source: figures} over tumor rows that have a mask."""
    import tensorflow as tf

    from screening_core import gradcam, preprocessing
    explain = gradcam.make_explainer(model)
    picked = []
    for r in rows:
        stem = os.path.splitext(os.path.basename(r["path"]))[0]
        mask_path = os.path.join(mask_dir, stem + ".png")
        if r["label"] == "1" and tf.io.gfile.exists(mask_path):
            picked.append((r, mask_path))
    out = {}
    for start in range(0, len(picked), batch):
        xs, masks, keys, scores = [], [], [], []
        for r, mask_path in picked[start:start + batch]:
            with tf.io.gfile.GFile(r["path"], "rb") as f:
                gray = preprocessing.decode_raster(f.read())
            with tf.io.gfile.GFile(mask_path, "rb") as f:
                mask = preprocessing.decode_raster(f.read())
            xs.append(preprocessing.prepare(gray, spec))
            masks.append(dilate(preprocessing.project_mask(gray, mask, spec) > 0.5, dilate_px))
            keys.append(f"{r.get('split', 'validation')}/{r.get('source', '')}")
            scores.append(float(r["score"]))
        heats = explain(np.stack(xs))
        for key, heat, mask, score in zip(keys, heats, masks, scores, strict=True):
            share, hit = heat_in_mask(heat, mask)
            d = out.setdefault(key, {"share": [], "hit": [], "mask_area": [], "score": []})
            d["share"].append(share)
            d["hit"].append(hit)
            d["mask_area"].append(float(mask.mean()))
            d["score"].append(score)
    return {k: {"n": len(v["share"]),
                "mean_heat_share_in_mask": round(float(np.mean(v["share"])), 4),
                "median_heat_share_in_mask": round(float(np.median(v["share"])), 4),
                "pointing_game_hit_rate": round(float(np.mean(v["hit"])), 4),
                "mean_dilated_mask_area_fraction": round(float(np.mean(v["mask_area"])), 4)}
            for k, v in sorted(out.items())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("artifact", help="model version directory")
    parser.add_argument("--mask-dir", required=True, help="folder of tumor masks named like the images (.png)")
    parser.add_argument("--dilate", type=int, default=4,
                        help="dilate masks by this many model-input pixels (Grad-CAM is 1/16 resolution)")
    args = parser.parse_args(argv)
    from screening_core import artifact, preprocessing
    model, md = artifact.load(args.artifact)
    spec = preprocessing.InputSpec.from_dict(md["input_spec"])
    with open(os.path.join(args.artifact, artifact.PREDICTIONS_FILE)) as f:
        rows = list(csv.DictReader(f))
    result = {"mask_dir_name": os.path.basename(os.path.normpath(args.mask_dir)), "dilate_px": args.dilate,
              "input_size": spec.height, "by_split_and_source": evaluate(model, spec, rows, args.mask_dir,
                                                                         args.dilate)}
    if not result["by_split_and_source"]:
        print("error: no tumor rows with a mask found", file=sys.stderr)
        return 2
    with open(os.path.join(args.artifact, "localisation.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation by a (2 * pixels + 1) square; a heatmap at 1/8 resolution blurs past edges."""
    from PIL import Image, ImageFilter
    if pixels <= 0:
        return np.asarray(mask, bool)
    im = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255)
    return np.asarray(im.filter(ImageFilter.MaxFilter(2 * pixels + 1))) > 0


def heat_in_mask(heat: np.ndarray, mask: np.ndarray) -> tuple[float, bool]:
    """(share of heat mass inside `mask`, whether the heat peak lies inside it)."""
    heat = np.asarray(heat, np.float64)
    mask = np.asarray(mask, bool)
    total = heat.sum()
    share = float(heat[mask].sum() / total) if total > 0 else 0.0
    return share, bool(mask.flat[int(np.argmax(heat))]) if total > 0 else False

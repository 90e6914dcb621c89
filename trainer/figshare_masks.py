"""Tumor masks for the brain-mri slices that come from the figshare collection (Cheng et al.).

Why: brain-mri has labels only, and every way of training its tumor slices
through a pooled slice loss let the lesion map write a slice classifier's
answer into a corner or the rim of the head (runs F and H,
docs/model_v4_notes.md). About a third of its tumor slices are copies of the
public figshare "brain tumor dataset" (Jun Cheng, 2017, CC BY 4.0,
doi:10.6084/m9.figshare.1512427; T1 post-contrast meningiomas, gliomas and
pituitary tumors) whose tumor borders were drawn by radiologists. Those borders
give the lesion-first model pixel supervision on contrast-enhanced tumors at
their own anatomical level.

Only brain-mri slices are given masks: a figshare image is used when it is the
same picture as a brain-mri slice (pixel correlation >= `MIN_R` at 32 px and at
full size, same tumor class). Figshare images without a brain-mri copy are never
read into training (brain-mri's held-out fifth may hold them).

Inputs (both public, neither shipped with the project):
  - the figshare images as `<index>.jpg` (512 px) in class folders, e.g. the
    `dataset-brain-tumor/categorized/{0,1,2}` folders of github.com/nanonane/RCS-YOLO
    (any other folder there, such as its Br35H `no-tumor/`, is refused: Br35H is
    a held-out test collection and must never be read);
  - the tumor borders as a CSV with `file` (`<index>.png`), `label_name` and
    `tumorBorder` (JSON list of [x, y] points in the 512 px image), e.g.
    `data/tumor_metadata.csv` of github.com/arogya-gyawali/brainscan_AI, which
    holds the `cjdata.tumorBorder` field of the figshare .mat files.

    python -m trainer.figshare_masks --brain-mri ../shared/data/brain-mri \\
        --figshare-images RCS-YOLO/dataset-brain-tumor/categorized \\
        --borders brainscan_AI/data/tumor_metadata.csv --out ../data/brain-mri-masks
"""
import argparse
import csv
import glob
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from trainer import HelpFormatter

MIN_R = 0.98
FIGSHARE_CLASS_FOLDERS = {"0": "pituitary", "1": "meningioma", "2": "glioma"}
TUMOR_CLASSES = ("glioma", "meningioma", "pituitary")


def _vector(img, n=32):
    a = np.asarray(img.convert("L").resize((n, n), Image.Resampling.BILINEAR), np.float32).ravel()
    a = a - a.mean()
    return a / (np.linalg.norm(a) + 1e-6)


def _full_r(a_img, b_img):
    a = np.asarray(a_img.convert("L"), np.float32)
    b = np.asarray(b_img.convert("L").resize(a.shape[::-1], Image.Resampling.BILINEAR), np.float32)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))


def load_figshare(images_dir, borders_csv):
    """{index: (image path, class name, border points)} for figshare images with a border."""
    extra = sorted(d for d in os.listdir(images_dir)
                   if os.path.isdir(os.path.join(images_dir, d)) and d not in FIGSHARE_CLASS_FOLDERS)
    if extra:
        raise SystemExit(f"{images_dir} holds folders other than the figshare classes {sorted(FIGSHARE_CLASS_FOLDERS)}: "
                         f"{extra}. Remove them (RCS-YOLO's no-tumor/ is Br35H, a held-out test collection).")
    csv.field_size_limit(1 << 30)
    with open(borders_csv, newline="") as f:
        borders = {os.path.splitext(r["file"])[0]: r for r in csv.DictReader(f)}
    out = {}
    for folder, cls in FIGSHARE_CLASS_FOLDERS.items():
        for p in glob.glob(os.path.join(images_dir, folder, "*.jpg")):
            k = os.path.splitext(os.path.basename(p))[0]
            r = borders.get(k)
            if r and r["label_name"] == cls and r["tumorBorder"].strip():
                out[k] = (p, cls, json.loads(r["tumorBorder"]))
    return out


def border_mask(points, size):
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).polygon([(float(x), float(y)) for x, y in points], fill=255)
    return m


def build(brain_mri, images_dir, borders_csv, out_dir):
    figshare = load_figshare(images_dir, borders_csv)
    keys = sorted(figshare)
    vectors = np.stack([_vector(Image.open(figshare[k][0])) for k in keys])
    os.makedirs(out_dir, exist_ok=True)
    written, per_class = [], {c: [0, 0] for c in TUMOR_CLASSES}
    for cls in TUMOR_CLASSES:
        for p in sorted(glob.glob(os.path.join(brain_mri, cls, "*"))):
            img = Image.open(p)
            per_class[cls][1] += 1
            r = vectors @ _vector(img)
            j = int(r.argmax())
            k = keys[j]
            if r[j] < MIN_R or figshare[k][1] != cls:
                continue
            fs_img = Image.open(figshare[k][0])
            if _full_r(img, fs_img) < MIN_R:
                continue
            mask = border_mask(figshare[k][2], fs_img.size).resize(img.size, Image.Resampling.BILINEAR)
            mask = mask.point(lambda v: 255 if v >= 128 else 0)
            if not np.asarray(mask).any():
                continue
            stem = os.path.splitext(os.path.basename(p))[0]
            mask.save(os.path.join(out_dir, stem + ".png"))
            written.append({"slice": f"{cls}/{os.path.basename(p)}", "figshare_index": k,
                            "area_px": int((np.asarray(mask) > 0).sum())})
            per_class[cls][0] += 1
    with open(os.path.join(out_dir, "provenance.json"), "w") as f:
        json.dump({"source": "figshare brain tumor dataset (Jun Cheng, 2017), doi:10.6084/m9.figshare.1512427",
                   "licence": "CC BY 4.0", "min_correlation": MIN_R,
                   "masks_per_class": {c: {"masked": m, "slices": n} for c, (m, n) in per_class.items()},
                   "masks": written}, f, indent=1)
    return per_class


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False, formatter_class=HelpFormatter)
    p.add_argument("--brain-mri", required=True, help="the brain-mri collection (class folders)")
    p.add_argument("--figshare-images", required=True, help="folder with the figshare class folders 0/1/2 of <index>.jpg")
    p.add_argument("--borders", required=True, help="CSV with file, label_name, tumorBorder")
    p.add_argument("--out", required=True, help="folder for <brain-mri stem>.png masks (pass to lesion_train --masks-dir)")
    a = p.parse_args(argv)
    missing = [f"{flag} {path}" for flag, path, ok in (
        ("--brain-mri", a.brain_mri, os.path.isdir), ("--figshare-images", a.figshare_images, os.path.isdir),
        ("--borders", a.borders, os.path.isfile)) if not ok(path)]
    if missing:
        p.error(f"not found: {', '.join(missing)}")
    per_class = build(a.brain_mri, a.figshare_images, a.borders, a.out)
    for c, (m, n) in per_class.items():
        print(f"{c}: {m} of {n} slices masked")
    print(f"Masks written to {a.out}")


if __name__ == "__main__":
    sys.exit(main())

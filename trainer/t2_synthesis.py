"""T2-like slices of a collection that has FLAIR and T1 but no T2, from a joint-intensity map learnt on real T2.

Why: no collection we train on holds an adult's T2 slice with a tumor, and on the same tumors v21 finds 86 % of
FLAIR slices and 53 % of T2 ones (docs/brats_toolkit_check.md). LGG has every patient's FLAIR and T1 slices
co-registered, with tumor masks; brats-ped has FLAIR, T1 and T2 of three children co-registered. Per pixel, the
pair (FLAIR, T1) says which tissue it is: fluid is dark in both and bright on T2, white matter is bright on T1 and
dark on T2, a glioma is bright on FLAIR and on T2. The map from the pair to T2 is learnt on brats-ped's real
slices (a 32x32 table of mean T2 intensity, each image scaled to its head's 1st-99th percentile) and applied to
LGG, so every LGG tumor slice gets a T2-like twin with its own mask and every tumor-free slice a T2-like twin at
its own level. brats-ped's FLAIR and T1 turned into T2 this way fool the models as the real T2 does (v21's AUC
0.751 against 0.712, v3's 0.439 against 0.406, on the BraTS Toolkit check's two patients).

  python -m trainer.t2_synthesis --fit-on ../shared/data/brats-ped --apply-to ../shared/data/lgg \\
      --t1 t1-pre --out ../data/lgg-t2syn   (make data-lgg-t2syn)
"""
import argparse
import glob
import os
import shutil
import sys

import numpy as np

from trainer import HelpFormatter, volume_slices

BINS = 32
MIN_PIXELS_PER_BIN = 20  # a bin needs more pixels than this to stand for itself
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _load(path):
    from PIL import Image
    return np.asarray(Image.open(path).convert("L"), np.float32)


def head_mask(flair, t1):
    """The head: pixels above a tenth of either image's 99th percentile, cleared of specks (a 5 px opening) and
    with its holes filled (the ventricles are dark on both looks and are inside the head)."""
    from PIL import Image, ImageDraw, ImageFilter
    lf, lt = max(0.1 * np.percentile(flair, 99), 8), max(0.1 * np.percentile(t1, 99), 8)
    m = Image.fromarray((((flair > lf) | (t1 > lt)) * 255).astype(np.uint8))
    m = m.filter(ImageFilter.MinFilter(5)).filter(ImageFilter.MaxFilter(5))
    for seed in ((0, 0), (m.width - 1, 0), (0, m.height - 1), (m.width - 1, m.height - 1)):
        if m.getpixel(seed) == 0:
            ImageDraw.floodfill(m, seed, 128)
    return np.asarray(m) != 128


def _scaled(img, head):
    lo, hi = np.percentile(img[head], [1, 99])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def pairs(collection, looks):
    """[(path of each look)] for every slice name present in all `looks` folders of the collection (any class)."""
    first = {}
    for path in glob.glob(os.path.join(collection, looks[0], "*", "*")):
        if path.lower().endswith(IMAGE_SUFFIXES):
            first[os.path.relpath(path, os.path.join(collection, looks[0]))] = path
    out = []
    for rel, path in sorted(first.items()):
        others = [os.path.join(collection, look, rel) for look in looks[1:]]
        if all(os.path.exists(o) for o in others):
            out.append((path, *others))
    return out


def fit(triples):
    """The BINS x BINS table: mean scaled T2 intensity by scaled (FLAIR, T1) bin over the head pixels of
    (FLAIR, T1, T2) path triples; a bin with too few pixels takes its nearest filled neighbour's value."""
    total, count = np.zeros((BINS, BINS)), np.zeros((BINS, BINS))
    for fl, t1, t2 in triples:
        f, t, y = _load(fl), _load(t1), _load(t2)
        if not f.shape == t.shape == y.shape:
            raise SystemExit(f"{fl}: FLAIR, T1 and T2 of a slice must have one shape (co-registered)")
        head = head_mask(f, t)
        if head.sum() < 500:
            continue
        i = np.minimum((_scaled(f, head)[head] * BINS).astype(int), BINS - 1)
        j = np.minimum((_scaled(t, head)[head] * BINS).astype(int), BINS - 1)
        np.add.at(total, (i, j), _scaled(y, head)[head])
        np.add.at(count, (i, j), 1)
    filled = np.argwhere(count > MIN_PIXELS_PER_BIN)
    if not len(filled):
        raise SystemExit("no co-registered FLAIR/T1/T2 slice with a head in it to learn from")
    table = np.where(count > MIN_PIXELS_PER_BIN, total / np.maximum(count, 1), 0.0)
    for i, j in np.argwhere(count <= MIN_PIXELS_PER_BIN):
        k = filled[np.argmin(((filled - [i, j]) ** 2).sum(1))]
        table[i, j] = table[k[0], k[1]]
    return table


def synthesise(table, flair, t1):
    """The T2-like 8-bit slice of a co-registered FLAIR and T1 pair (bilinear in the table; 0 outside the head)."""
    head = head_mask(flair, t1)
    if not head.any():
        return np.zeros(flair.shape, np.uint8)
    x, y = _scaled(flair, head) * (BINS - 1), _scaled(t1, head) * (BINS - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, BINS - 1), np.minimum(y0 + 1, BINS - 1)
    dx, dy = x - x0, y - y0
    out = (table[x0, y0] * (1 - dx) * (1 - dy) + table[x1, y0] * dx * (1 - dy) + table[x0, y1] * (1 - dx) * dy
           + table[x1, y1] * dx * dy)
    return (np.clip(np.where(head, out, 0), 0, 1) * 255).astype(np.uint8)


def write_collection(table, collection, t1_folder, out_dir, source_text=""):
    """`<out>/t2/<class>/<stem>.png` for every slice with a FLAIR and a T1 twin, the collection's masks copied
    beside (same stems, so each T2-like tumor slice keeps its mask); returns {class: slices}."""
    from PIL import Image
    written = {}
    for fl, t1 in pairs(collection, ("flair", t1_folder)):
        cls = os.path.basename(os.path.dirname(fl))
        folder = os.path.join(out_dir, "t2", cls)
        os.makedirs(folder, exist_ok=True)
        name = os.path.splitext(os.path.basename(fl))[0] + ".png"
        Image.fromarray(synthesise(table, _load(fl), _load(t1))).save(os.path.join(folder, name))
        written[cls] = written.get(cls, 0) + 1
    if not written:
        raise SystemExit(f"{collection}: no slice with both flair/ and {t1_folder}/ twins")
    masks = os.path.join(collection, "masks")
    if os.path.isdir(masks):
        shutil.copytree(masks, os.path.join(out_dir, "masks"))
    else:
        os.makedirs(os.path.join(out_dir, "masks"))
    np.save(os.path.join(out_dir, "t2_table.npy"), table)
    with open(os.path.join(out_dir, "SOURCE.txt"), "w") as f:
        f.write(source_text)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.t2_synthesis", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--fit-on", required=True, help="collection with co-registered flair/, t1/ and t2/ slices "
                   "(same names) to learn the map on")
    p.add_argument("--apply-to", required=True, help="collection with co-registered flair/ and T1 slices to turn "
                   "into T2-like ones")
    p.add_argument("--t1", default="t1", help="the T1 folder of --apply-to (lgg: t1-pre)")
    p.add_argument("--out", required=True, help="collection folder to write (t2/<class>/, masks/)")
    args = p.parse_args(argv)
    for flag, folder in (("--fit-on", args.fit_on), ("--apply-to", args.apply_to)):
        if not os.path.isdir(folder):
            p.error(f"{flag} {folder} is not a folder")
    if os.path.exists(args.out):
        p.error(f"--out {args.out} exists: remove it to write the collection again")
    triples = pairs(args.fit_on, ("flair", "t1", "t2"))
    if not triples:
        p.error(f"--fit-on {args.fit_on}: no slice name present in flair/, t1/ and t2/")
    table = fit(triples)
    source = (f"T2-like slices of {os.path.basename(os.path.normpath(args.apply_to))} (its FLAIR and "
              f"{args.t1} slices) through a (FLAIR, T1) -> T2 intensity map learnt on the {len(triples)} "
              f"co-registered FLAIR/T1/T2 slices of {os.path.basename(os.path.normpath(args.fit_on))} "
              "(python -m trainer.t2_synthesis; t2_table.npy). Synthetic: never a test of T2.\n")
    written = volume_slices.write_whole(args.out, lambda tmp: write_collection(table, args.apply_to, args.t1, tmp, source))
    print(f"learnt on {len(triples)} slices; wrote " + ", ".join(f"{n} {c}" for c, n in sorted(written.items()))
          + f" T2-like slices to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

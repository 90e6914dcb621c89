"""Stress tests: would the model flag a tumor in a slice that looks like a tumor-free source?

In every collection the tumor-free slices come from another level or source than the tumor slices, so a
model may veto a tumor because the slice *looks like* a tumor-free source: brain-mri's tumor-free slices
(mostly another collection's T2/FLAIR) are what archives of axial T2 tumors resemble, and brats-sample's
are cerebellum and vertex. No collection we have shows tumors there, so we put one in and score each
source's tumor-free slices (the first artifact's scored rows of a split) as they are and with the tumor,
at each artifact's own threshold:

- `painted`: `augment.synthetic_tumor`, the look of the slice's sequence folder. A model trained with
  `--synth-tumors` has seen such paint: its share is optimistic.
- `transplant`: a real tumor, cut with its mask from a donor slice the models never trained on (by
  default the held-out LGG site's FLAIR tumors) and set into the brain of the target slice at the donor's
  place, its intensities scaled by the two brains' medians, its border feathered. Real texture and shape
  (a FLAIR tumor: bright, as on T2), in the target's tissue and level.

Each is a stress test, not a metric: compare models, or a model with and without a member.

  python -m trainer.stress transplant models/brain-tumor-cnn/13 models/brain-tumor-cnn/10
  python -m trainer.stress painted models/brain-tumor-cnn/13 models/brain-tumor-cnn/10 --split external
"""
import csv
import json
import os

import numpy as np

from trainer import HelpFormatter

_RIM = 12  # px of 128 between the head's edge and the brain (augment.synthetic_tumor's)


def _rows(artifact_dir, split, label, source=None):
    with open(os.path.join(artifact_dir, "validation_predictions.csv")) as f:
        return [r for r in csv.DictReader(f) if r["split"] == split and int(r["label"]) == label
                and (source is None or r["source"] == source) and os.path.exists(r["path"])]


def _brain(x, rim=_RIM):
    """(H, W) bool: the head of a prepared slice (H, W), holes filled, eroded by `rim` px of 128."""
    import tensorflow as tf

    from trainer import augment
    return augment._core(tf.constant(x[..., None], tf.float32), rim).numpy()[..., 0] > 0.5


def painter(seed):
    """make(x, i, source) -> (slice with a painted tumor, painted?) for `stress`."""
    import tensorflow as tf

    from trainer import augment

    def make(x, i, source):
        kind = tf.constant(augment.kind_of_sequence((source.split("/", 1) + [""])[1]))
        img, _, ok = augment.synthetic_tumor(tf.constant(x[..., None]), tf.constant([seed, i], tf.int64), kind)
        return img.numpy()[..., 0], bool(ok)
    return make


def donors_of(artifact_dir, spec, split="held_out_site", source="lgg/flair", min_pixels=20):
    """[(prepared slice (H, W), tumor mask (H, W) bool)] of the masked tumor slices of `split`/`source`."""
    from screening_core import preprocessing
    from trainer import lesion_eval
    out = []
    for r in _rows(artifact_dir, split, 1, source):
        mask_path = lesion_eval._mask_of(r["path"])
        if not mask_path:
            continue
        with open(r["path"], "rb") as f:
            gray = preprocessing.decode_raster(f.read())
        with open(mask_path, "rb") as f:
            mask = preprocessing.decode_raster(f.read())
        if mask.shape != gray.shape:
            continue
        m = preprocessing.project_mask(gray, mask, spec) >= 0.5
        if m.sum() >= min_pixels:
            out.append((preprocessing.prepare(gray, spec)[..., 0], m))
    return out


def _dilate(mask, r):
    """(H, W) bool grown by `r` px (a square window)."""
    from numpy.lib.stride_tricks import sliding_window_view
    padded = np.pad(mask, r)
    return sliding_window_view(padded, (2 * r + 1, 2 * r + 1)).any(axis=(2, 3))


def _feather(mask):
    """(H, W) float: the mask blurred by a 5-tap Gaussian (sigma 1 px), a soft border for the blend."""
    k = np.exp(-0.5 * np.arange(-2, 3) ** 2)
    k /= k.sum()
    out = np.pad(mask.astype(np.float32), 2)
    out = sum(k[j] * out[j:j + out.shape[0] - 4, :] for j in range(5))
    return sum(k[j] * out[:, j:j + out.shape[1] - 4] for j in range(5))


def transplanter(donors, seed, tries=12, inside=0.9):
    """make(x, i, source) -> (slice with a donor's tumor set in, transplanted?) for `stress`.

    The donor is drawn by (seed, i); the first of `tries` donors whose tumor lies at least `inside` in
    the target's brain is used; none fitting leaves the slice out."""
    def make(x, i, source):
        brain = _brain(x)
        if brain.sum() < 50:
            return x, False
        rng = np.random.default_rng([seed, i])
        for k in rng.permutation(len(donors))[:tries]:
            dx, m = donors[k]
            if (m & brain).sum() < inside * m.sum():
                continue
            tissue = _brain(dx) & ~_dilate(m, 3)
            if tissue.sum() < 50:
                continue
            tumor = np.clip(dx / np.median(dx[tissue]) * np.median(x[brain]), 0.1, 1.0)
            w = _feather(m) * brain
            return (x * (1 - w) + tumor * w).astype(np.float32), True
        return x, False
    return make


def stress(artifacts, make, split="validation", max_per_source=0):
    """{artifact: {source: {n, flagged_plain, n_changed, flagged_changed}}} at each artifact's threshold.

    `make(x, i, source)` puts a tumor into the prepared slice x (H, W) or says it could not; the slices
    are the tumor-free rows of `split` in the first artifact's scored rows, the same for every artifact."""
    from screening_core import artifact as artifact_io
    from screening_core import preprocessing
    by_source = {}
    for r in _rows(artifacts[0], split, 0):
        by_source.setdefault(r["source"], []).append(r["path"])
    if max_per_source:
        by_source = {k: v[:max_per_source] for k, v in by_source.items()}
    changed = {}  # prepared with the first artifact's input spec: a stress test compares models of one input
    spec = preprocessing.InputSpec.from_dict(artifact_io.read_metadata(artifacts[0])["input_spec"])
    for source, paths in sorted(by_source.items()):
        plain, put = [], []
        for i, path in enumerate(paths):
            with open(path, "rb") as f:
                x = preprocessing.image_bytes_to_input(f.read(), spec)[..., 0]
            img, ok = make(x, i, source)
            plain.append(x)
            if ok:
                put.append(img)
        changed[source] = (np.stack(plain), np.stack(put) if put else None)
    out = {}
    for a in artifacts:
        model, md = artifact_io.load(a)
        if md["input_spec"] != artifact_io.read_metadata(artifacts[0])["input_spec"]:
            raise ValueError(f"{a}: another input than {artifacts[0]}'s; stress tests compare models of one input")

        def flagged(xs):
            s = np.asarray(model.predict(xs[..., None], verbose=0)).reshape(len(xs), -1)[:, 0]
            return round(float(np.mean(s >= md["threshold"])), 4)
        out[a] = {source: {"n": len(xp), "flagged_plain": flagged(xp), "n_changed": 0 if xc is None else len(xc),
                           "flagged_changed": None if xc is None else flagged(xc)}
                  for source, (xp, xc) in changed.items()}
    return out


def table(result):
    """Markdown: one row per source, one column per artifact (flagged as they are / with a tumor)."""
    first = next(iter(result.values()))
    lines = ["| source | n | " + " | ".join(f"{os.path.basename(a.rstrip('/'))}: flagged as they are / with a "
                                            "tumor" for a in result) + " |",
             "|---|---|" + "---|" * len(result)]
    for source in first:
        cells = []
        for t in result.values():
            c = t[source]
            changed = "-" if c["flagged_changed"] is None else f"{100 * c['flagged_changed']:.1f} %"
            cells.append(f"{100 * c['flagged_plain']:.1f} % / {changed} (of {c['n_changed']})")
        lines.append(f"| {source} | {first[source]['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m trainer.stress", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("test", choices=("painted", "transplant"))
    p.add_argument("artifacts", nargs="+", help="the first one's scored rows choose the slices (and the donors)")
    p.add_argument("--split", default="validation", help="whose tumor-free slices get a tumor")
    p.add_argument("--donors", default="held_out_site:lgg/flair", metavar="SPLIT:SOURCE",
                   help="transplant: the masked tumor slices to cut tumors from (never trained on)")
    p.add_argument("--max-per-source", type=int, default=0, help="0: every tumor-free slice")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="", help="write the result as JSON here as well")
    args = p.parse_args(argv)
    if args.max_per_source < 0:
        p.error("--max-per-source must be >= 0")
    if args.test == "painted":
        make = painter(args.seed)
    else:
        from screening_core import artifact as artifact_io
        from screening_core import preprocessing
        split, _, source = args.donors.partition(":")
        if not source:
            p.error(f"--donors {args.donors!r}: expected SPLIT:SOURCE, e.g. held_out_site:lgg/flair")
        spec = preprocessing.InputSpec.from_dict(artifact_io.read_metadata(args.artifacts[0])["input_spec"])
        donors = donors_of(args.artifacts[0], spec, split, source)
        if not donors:
            p.error(f"no masked tumor slices of {args.donors} in {args.artifacts[0]}'s scored rows")
        print(f"{len(donors)} donor tumors from {args.donors}")
        make = transplanter(donors, args.seed)
    result = stress(args.artifacts, make, args.split, args.max_per_source)
    print(table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

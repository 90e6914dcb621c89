"""In-memory training set for the lesion-first model: prepared inputs, aligned masks, levels.

Every image goes through `preprocessing.prepare` once (the one preprocessing
the scorer uses) and its tumor mask through `project_mask` (the same crop), so
augmentation in tf.data works on arrays and a CPU epoch is not spent decoding
JPEGs. The arrays are cached as one .npz keyed by the file list.

Mask knowledge per slice (`pixel_weight`):
  - a collection's `masks/` folder holds masks named like its tumor slices;
    for collections whose masks were drawn on every sequence (`MASK_ALL_SEQUENCES`,
    BraTS-PEDs) they apply to all sequences; for LGG they were drawn on FLAIR, and
    T1 slices (where a low-grade glioma is often invisible) get a low weight;
  - a tumor-free slice of such a collection is an all-negative map;
  - a slice without a mask (brain-mri) trains the map only through the slice
    score (multiple-instance loss).

Non-tumor lesions (`mimic`): a collection's `non-tumor-lesions/<sequence>/` folder
(trainer.volume_slices) marks bright lesions that are not a tumor (white-matter
hyperintensities) on slices of that sequence; the trainer can weigh those pixels
up as negatives.

Anatomical level (`level`, 0 = lowest of the patient's slices, 1 = highest) is
the slice's position in its patient's stack where file names carry it; for
collections without patients it is the head's share of the raw image, scaled
to [0, 1] within the collection. Training batches are balanced on level bins.
"""
import hashlib
import multiprocessing
import os
import posixpath
import re

import numpy as np

from screening_core import preprocessing
from trainer.volume_slices import LESIONS_DIR

MASK_ALL_SEQUENCES = ("brats-ped",)
T1_MASK_WEIGHT = 0.25  # LGG FLAIR-drawn masks on T1 slices: noisy, the lesion often invisible
SLICE_NAME_RX = re.compile(r"^(.+)_z?(\d+)\.\w+$")  # <patient>_<slice>.<ext>, <patient>_z<slice>.<ext>


def _stem(path):
    return os.path.splitext(posixpath.basename(path.replace("\\", "/")))[0]


def mask_plan(examples, roots, masks_dirs=None):
    """Per example: (mask path or "" , pixel weight); weight 0 = the map is trained by the slice score only.

    `masks_dirs` ({collection: folder}) adds masks kept outside a collection
    (brain-mri's figshare borders, `trainer.figshare_masks`); they were drawn on
    the very image they are named after, so they carry full weight whatever the
    sequence.
    """
    by_collection = {}
    for root in roots:
        mdir = os.path.join(root, "masks")
        if os.path.isdir(mdir):
            name = os.path.basename(os.path.normpath(root))
            by_collection[name] = (mdir, {os.path.splitext(f)[0]: f for f in os.listdir(mdir)})
    drawn_here = set()
    for name, mdir in (masks_dirs or {}).items():
        if name in by_collection:
            raise ValueError(f"collection {name} already has a masks/ folder; --masks-dir would shadow it")
        by_collection[name] = (mdir, {os.path.splitext(f)[0]: f for f in os.listdir(mdir)
                                      if f.lower().endswith(".png")})
        drawn_here.add(name)
    plan = []
    for e in examples:
        if e.collection not in by_collection:
            plan.append(("", 0.0))
            continue
        mdir, stems = by_collection[e.collection]
        if e.label == 0:
            plan.append(("", 1.0))
            continue
        f = stems.get(_stem(e.path))
        if f is None:
            plan.append(("", 0.0))
        elif e.collection in drawn_here or e.collection in MASK_ALL_SEQUENCES or e.sequence in ("flair", "t2"):
            plan.append((os.path.join(mdir, f), 1.0))
        else:
            plan.append((os.path.join(mdir, f), T1_MASK_WEIGHT))
    return plan


def mimic_plan(examples, roots):
    """Per example: the path of its non-tumor lesion mask (`<root>/non-tumor-lesions/<sequence>/<name>.png`),
    or "" when it has none."""
    found = {}
    for root in roots:
        base = os.path.join(root, LESIONS_DIR)
        if not os.path.isdir(base):
            continue
        name = os.path.basename(os.path.normpath(root))
        for seq in os.listdir(base):
            folder = os.path.join(base, seq)
            if os.path.isdir(folder):
                for f in os.listdir(folder):
                    found[(name, seq, os.path.splitext(f)[0])] = os.path.join(folder, f)
    return [found.get((e.collection, e.sequence, _stem(e.path)), "") for e in examples]


def _raster(path, shape):
    """A mask file decoded at `shape` (resized by nearest neighbour when saved at another size)."""
    with open(path, "rb") as f:
        m = preprocessing.decode_raster(f.read())
    if m.shape != shape:
        from PIL import Image
        m = np.asarray(Image.fromarray(m).resize(shape[::-1], Image.Resampling.NEAREST), np.float32)
    return (m > 127).astype(np.float32)


def _load_one(args):
    path, mask_path, mimic_path, size, preprocessing_id = args
    spec = preprocessing.InputSpec(height=size, width=size, preprocessing=preprocessing_id)
    with open(path, "rb") as f:
        gray = preprocessing.decode_raster(f.read())
    x = preprocessing.prepare(gray, spec)[..., 0]
    masks = [preprocessing.project_mask(gray, _raster(p, gray.shape), spec) if p else np.zeros((size, size), np.float32)
             for p in (mask_path, mimic_path)]
    return x.astype(np.float16), *((m * 255).round().astype(np.uint8) for m in masks), head_share(gray)


def head_share(gray):
    """Share of the raw image that is head (above 8 % of the robust maximum): low near the skull base
    and the vertex, high mid-brain, for images framed the same way."""
    g01 = gray - gray.min()
    top = np.percentile(g01, 99.5)
    return float(np.mean(g01 > 0.08 * top)) if top > 0 else 0.0


def stack_position(path, collection):
    """(patient, slice number) of a slice in a patient's stack (LGG, BraTS file names), else None."""
    m = SLICE_NAME_RX.match(posixpath.basename(path.replace("\\", "/")))
    if m and (collection.startswith("lgg") or "brats" in collection):
        return m.group(1), int(m.group(2))
    return None


def stack_levels(examples):
    """Level in [0, 1] within the patient's stack where file names carry it, NaN elsewhere."""
    out = np.full(len(examples), np.nan)
    patients = {}
    for i, e in enumerate(examples):
        pos = stack_position(e.path, e.collection)
        if pos:
            patients.setdefault((e.collection, pos[0]), []).append((i, pos[1]))
    for members in patients.values():
        z = np.array([s for _, s in members], float)
        lo, hi = z.min(), z.max()
        for (i, _), zi in zip(members, z, strict=True):
            out[i] = (zi - lo) / (hi - lo) if hi > lo else 0.5
    return out


def levels(examples, head_shares):
    """Anatomical level in [0, 1] per example (see module docstring)."""
    out = stack_levels(examples)
    shares = np.asarray(head_shares, float)
    for name in {e.collection for e in examples}:
        idx = [i for i, e in enumerate(examples) if e.collection == name and np.isnan(out[i])]
        if idx:  # rank of the head's share within the collection: comparable across fields of view
            ranks = np.argsort(np.argsort(shares[idx]))
            out[idx] = ranks / max(len(idx) - 1, 1)
    return out


def build(examples, roots, size=128, cache_dir=None, processes=None, masks_dirs=None,
          preprocessing_id=preprocessing.PREPROCESSING_ID):
    """dict(x (n,H,W) f16, mask (n,H,W) u8, mimic (n,H,W) u8, pixel_weight, level, head_share) for `examples`.

    The cache is keyed by the preprocessing too: session 31's v36 (v35 on preprocessing v2) was first
    evaluated on v1 arrays a v35 run had cached under the same file list. v1's key is the one it always had
    (its caches stay valid); any other id joins the key."""
    plan = mask_plan(examples, roots, masks_dirs)
    mimics = mimic_plan(examples, roots)
    key = hashlib.sha256(repr([(e.path, m, w, size) + ((n,) if n else ())
                               for e, (m, w), n in zip(examples, plan, mimics, strict=True)]
                              + ([preprocessing_id] if preprocessing_id != preprocessing.PREPROCESSING_IDS[0] else []))
                         .encode()).hexdigest()[:16]
    cache = os.path.join(cache_dir, f"lesion-cache-{key}.npz") if cache_dir else None
    if cache and os.path.exists(cache):
        with np.load(cache) as z:
            data = {k: z[k] for k in z.files}
        data.setdefault("mimic", np.zeros_like(data["mask"]))  # a cache from before mimics: its key says none
        return data
    jobs = [(e.path, m, n, size, preprocessing_id) for e, (m, _), n in zip(examples, plan, mimics, strict=True)]
    with multiprocessing.get_context("spawn").Pool(processes or os.cpu_count()) as pool:
        loaded = pool.map(_load_one, jobs, chunksize=64)
    data = {"x": np.stack([r[0] for r in loaded]), "mask": np.stack([r[1] for r in loaded]),
            "mimic": np.stack([r[2] for r in loaded]),
            "pixel_weight": np.array([w for _, w in plan], np.float32),
            "head_share": np.array([r[3] for r in loaded], np.float32)}
    data["level"] = levels(examples, data["head_share"]).astype(np.float32)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache + ".tmp.npz"
        np.savez(tmp, **data)
        os.replace(tmp, cache)
    return data


def level_bins(level, n_bins=5):
    return np.minimum((np.asarray(level) * n_bins).astype(int), n_bins - 1)


def sampling_weights(collections, labels, level, shares):
    """Per-example draw probability: each collection its share; within it every (level bin, class) cell equal.

    A level bin that holds only one class (the vertex of a glioma series) keeps
    its share of the collection with that class alone, so no bin is left out.
    """
    collections, labels = np.asarray(collections), np.asarray(labels)
    bins = level_bins(level)
    w = np.zeros(len(labels))
    for name, share in shares.items():
        in_c = collections == name
        if not in_c.any():
            continue
        present = sorted(set(bins[in_c].tolist()))
        for b in present:
            cell = in_c & (bins == b)
            classes = sorted(set(labels[cell].tolist()))
            for c in classes:
                members = cell & (labels == c)
                w[members] = share / len(present) / len(classes) / members.sum()
    return w / w.sum()


def boost_hard_negatives(probs, labels, scores, threshold, factor):
    """Draw probabilities with every tumor-free slice that a previous model scores at or above its
    threshold drawn `factor` times as often (then renormalised).

    Why: v7's false positives in brain-mri validation are mostly bright non-tumor lesions (white-matter
    hyperintensities), midline sagittal and coronal slices: rare among the tumor-free slices, so a
    uniform draw shows them a few times an epoch while the map keeps calling them lesions.
    """
    probs, labels, scores = _checked(probs, factor, labels, scores)
    return _boost(probs, (labels == 0) & (scores >= threshold), factor)


def boost_hard_positives(probs, eligible, scores, threshold, factor):
    """Draw probabilities with every `eligible` tumor slice that a previous model scores below its
    threshold drawn `factor` times as often (then renormalised).

    Why: what keeps the lesion-first model from replacing v3 is brain-mri validation sensitivity (v8
    finds 96.1 % at its threshold, v3 98.6 %), and the tumors it misses are rare kinds (small, sagittal
    or coronal, unusual signal) that a uniform draw seldom shows. Only slices whose mask was drawn on
    them are eligible (the caller says which): a tumor slice whose lesion may be invisible (LGG T1
    with a FLAIR-drawn mask) must not be pushed to score high.
    """
    probs, eligible, scores = _checked(probs, factor, eligible, scores)
    return _boost(probs, eligible.astype(bool) & (scores < threshold), factor)


def boost_marked(probs, marked, factor):
    """Draw probabilities with the `marked` slices (tumor-free slices holding a non-tumor lesion mask) drawn
    `factor` times as often (then renormalised)."""
    probs, marked = _checked(probs, factor, marked)
    return _boost(probs, marked.astype(bool), factor)


def with_share(probs, marked, share):
    """Draw probabilities rescaled so that the `marked` slices (tumor slices with a mask) make up `share` of the
    draws, each keeping its place within its group. Why: a map trained only to outline learns from the
    tumor slices; the level balance gives them under half the batch, and small lesions are what it misses."""
    probs, marked = np.asarray(probs, np.float64), np.asarray(marked, bool)
    if not 0.0 < share < 1.0:
        raise ValueError(f"a share of the draws is in (0, 1), got {share}")
    if not marked.any() or marked.all():
        raise ValueError("a share needs both marked and unmarked slices to draw")
    out = np.where(marked, probs * share / probs[marked].sum(), probs * (1.0 - share) / probs[~marked].sum())
    return out / out.sum()


def _checked(probs, factor, *per_slice):
    """`probs` and the per-slice arrays a boost reads, as arrays, once each holds one value per slice and
    the factor draws hard slices at least as often."""
    probs, per_slice = np.asarray(probs, float), [np.asarray(a) for a in per_slice]
    if any(a.shape != probs.shape for a in per_slice):
        raise ValueError("probs, labels (or eligible) and scores must be aligned")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return (probs, *per_slice)


def _boost(probs, hard, factor):
    """`probs` with the `hard` slices drawn `factor` times as often, renormalised."""
    out = np.where(hard, probs * factor, probs)
    return out / out.sum()

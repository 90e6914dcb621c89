"""Train the lesion-first model (v4): pixel loss where masks exist, slice loss everywhere.

  python -m trainer.lesion_train --data-dir ../shared/data/lgg --data-dir ../shared/data/brats-ped \
      --eval-data-dir ../shared/data/brain-mri --eval-data-dir ../shared/data/brats-sample \
      --holdout-pattern '^TCGA_FG_' --threshold-sources '^lgg/flair$' --shares lgg=0.7,brats-ped=0.3 \
      --epochs 8 --steps-per-epoch 250 --model-dir models --version 4      # = make train (model v4)

Losses (trainer/unet.py for the model):
  - lesion map: BCE + soft Dice against the mask, weighted per slice by how
    well its mask is known (lesion_data.mask_plan); a tumor-free slice of a
    masked collection is an all-negative map, so it teaches "no lesion here" at
    every level, and every pixel outside a tumor's mask does the same at the
    tumor's own level;
  - slice score (max of the windowed map): BCE against the slice label, a
    multiple-instance loss through which label-only collections (brain-mri)
    can train the map. In practice they taught it shortcuts (see
    DEFAULT_SHARES): v4 is trained on masked collections only.
Batches are drawn with equal weight per (collection, level bin, class) cell
(lesion_data.sampling_weights). The checkpoint kept is the epoch with the best
mean validation AUC over sources; the held-out site and external collections
are scored only at the end.
"""
import argparse
import json
import logging
import os
import re
import sys
import time

import numpy as np

from screening_core import artifact, preprocessing
from trainer import HelpFormatter, distribute, evaluation, lesion_data, lesion_eval
from trainer.config import TrainConfig, parse_masks_dirs

# brain-mri (labels only) is the one source of meningiomas and pituitary tumors, but its slice loss
# pulls the map towards whatever its tumor images share: at 40 % of each batch, LGG FLAIR validation AUC
# of a 150-step probe fell from 0.94 to 0.85 (tumor-free FLAIR slices scored 0.41 instead of 0.21-0.28);
# at 15 % (these defaults) the map put its evidence in the image's corner (pointing game 0.0). Model v4
# (make train) passes --shares lgg=0.7,brats-ped=0.3 and no brain-mri.
DEFAULT_SHARES = {"brain-mri": 0.15, "lgg": 0.55, "brats-ped": 0.3}


# A patient key for LGG/BraTS slices and for slices cut from volumes by trainer.volume_slices (vol_<subject>_z<k>).
GROUP_PATTERN = r"^((?:TCGA_|.*brats|vol_).+)_z?\d+\.\w+$"
SYNTH_LOOKS = ("bright", "enhancing", "dark", "bright-or-enhancing")  # augment.SYNTH_KINDS (TensorFlow-free here)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False, formatter_class=HelpFormatter)
    p.add_argument("--data-dir", action="append", required=True)
    p.add_argument("--eval-data-dir", action="append", default=[])
    p.add_argument("--group-pattern", default=GROUP_PATTERN)
    p.add_argument("--holdout-pattern", default="")
    p.add_argument("--threshold-sources", default=r"^(brain-mri|lgg/flair)$")
    p.add_argument("--target-sensitivity", type=float, default=0.95)
    p.add_argument("--model-dir", default="models")
    p.add_argument("--name", default="brain-tumor-cnn")
    p.add_argument("--version", default="")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--preprocessing", choices=preprocessing.PREPROCESSING_IDS, default=preprocessing.PREPROCESSING_ID,
                   help="prepare()'s version; the current one unless a recipe rebuilds a model made on an older one "
                        "(the Makefile's train-vN targets name theirs)")
    p.add_argument("--filters", default="16,32,64,128")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32, help="per replica")
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--dice-weight", type=float, default=1.0)
    p.add_argument("--slice-weight", type=float, default=1.0)
    p.add_argument("--augment", default="contrast-strip")
    p.add_argument("--label-only-negatives", choices=("train", "pixel", "skip"), default="skip",
                   help="tumor-free slices of collections without masks (brain-mri): 'skip' leaves them out of "
                        "training (in brain-mri they come from another source, mostly T2/FLAIR: the slice loss "
                        "taught 'FLAIR-looking means no lesion' and LGG FLAIR validation AUC fell from 0.80 to "
                        "0.56 while brain-mri rose); tumor-free tissue is learnt from masked collections, at "
                        "every level; 'train' keeps them (the first two v4 runs); 'pixel' trains them as all-negative maps, "
                        "like the tumor-free slices of masked collections")
    p.add_argument("--masks-dir", action="append", default=[], metavar="COLLECTION=DIR",
                   help="tumor masks kept outside a collection, named like its tumor slices and drawn on them "
                        "(brain-mri=DIR from trainer.figshare_masks); the collection's tumor-free slices then "
                        "train as all-negative maps")
    p.add_argument("--skip-tumor-free", action="append", default=[], metavar="COLLECTION",
                   help="leave this collection's tumor-free slices out of training, its tumor slices in "
                        "(repeatable). brain-mri's come from another, T2-like source; left out of v16's recipe they "
                        "did not change how the map reads T2 (docs/model_v4_notes.md, row SKN)")
    p.add_argument("--train-sources", default="", metavar="REGEX",
                   help="train only on the slices whose source (collection/sequence, e.g. lgg/flair) matches; the "
                        "validation and held-out sides stay those of all --data-dir, so a member trained on a few "
                        "looks is judged on the same patients as the ensemble it joins (v31's outline map: "
                        "'^(lgg/flair|brats-ped/(flair|t2))$', where the lesion is what its mask outlines)")
    p.add_argument("--tumor-share", type=float, default=0.0, metavar="SHARE",
                   help="draw the tumor slices with a mask as this share of each batch, in (0, 1) (0: as the "
                        "shares and level bins give; v31's outline map: 0.6)")
    p.add_argument("--label-only-tumors", choices=("train", "skip"), default="train",
                   help="tumor slices without a mask: 'train' teaches the map through the pooled slice loss "
                        "(runs E-H: it found the corner, then the head's rim); 'skip' leaves them out")
    p.add_argument("--init-from", default="",
                   help="start from this model's weights (a model.keras of the same architecture), e.g. to teach "
                        "a working lesion map new collections instead of training from scratch")
    p.add_argument("--hard-negatives", type=float, default=1.0, metavar="FACTOR",
                   help="draw each tumor-free training slice that the --init-from model scores at or above its "
                        "threshold FACTOR times as often (1 = off); needs --init-from with its metadata.json")
    p.add_argument("--hard-positives", type=float, default=1.0, metavar="FACTOR",
                   help="draw each masked tumor training slice (a mask drawn on that slice: not LGG T1 with the "
                        "FLAIR's mask, not pseudo-masks) that the --init-from model scores below its threshold "
                        "FACTOR times as often (1 = off); needs --init-from with its metadata.json")
    p.add_argument("--pseudo-masks", type=float, default=0.0, metavar="MIN_SCORE",
                   help="tumor slices without a mask that the --init-from model scores at or above MIN_SCORE "
                        "train its lesion map (cells at or above half the map's peak) as their mask, at pixel "
                        "weight 0.5 (0 = off: they follow --label-only-tumors)")
    p.add_argument("--fluid-bright", type=float, default=0.0, metavar="P",
                   help="make FLAIR training slices (a flair/ sequence folder) T2-like with probability P: the "
                        "fluid inside the brain turns bright, the lesion mask is kept (augment.bright_fluid); "
                        "no collection has enough T2 slices with a tumor, and on T2 the map read CSF as lesion")
    p.add_argument("--spots", type=float, default=0.0, metavar="P",
                   help="paint 2-8 small bright ovoid foci (MS-like white-matter lesions, 3-10 mm) into FLAIR and "
                        "T2 training slices with probability P, away from any tumor mask, as negatives "
                        "(augment.bright_spots): bright non-tumor lesions are the lesion-first map's risk")
    p.add_argument("--mimic-weight", type=float, default=1.0, metavar="W",
                   help="weight of the pixels a collection's non-tumor-lesions/ masks mark (white-matter "
                        "hyperintensities of tumor-free heads, trainer.volume_slices) in the map's BCE, as "
                        "negatives; 1 = like any other tumor-free pixel")
    p.add_argument("--mimic-boost", type=float, default=1.0, metavar="FACTOR",
                   help="draw each tumor-free training slice that holds a non-tumor lesion mask FACTOR times as "
                        "often (1 = off): they are a few percent of the tumor-free slices")
    p.add_argument("--negative-margin", type=float, default=None, metavar="P",
                   help="add a squared hinge on the log-odds of tumor-free slices scoring above P (e.g. 0.03), "
                        "so those near the operating threshold are pushed down as hard as missed tumors are "
                        "pulled up (off by default)")
    p.add_argument("--synth-tumors", type=float, default=0.0, metavar="P",
                   help="paint a synthetic tumor (augment.synthetic_tumor: bright on FLAIR/T2, ring or solid "
                        "enhancing on T1 with contrast, dark on T1) into tumor-free training slices with known "
                        "negative pixels, above the skull base, with probability P; the slice then trains as a "
                        "masked tumor slice: a tumor at every level, sequence and source")
    p.add_argument("--synth-kinds", default=",".join(SYNTH_LOOKS), metavar="KINDS",
                   help="comma-separated tumor looks --synth-tumors paints (bright: FLAIR/T2, enhancing: T1 with "
                        "contrast, dark: T1 without, bright-or-enhancing: sequence unknown); slices whose look "
                        "gives another are left unpainted")
    p.add_argument("--synth-contrast", type=float, default=1.35, metavar="X",
                   help="a painted bright mass or enhancing rim starts at X times the brain's median intensity")
    p.add_argument("--transplant-tumors", type=float, default=0.0, metavar="P",
                   help="set a real tumor, cut with its mask from a masked training tumor slice of the same look "
                        "(augment.transplant_tumor), into the same tumor-free slices --synth-tumors paints, with "
                        "probability P (before any painting); the slice then trains as a masked tumor slice")
    p.add_argument("--transplant-axial-only", action="store_true",
                   help="with --transplant-tumors: set tumors only into axial slices (every folder that does not "
                        "name a sagittal or coronal plane), as trainer.task's flag of that name: the donors are axial")
    p.add_argument("--select-on", choices=("threshold-sources", "all", "last"), default="threshold-sources",
                   help="which validation sources' mean AUC picks the kept epoch: the threshold sources (trusted "
                        "labels), or all of them (how v4 was made; LGG T1 labels are noisy); 'last' keeps the "
                        "final epoch (a member of an ensemble whose other member carries the validation "
                        "collection: v10's lesion map)")
    p.add_argument("--head-masked", action="store_true",
                   help="multiply the lesion map by a head mask before pooling (unet.head_mask), so label-only "
                        "tumor slices cannot push evidence into the background")
    p.add_argument("--t1-tumor-slices", choices=("outside", "weighted"), default="outside",
                   help="LGG T1 tumor slices (FLAIR-drawn masks, lesion often invisible): 'outside' trains only "
                        "the tissue outside the dilated mask, as negatives; 'weighted' trains the mask at weight "
                        "0.25 and the slice label at 0.5 (the first v4 run)")
    p.add_argument("--shares", default=",".join(f"{k}={v}" for k, v in DEFAULT_SHARES.items()),
                   help="collection=share of each batch")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--split-seed", type=int, default=-1, help="seed of the validation split alone; -1: --seed's "
                   "(a second draw of a recipe keeps its ensemble's validation patients out of training only "
                   "with the first draw's split seed)")
    p.add_argument("--cache-dir", default="/tmp/brain-screening-lesion-cache")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--from-checkpoint", default="",
                   help="skip training: evaluate this saved model (the run's _work/<version>/best.keras, whose "
                        "fit.json beside it gives the fit figures) and write the artifact")
    args = p.parse_args(argv)
    try:
        re.compile(args.train_sources)
    except re.error as e:
        p.error(f"--train-sources is not a regular expression: {e}")
    if args.tumor_share and not 0.0 < args.tumor_share < 1.0:
        p.error(f"--tumor-share is a share in (0, 1), got {args.tumor_share:g}")
    args.filters = tuple(int(f) for f in args.filters.split(","))
    args.shares = {k: float(v) for k, v in (s.split("=") for s in args.shares.split(","))}
    try:
        args.masks_dir = parse_masks_dirs(args.masks_dir, os.path.isdir)
    except ValueError as e:
        p.error(str(e))
    for flag in ("hard_negatives", "hard_positives", "mimic_boost"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("fluid_bright", "spots", "synth_tumors", "transplant_tumors"):
        if not 0 <= getattr(args, flag) <= 1:
            p.error(f"--{flag.replace('_', '-')} is a probability in [0, 1], got {getattr(args, flag)}")
    if args.transplant_axial_only and not args.transplant_tumors:
        p.error("--transplant-axial-only says where --transplant-tumors sets tumors: it needs --transplant-tumors > 0")
    args.synth_kinds = tuple(k.strip() for k in args.synth_kinds.split(",") if k.strip())
    if not args.synth_kinds or set(args.synth_kinds) - set(SYNTH_LOOKS):
        p.error(f"--synth-kinds: a comma-separated subset of {', '.join(SYNTH_LOOKS)}, got {','.join(args.synth_kinds)!r}")
    if args.negative_margin is not None and not 0 < args.negative_margin < 1:
        p.error(f"--negative-margin is a slice score in (0, 1), got {args.negative_margin}")
    if not 1.0 <= args.mimic_weight <= 100.0:
        p.error(f"--mimic-weight is a pixel weight in [1, 100], got {args.mimic_weight}")
    if not 1.0 <= args.synth_contrast <= 4.0:
        p.error(f"--synth-contrast is a multiple of the brain's median in [1, 4], got {args.synth_contrast}")
    if not 0 <= args.pseudo_masks < 1:
        p.error(f"--pseudo-masks is a score in [0, 1), got {args.pseudo_masks}")
    if (args.hard_negatives > 1 or args.hard_positives > 1 or args.pseudo_masks) and not (args.init_from and os.path.isfile(
            os.path.join(os.path.dirname(args.init_from), "metadata.json"))):
        p.error("--hard-negatives, --hard-positives and --pseudo-masks need --init-from pointing at an artifact's model.keras (its metadata.json "
                "gives the threshold)")
    return args


def pixel_loss(dice_weight):
    """Weighted BCE + soft Dice per slice; y_true = (mask, per-pixel weight, Dice weight) on the map's grid."""
    import keras.ops as K

    def loss(y_true, y_pred):
        mask, weight, dice_w = y_true[..., :1], y_true[..., 1:2], y_true[:, 0, 0, 2]
        p = K.clip(y_pred, 1e-6, 1 - 1e-6)
        bce = -K.mean(weight * (mask * K.log(p) + (1 - mask) * K.log(1 - p)), axis=(1, 2, 3))
        inter = K.sum(p * mask, axis=(1, 2, 3))
        dice = 1.0 - (2.0 * inter + 1.0) / (K.sum(p, axis=(1, 2, 3)) + K.sum(mask, axis=(1, 2, 3)) + 1.0)
        return bce + dice_weight * dice_w * dice
    return loss


OUTSIDE_ONLY = -1.0  # pixel weight of a slice whose mask is only known to bound the lesion (lesion_data)
OUTSIDE_MARGIN = 4  # map cells (8 input pixels) around such a mask that stay unjudged


def slice_loss(margin=None):
    """BCE of the pooled map against the slice label; y_true = (label, weight).

    `margin` (a probability) adds, for tumor-free slices, the squared excess of the score's log-odds over
    the margin's. Why: the operating threshold sits at a slice score near 0.1, where BCE's pull on a
    tumor-free slice (its gradient in log-odds is the score itself) is a tenth of its pull on a missed
    tumor; the tumor-free slices that cross the threshold (white-matter hyperintensities of older adults)
    were barely moved by it."""
    import keras.ops as K
    edge = None if margin is None else float(np.log(margin / (1 - margin)))

    def loss(y_true, y_pred):
        p = K.clip(y_pred[:, 0], 1e-6, 1 - 1e-6)
        label, weight = y_true[:, 0], y_true[:, 1]
        out = -weight * (label * K.log(p) + (1 - label) * K.log(1 - p))
        if edge is not None:
            out = out + weight * (1 - label) * K.square(K.relu(K.log(p) - K.log(1 - p) - edge))
        return out
    return loss


def make_train_dataset(data, idx, labels, probs, slice_w, map_size, batch, seed, augment_mode, fluid_p=None,
                       spots_p=None, synth_p=None, synth_kind=None, transplant_p=None, donors=None,
                       synth_contrast=1.35, mimic_weight=1.0):
    """Infinite tf.data stream of augmented (image, {score target, map target}) batches.

    `fluid_p`, `spots_p`: per slice, the probability that `augment.bright_fluid` makes it T2-like and
    that `augment.bright_spots` paints negative bright foci into it (None: never); `synth_p`,
    `synth_kind`: the probability that `augment.synthetic_tumor` paints a tumor of that kind
    (augment.SYNTH_KINDS) into it, which makes the slice a masked tumor slice; `transplant_p`, `donors`:
    the probability that `augment.transplant_tumor` sets a real tumor into it first, cut from a slice of
    `donors[kind]` (slice indices per look, `transplant_donors`; a transplanted slice is not painted);
    `mimic_weight`: the BCE weight of the pixels `data["mimic"]` marks (non-tumor lesions) where no tumor lies
    (a painted or transplanted tumor that covers one makes it a tumor pixel)."""
    import tensorflow as tf

    from trainer import augment
    rng = np.random.default_rng(seed)
    x, mask, pix_w = data["x"], data["mask"], data["pixel_weight"]
    mimic = data.get("mimic")
    def per_slice(values, dtype=np.float32):  # None: zero for every slice (never applied)
        return np.zeros(len(x), dtype) if values is None else np.asarray(values, dtype)
    fluid_p, spots_p, synth_p, synth_kind, transplant_p = (
        per_slice(fluid_p), per_slice(spots_p), per_slice(synth_p), per_slice(synth_kind, np.int32),
        per_slice(transplant_p))
    size = x.shape[1]
    no_donor = np.zeros((size, size, 1), np.float32)

    def donor(i):
        pool = (donors or {}).get(int(synth_kind[i]))
        if transplant_p[i] <= 0 or pool is None or not len(pool):
            return no_donor, no_donor  # never fits: transplant_tumor leaves the slice as it is
        j = pool[rng.integers(len(pool))]
        return x[j].astype(np.float32)[..., None], mask[j].astype(np.float32)[..., None] / 255.0

    def draws():
        while True:
            for i in rng.choice(idx, size=4096, p=probs):
                m = mask[i] if mimic is None else np.stack([mask[i], mimic[i]], axis=-1)
                yield (x[i].astype(np.float32)[..., None], m.astype(np.float32).reshape(size, size, -1) / 255.0,
                       np.float32(labels[i]), np.float32(pix_w[i]), np.float32(slice_w[i]), fluid_p[i], spots_p[i],
                       synth_p[i], synth_kind[i], transplant_p[i], *donor(i))

    channels = 1 if mimic is None else 2  # the tumor mask, and the non-tumor lesion mask beside it
    sig = (tf.TensorSpec((size, size, 1), tf.float32), tf.TensorSpec((size, size, channels), tf.float32),
           tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32),
           tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.float32),
           tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.float32), tf.TensorSpec((size, size, 1), tf.float32),
           tf.TensorSpec((size, size, 1), tf.float32))
    ds = tf.data.Dataset.from_generator(draws, output_signature=sig)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)

    def aug(item, s):
        image, both, label, pw, sw, fp, sp, tp, kind, xp, donor_x, donor_m = item
        m, mim = both[..., :1], both[..., 1:]
        image, m, moved = augment.maybe_transplant_tumor(image, m, donor_x, donor_m, s, xp)
        image, m, painted = augment.maybe_synthetic_tumor(image, m, s, tf.where(moved, 0.0, tp), kind,
                                                          contrast=synth_contrast)
        painted = painted | moved
        label = tf.where(painted, 1.0, label)
        image, both = augment.augment_with_mask(image, tf.concat([m, mim], axis=-1), s, mode=augment_mode,
                                                fluid_bright=fp, spots=sp)
        image, both = tf.ensure_shape(image, (size, size, 1)), tf.ensure_shape(both, (size, size, channels))
        both = tf.image.resize(both, (map_size, map_size), method="area")
        m = tf.cast(both[..., :1] >= 0.5, tf.float32)
        # a map cell a quarter covered by a non-tumor lesion: these are a few pixels across
        mimic_cell = tf.reduce_any(both[..., 1:] >= 0.25, axis=-1, keepdims=True) & (m < 0.5)
        outside = pw == OUTSIDE_ONLY
        grown = tf.nn.max_pool2d(m[None], 2 * OUTSIDE_MARGIN + 1, 1, "SAME")[0]
        weight = tf.where(outside, 1.0 - grown, tf.fill(tf.shape(m), pw))
        weight = tf.where(mimic_cell, weight * mimic_weight, weight)
        dice_w = tf.where(outside, 0.0, pw)
        map_target = tf.concat([tf.where(outside, tf.zeros_like(m), m), weight, tf.fill(tf.shape(m), dice_w)],
                               axis=-1)
        return image, {"tumor_probability": tf.stack([label, sw]), "lesion_map": map_target}

    return (tf.data.Dataset.zip((ds, seeds)).map(aug, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch, drop_remainder=True).prefetch(4))


def transplant_donors(sequence, labels, arrays, idx, min_pixels=20):
    """{SYNTH_KINDS code: training slice indices}: the training tumor slices whose mask is the whole truth
    (pixel weight 1) and holds `min_pixels`, by the look of their sequence; a slice of unknown sequence
    (brain-mri) takes a bright or an enhancing tumor, as `synthetic_tumor` paints it."""
    from trainer import augment
    kinds = np.array([augment.kind_of_sequence(q) for q in sequence])
    ok = np.zeros(len(labels), bool)
    ok[idx] = True
    ok &= (np.asarray(labels) == 1) & (arrays["pixel_weight"] >= 1.0)
    ok &= (arrays["mask"] >= 128).reshape(len(labels), -1).sum(axis=1) >= min_pixels
    k = augment.SYNTH_KINDS
    pools = {code: np.flatnonzero(ok & (kinds == code)) for code in (k["bright"], k["enhancing"], k["dark"])}
    pools[k["bright-or-enhancing"]] = np.concatenate([pools[k["bright"]], pools[k["enhancing"]]])
    return pools


def validation_callback(model, x, labels, sources, log_path, select=""):
    """A Keras callback: per-source validation AUC after each epoch, logged; keeps the weights of the
    epoch with the best mean AUC over the sources matching `select` (a regex; all when empty) as
    `.best`, `.best_weights`. Built here so Keras is imported only when training.

    Why a selection: run I (14 epochs, docs/model_v4_notes.md) kept epoch 2, whose mean over all sources
    was lifted by LGG T1 validation AUCs (noisy labels: the lesion is often invisible on T1), although its
    FLAIR AUC was 0.79 against 0.91 at the last epoch. Selecting on the threshold sources (the sources
    whose labels are trusted) avoids that."""

    import keras

    from screening_core import metrics

    class ValidationAuc(keras.callbacks.Callback):
        best, best_weights = -1.0, None

        def on_epoch_end(self, epoch, logs=None):
            scores, _ = lesion_eval.predict(model, x)
            per = {s: metrics.roc_auc(labels[sources == s], scores[sources == s])
                   for s in sorted(set(sources.tolist()))}
            per = {s: a for s, a in per.items() if a == a}
            chosen = [a for s_, a in per.items() if re.search(select, s_)] if select else []
            mean = float(np.mean(chosen or list(per.values())))
            line = {"epoch": epoch + 1, "mean_val_auc": round(mean, 4),
                    **{k: round(v, 4) for k, v in (logs or {}).items()},
                    **{f"val_auc/{s}": round(a, 4) for s, a in per.items()}}
            print(json.dumps(line), flush=True)
            with open(log_path, "a") as f:
                f.write(json.dumps(line) + "\n")
            self.last, self.last_epoch = mean, epoch + 1
            if mean > self.best:
                self.best, self.best_weights, self.best_epoch = mean, model.get_weights(), epoch + 1

    return ValidationAuc()


def _fit(args, strategy, train_ds, arrays, data, labels, sources, work_dir, total, init_weights=None):
    """Train under `strategy` (from `init_weights`, the --init-from model's, when given); the best epoch's
    model (saved as work_dir/best.keras) and the fit figures."""
    import keras

    from trainer import unet
    with strategy.scope():
        model = unet.make_unet((args.image_size, args.image_size, 1), args.filters, head_masked=args.head_masked)
        if init_weights is not None:
            model.set_weights(init_weights)
        fit_model = unet.training_model(model)
        lr = keras.optimizers.schedules.CosineDecay(0.0, total - args.steps_per_epoch, warmup_target=args.learning_rate,
                                                    warmup_steps=args.steps_per_epoch)
        fit_model.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=1e-4),
                          loss={"tumor_probability": slice_loss(args.negative_margin), "lesion_map": pixel_loss(args.dice_weight)})
    val = np.flatnonzero(data["is_val"])
    cb = validation_callback(model, arrays["x"][val], labels[val], sources[val], os.path.join(work_dir, "epochs.jsonl"),
                             args.threshold_sources if args.select_on == "threshold-sources" else "")
    print(f"Strategy {type(strategy).__name__}: {strategy.num_replicas_in_sync} replica(s); {len(val)} validation "
          f"slices; {model.count_params()} parameters", flush=True)
    t_fit = time.time()
    fit_model.fit(train_ds, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, callbacks=[cb], verbose=2)
    last = args.select_on == "last"
    fit = {"fit_seconds": round(time.time() - t_fit, 1),
           "best_epoch_mean_val_auc": round(cb.last if last else cb.best, 4),
           "kept_epoch": cb.last_epoch if last else cb.best_epoch}
    model.save(os.path.join(work_dir, "last.keras"))  # kept: the selection rule can be revisited without retraining
    if not last:
        model.set_weights(cb.best_weights)
    model.save(os.path.join(work_dir, "best.keras"))
    with open(os.path.join(work_dir, "fit.json"), "w") as f:
        json.dump(fit, f)
    return model, fit


PSEUDO_MASK_WEIGHT = 0.5  # a model's own map as a mask: trusted less than a radiologist's outline


def drop_tumor_free(is_train, collections, labels, names):
    """`is_train` without the tumor-free slices of the collections `names`; a name that is no collection of the
    training data is refused (a typo would otherwise train the recipe it meant to change)."""
    unknown = sorted(set(names) - set(collections.tolist()))
    if unknown:
        raise SystemExit(f"--skip-tumor-free {', '.join(unknown)}: not a training collection "
                         f"(these are: {', '.join(sorted(set(collections.tolist())))})")
    return is_train & ~(np.isin(collections, list(names)) & (labels == 0))


def keep_sources(is_train, sources, pattern):
    """`is_train` with only the slices whose source matches `pattern` (all of them for ""); a pattern that keeps
    no training slice is refused, naming the sources there are (a typo would otherwise train on nothing)."""
    if not pattern:
        return is_train
    kept = is_train & np.array([re.search(pattern, s) is not None for s in sources], bool)
    if not kept.any():
        raise SystemExit(f"--train-sources {pattern!r} matches no training slice (the sources are: "
                         f"{', '.join(sorted(set(np.asarray(sources)[is_train].tolist())))})")
    return kept


def _pseudo_masks(args, init, arrays, labels, is_train):
    """Give training tumor slices without a mask the lesion map of `init` (the --init-from model) as a
    mask where that model is confident (score >= --pseudo-masks), in place (arrays["mask"], arrays["pixel_weight"]).

    Why: two thirds of brain-mri's tumor slices (the SARTAJ gliomas among them) have no outline, and
    every use of them through the pooled slice loss taught a shortcut (runs E-H); a map that already
    points at the lesion (v7-L: pointing game 0.89-0.92) can supervise pixels where it is sure."""
    todo = np.flatnonzero(is_train & (labels == 1) & (arrays["pixel_weight"] == 0))
    if not len(todo):
        return
    scores, maps = lesion_eval.predict(init, arrays["x"][todo])
    size = arrays["mask"].shape[1]
    kept = 0
    for i, score, m in zip(todo, scores, maps, strict=True):
        if score < args.pseudo_masks:
            continue
        m = m.astype(np.float32)
        cells = m >= 0.5 * m.max()
        up = np.kron(cells, np.ones((size // m.shape[0], size // m.shape[1]), bool))
        arrays["mask"][i] = up.astype(np.uint8) * 255
        arrays["pixel_weight"][i] = PSEUDO_MASK_WEIGHT
        kept += 1
    print(f"Pseudo-masks: {kept} of {len(todo)} training tumor slices without a mask score >= "
          f"{args.pseudo_masks:g} with {args.init_from}; their maps train as masks at weight "
          f"{PSEUDO_MASK_WEIGHT}", flush=True)


def _mine_hard_examples(args, init, x, labels, masked, probs):
    """Score the training slices with `init` (the --init-from model); draw the tumor-free ones it flags
    --hard-negatives times and the masked tumor slices it misses --hard-positives times as often."""
    with open(os.path.join(os.path.dirname(args.init_from), "metadata.json")) as f:
        threshold = float(json.load(f)["threshold"])
    neg = np.flatnonzero(labels == 0) if args.hard_negatives > 1 else np.array([], int)
    pos = np.flatnonzero(masked) if args.hard_positives > 1 else np.array([], int)
    scores = np.zeros(len(labels))
    todo = np.concatenate([neg, pos])
    if todo.size:
        scores[todo], _ = lesion_eval.predict(init, x[todo])
    if neg.size:
        print(f"Hard negatives: {int(np.sum(scores[neg] >= threshold))} of {len(neg)} tumor-free training slices "
              f"score >= {threshold:.4f} with {args.init_from}; drawn {args.hard_negatives:g}x as often", flush=True)
        probs = lesion_data.boost_hard_negatives(probs, labels, scores, threshold, args.hard_negatives)
    if pos.size:
        print(f"Hard positives: {int(np.sum(scores[pos] < threshold))} of {len(pos)} masked tumor training slices "
              f"score < {threshold:.4f} with {args.init_from}; drawn {args.hard_positives:g}x as often", flush=True)
        probs = lesion_data.boost_hard_positives(probs, masked, scores, threshold, args.hard_positives)
    return probs


def main(argv=None):
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING)
    import keras
    strategy = distribute.get_strategy()
    keras.utils.set_random_seed(args.seed)
    from trainer.train import prepare_data
    cfg = TrainConfig(data_dir=args.data_dir, eval_data_dir=args.eval_data_dir, group_pattern=args.group_pattern,
                      holdout_pattern=args.holdout_pattern, seed=args.seed, split_seed=args.split_seed,
                      image_size=args.image_size,
                      max_images=args.max_images, model_dir=args.model_dir, name=args.name, epochs=args.epochs,
                      batch_size=args.batch_size, learning_rate=args.learning_rate, augment=args.augment,
                      target_sensitivity=args.target_sensitivity, threshold_sources=args.threshold_sources)
    t0 = time.time()
    try:
        data = prepare_data(cfg)
    except ValueError as e:  # a usage problem found in the data (exit 2, as trainer.task)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    ex, labels = data["examples"], data["labels"]
    arrays = lesion_data.build(ex, args.data_dir, args.image_size, args.cache_dir, masks_dirs=args.masks_dir,
                               preprocessing_id=args.preprocessing)
    ext = data["external"]
    ext_arrays = lesion_data.build(ext["examples"], args.eval_data_dir, args.image_size, args.cache_dir,
                                   preprocessing_id=args.preprocessing) \
        if ext and ext["examples"] else None
    print(f"Prepared {len(ex)} training-collection and {len(ext['examples']) if ext else 0} external slices "
          f"in {time.time() - t0:.0f} s", flush=True)
    sources = np.array([evaluation.source_key(e) for e in ex])
    collections = np.array([e.collection for e in ex])
    is_train = ~data["is_val"] & ~data["is_holdout"]
    label_only_negative = (arrays["pixel_weight"] == 0) & (labels == 0)
    # The --init-from model, loaded once: it starts the fit, mines hard negatives, draws pseudo-masks. All
    # three shape training only, so an evaluation of a saved checkpoint (--from-checkpoint) skips them.
    init = keras.saving.load_model(args.init_from) if args.init_from and not args.from_checkpoint else None
    if args.pseudo_masks and init is not None:
        _pseudo_masks(args, init, arrays, labels, is_train)
    if args.label_only_tumors == "skip":
        is_train &= ~((arrays["pixel_weight"] == 0) & (labels == 1))
    if args.label_only_negatives == "skip":
        is_train &= ~label_only_negative
    elif args.label_only_negatives == "pixel":  # a tumor-free slice: every pixel is known to be negative
        arrays["pixel_weight"] = np.where(label_only_negative, 1.0, arrays["pixel_weight"]).astype(np.float32)
    is_train = drop_tumor_free(is_train, collections, labels, args.skip_tumor_free)
    is_train = keep_sources(is_train, sources, args.train_sources)
    idx = np.flatnonzero(is_train)
    probs = lesion_data.sampling_weights(collections[idx], labels[idx], arrays["level"][idx], args.shares)
    if args.tumor_share:
        probs = lesion_data.with_share(probs, (labels[idx] == 1) & (arrays["pixel_weight"][idx] > 0), args.tumor_share)
    if (args.hard_negatives > 1 or args.hard_positives > 1) and init is not None:
        masked = (labels[idx] == 1) & (arrays["pixel_weight"][idx] >= 1.0)  # a mask drawn on the slice itself
        probs = _mine_hard_examples(args, init, arrays["x"][idx], labels[idx], masked, probs)
    if args.mimic_boost > 1:
        has_mimic = (labels[idx] == 0) & arrays["mimic"][idx].reshape(len(idx), -1).any(axis=1)
        print(f"Non-tumor lesions: {int(has_mimic.sum())} tumor-free training slices hold one; drawn "
              f"{args.mimic_boost:g}x as often", flush=True)
        probs = lesion_data.boost_marked(probs, has_mimic, args.mimic_boost)
    # LGG's T1 "tumor" labels are noisy (lesion often invisible on T1): asking the pooled map to find
    # a lesion there teaches level and anatomy, the confound this model exists to break. With
    # --t1-tumor-slices outside they train only as negatives outside the (dilated) FLAIR mask.
    noisy = arrays["pixel_weight"] == lesion_data.T1_MASK_WEIGHT
    if args.t1_tumor_slices == "outside":
        arrays["pixel_weight"] = np.where(noisy, OUTSIDE_ONLY, arrays["pixel_weight"]).astype(np.float32)
    slice_w = np.where(noisy, 0.0 if args.t1_tumor_slices == "outside" else 0.5, 1.0) * args.slice_weight
    map_size = args.image_size // 2
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size * replicas
    version = args.version or str(artifact.next_version(os.path.join(args.model_dir, args.name)))
    final_dir = os.path.join(args.model_dir, args.name, version)
    if os.path.exists(final_dir):
        raise SystemExit(f"{final_dir} already exists; a published version is never overwritten")
    work_dir = os.path.join(args.model_dir, args.name, "_work", version)
    os.makedirs(work_dir, exist_ok=True)
    total = args.epochs * args.steps_per_epoch
    if args.from_checkpoint:
        from screening_core import evidence, upright  # noqa: F401  (an ensemble checkpoint's own layers)
        model = keras.saving.load_model(args.from_checkpoint)
        with open(os.path.join(os.path.dirname(args.from_checkpoint), "fit.json")) as f:
            fit = json.load(f)
    else:
        print(f"{len(idx)} training slices, global batch {global_batch}", flush=True)
        from trainer import augment
        sequence = np.array([e.sequence for e in ex])  # the MRI-sequence folder discovery found ("" if none)
        fluid_p = np.where(sequence == "flair", args.fluid_bright, 0.0)
        spots_p = np.where(np.isin(sequence, ("flair", "t2")), args.spots, 0.0)
        synth_p, synth_kind = augment.synthesis_plan(sequence, labels, arrays["pixel_weight"],
                                                     arrays["level"], args.synth_tumors, kinds=args.synth_kinds)
        if args.synth_tumors:
            print(f"{int(np.count_nonzero(synth_p[idx]))} tumor-free training slices may get a synthetic tumor",
                  flush=True)
        transplant_p = augment.synthesis_plan(sequence, labels, arrays["pixel_weight"], arrays["level"],
                                              args.transplant_tumors,
                                              planes=("axial",) if args.transplant_axial_only else None)[0]
        donors = transplant_donors(sequence, labels, arrays, idx) if args.transplant_tumors else None
        if donors:
            print(f"{int(np.count_nonzero(transplant_p[idx]))} tumor-free training slices may get a real tumor "
                  f"from {len(set(np.concatenate(list(donors.values())).tolist()))} donor slices", flush=True)
        train_ds = make_train_dataset(arrays, idx, labels, probs, slice_w, map_size, global_batch, args.seed,
                                      args.augment, fluid_p, spots_p, synth_p, synth_kind, transplant_p, donors,
                                      synth_contrast=args.synth_contrast, mimic_weight=args.mimic_weight)
        model, fit = _fit(args, strategy, train_ds, arrays, data, labels, sources, work_dir, total,
                          init_weights=init.get_weights() if init is not None else None)
    report = lesion_eval.evaluate_all(model, data, arrays, ext, ext_arrays, args)
    trained_on_val = {}
    if "members" in fit:  # an ensemble: which members were trained on the slices it is validated on
        from trainer.ensemble import trained_on_validation
        trained_on_val = trained_on_validation(fit["members"], [r["path"] for r in report["rows"]
                                                                if r["split"] == "validation"])
        for path, share in trained_on_val.items():
            print(f"warning: member {path} was trained on {share:.0%} of this ensemble's validation slices: its "
                  "validation figures and the threshold chosen on them are optimistic (retrain that member on "
                  "this split: --split-seed)", file=sys.stderr)
    spec = preprocessing.InputSpec(height=args.image_size, width=args.image_size, preprocessing=args.preprocessing)
    from trainer.model import flops_per_image
    fields = dict(
        name=args.name, version=version, input_spec=spec, class_names=["no_tumor", "tumor"],
        threshold=report["metrics"]["threshold"], target_sensitivity=args.target_sensitivity,
        validation_metrics=report["metrics"], data_fingerprint=data["fingerprint"],
        training_config={**cfg.to_dict(), **{k: v for k, v in vars(args).items()
                                                if k not in ("data_dir", "eval_data_dir")}},
        extra={"head": "lesion_map", "lesion": report["lesion"],
               "training": {"replicas": replicas, "global_batch_size": global_batch,
                            "strategy": type(strategy).__name__,
                            "epochs_run": None if "members" in fit else args.epochs,
                            "best_epoch_mean_val_auc": fit["best_epoch_mean_val_auc"],
                            **({"kept_epoch": fit["kept_epoch"]} if "kept_epoch" in fit else {}),
                            "fit_seconds": fit["fit_seconds"],
                            **({"members": fit["members"]} if "members" in fit else {}),  # an ensemble's parts
                            **({"members_trained_on_validation": trained_on_val} if trained_on_val else {}),
                            # none for a checkpoint nobody fitted here: a weight soup, or an ensemble (whose
                            # fit_seconds are its members' sum, over other images and epochs)
                            "train_images_per_second": round(total * global_batch / fit["fit_seconds"], 1)
                            if fit["fit_seconds"] and "members" not in fit else None,
                            "params": int(model.count_params()), "flops_per_image": flops_per_image(model)}})
    metadata = artifact.write_artifact(model, final_dir, fields)
    lesion_eval.write_extras(final_dir, metadata, data, report)
    from trainer import stress
    figures = stress.measure(final_dir)  # scored from the rows write_extras just wrote
    if figures:
        stress.write_to_artifact(final_dir, figures)
    print(f"Artifact written to {final_dir}: threshold {metadata['threshold']:.4f}", flush=True)


if __name__ == "__main__":
    main()

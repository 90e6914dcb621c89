"""Which way up a slice is: a small network that tells a slice turned by 90, 180 or 270 degrees.

  python -m trainer.orientation --data-dir ../shared/data/brain-mri --data-dir ../shared/data/lgg ... \
      --exclude models/brain-tumor-cnn/37/validation_predictions.csv --out models/slice-orientation/1

Why: every member of the screening ensemble learnt from upright slices, and a copy turned by 90 degrees loses
two fifths of brain-mri's validation tumors (`trainer.copy_check`, session 32). Exported slices, phone photos
of a screen and archives converted by hand arrive turned; a DICOM's own orientation does not reach a JPEG.
Teaching every member all four turns would retrain six networks and spend capacity on a nuisance; telling the
turn is a task of its own that needs no label at all (every training slice is upright: turn it and the turn is
the label; Gidaris et al., "Unsupervised representation learning by predicting image rotations", ICLR 2018).
The ensemble (`trainer.ensemble --orientation`) turns a slice this network calls turned back before any member
sees it (`screening_core.upright`), and only where it is sure: a slice left as it came costs nothing, one
turned wrongly costs a tumor.

Mirror images are drawn in training, so left and right (and a sagittal face on either side) are no cue:
a mirror changes no screening score's meaning, a turn does. The slices are `prepare()`'s inputs, turned after
preparation (the square canvas turns with the head); the evaluation turns the source image first, as a user's
copy is turned, and prepares it after.
"""
import argparse
import csv
import os
import time

import numpy as np

from trainer import HelpFormatter

TURNS = (0, 90, 180, 270)  # counter-clockwise degrees, np.rot90's k = index
SKIP_PARTS = ("masks", "non-tumor-lesions")  # not slices, or slices with drawn lesions another row holds
SIZE = 64  # the network looks at the prepared input halved: the head's outline and its large parts suffice


def slice_paths(roots, exclude=()):
    """Every image under `roots` (masks left out) that is not in `exclude`, sorted."""
    from trainer.discovery import IMAGE_EXTENSIONS
    skip = {os.path.normpath(p) for p in exclude}
    out = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_PARTS)
            out += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
                    and os.path.normpath(os.path.join(folder, f)) not in skip]
    return sorted(out)


def excluded_paths(csv_paths):
    """The `path` column of each scored-rows CSV (an artifact's validation_predictions.csv): kept out of training
    so that the evaluation's slices are ones this network never saw."""
    return [r["path"] for r in _rows(csv_paths)]


def stripped(gray, seed):
    """`gray` with the outer `4-9 %` of the head's width set to 0: a crude skull stripping (scalp and skull go,
    the head's outline becomes the brain's), so that the network learns a turn from the brain's shape too and not
    only from the scalp and the neck. Why: skull-stripped archives (BraTS-style research exports) turn up, and
    the first network, which saw only 400 such slices, called a sideways turn sure on 2.5-7.5 % of brats-sample's
    upright slices (docs/model_v4_notes.md row ORI)."""
    from PIL import Image, ImageFilter
    top = float(np.percentile(gray, 99.5)) or 1.0
    head = gray > 0.08 * top
    rows, cols = np.flatnonzero(head.any(1)), np.flatnonzero(head.any(0))
    if rows.size < 8 or cols.size < 8:
        return gray
    width = min(rows[-1] - rows[0], cols[-1] - cols[0])
    steps = max(1, round(np.random.default_rng(seed).uniform(0.04, 0.09) * width))
    idx_c, idx_r = np.arange(head.shape[1]), np.arange(head.shape[0])
    first_c, last_c = head.argmax(1), head.shape[1] - 1 - head[:, ::-1].argmax(1)
    first_r, last_r = head.argmax(0), head.shape[0] - 1 - head[::-1].argmax(0)
    # dark tissue inside the head (CSF, sulci) is head: each row's and column's span between its outermost head pixels
    filled = ((idx_c[None] >= first_c[:, None]) & (idx_c[None] <= last_c[:, None]) & head.any(1)[:, None]
              & (idx_r[:, None] >= first_r[None]) & (idx_r[:, None] <= last_r[None]) & head.any(0)[None])
    mask = Image.fromarray(filled.astype(np.uint8) * 255)
    for _ in range(steps):
        mask = mask.filter(ImageFilter.MinFilter(3))
    return np.where(np.asarray(mask) > 0, gray, 0.0).astype(np.float32)


def banded(gray, seed):
    """`gray` with the head cut to a horizontal band: its top 0-25 % and bottom 15-45 % (of the head's height) set
    to 0, as a volume that covers a slab of the head shows it in the sagittal and coronal planes (no neck, a flat
    top: wider than tall, as a turned head is). Why: O3 turned a quarter of such upright T2 slices (row ORI)."""
    top = float(np.percentile(gray, 99.5)) or 1.0
    rows = np.flatnonzero((gray > 0.08 * top).any(1))
    if rows.size < 8:
        return gray
    u = np.random.default_rng(seed).uniform(size=2)
    height = rows[-1] - rows[0]
    r0, r1 = rows[0] + int(0.25 * u[0] * height), rows[-1] - int((0.15 + 0.3 * u[1]) * height)
    out = np.zeros_like(gray)
    out[r0:r1] = gray[r0:r1]
    return out


def _prepared(path, spec, turn=0, change=None, seed=0):
    """The model input of the image at `path`, changed first by `change` (a function of (gray, seed): `stripped`,
    `banded`) where given, then turned `turn` degrees."""
    from PIL import Image

    from screening_core import preprocessing
    with open(path, "rb") as f:
        gray = preprocessing.decode_raster(f.read())
    if change is not None:
        gray = change(gray, seed)
    if turn:
        gray = np.asarray(Image.fromarray(gray.astype(np.float32)).rotate(turn, expand=True))
    return preprocessing.prepare(gray, spec)[..., 0].astype(np.float16)


def _prepared_item(item, spec, change):
    path, seed = item
    return _prepared(path, spec, change=change, seed=seed)


def prepare_all(paths, spec, turn=0, workers=2):
    """(n, H, W) float16 model inputs of `paths`, the source image turned `turn` degrees first."""
    import functools
    from multiprocessing import Pool
    work = functools.partial(_prepared, spec=spec, turn=turn)
    with Pool(workers) as pool:
        return np.stack(pool.map(work, paths, chunksize=64))


def prepare_changed(paths, spec, change, seed, workers=2):
    """(n, H, W) model inputs of `paths`, each changed by `change` (`stripped`, `banded`) with its own seed."""
    import functools
    from multiprocessing import Pool
    work = functools.partial(_prepared_item, spec=spec, change=change)
    with Pool(workers) as pool:
        return np.stack(pool.map(work, [(p, seed * 100003 + i) for i, p in enumerate(paths)], chunksize=64))


def make_model(size=None, widths=(16, 32, 64, 128), seed=42):
    """The network: the prepared input halved, four stages of two 3x3 convolutions, a dense layer on the 4x4
    map (where things are is the whole task, so no global pooling), softmax over TURNS.

    Layer names start with `orient_` and none ends in `_pool`: in an ensemble they must not join the OOD
    guard's features (`screening_core.ood.layer_names`)."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size or 2 * SIZE, size or 2 * SIZE, 1), name="image")
    x = layers.AveragePooling2D(2, name="orient_half")(inp)
    for i, w in enumerate(widths, start=1):
        for j in "ab":
            x = layers.Conv2D(w, 3, padding="same", activation="relu", name=f"orient_conv{i}{j}")(x)
        x = layers.MaxPooling2D(2, name=f"orient_down{i}")(x)
    x = layers.Flatten(name="orient_flat")(x)
    x = layers.Dense(64, activation="relu", name="orient_dense")(x)
    x = layers.Dropout(0.3, name="orient_drop")(x)
    out = layers.Dense(len(TURNS), activation="softmax", dtype="float32", name="orient_turn")(x)
    return keras.Model(inp, out, name="orientation")


def remap_contrast(img, u):
    """`img` (H, W, 1) in [0, 1] with its head's intensities remapped by draws `u` (4 uniforms): half the time
    (`u[0]` < 0.5) the head inverted (bright fluid, dark tissue: T2 against T1), then a random wave added to the
    intensity curve (not monotone: tissue order changes too). The background stays 0.

    Why it was tried: the sagittal and coronal training slices are FLAIR and T1, and the network trained without it
    called 52 of 154 upright sagittal slices of a healthy T2 volume sideways. It did not help (run O4, worse on
    those and on upright validation slices): the cue was the slab's outline, not T2's contrast (docs/model_v4_notes.md
    row ORI). Kept as `--contrast-share`, off in the recipe."""
    import tensorflow as tf
    head = img > 0.05
    inverted = tf.where(head, 1.0 - 0.9 * img, 0.0)
    img = tf.where(u[0] < 0.5, inverted, img)
    wave = 0.2 * u[1] * tf.sin(2.0 * np.pi * (0.5 + 1.5 * u[2]) * img + 2.0 * np.pi * u[3])
    return tf.where(head, tf.clip_by_value(img + wave, 0.05, 1.0), 0.0)


def dataset(x, batch, seed, train=True, epochs=1, contrast=0.0):
    """Batches of (slice turned by a quarter, the turn): in training each slice is drawn once per epoch in a seeded
    order, mirrored at random, gamma-jittered and turned at random, every draw stateless from (seed, draw number),
    so a run is repeated draw for draw, and a `contrast` share of them remapped (`remap_contrast`); otherwise each
    slice is turned once, by a seeded turn, as it comes."""
    import tensorflow as tf
    n = len(x)
    if not train:
        k = np.random.default_rng(seed).integers(0, len(TURNS), n).astype(np.int32)
        ds = tf.data.Dataset.from_tensor_slices((x, k))
        return ds.map(lambda img, k: (tf.image.rot90(tf.cast(img, tf.float32)[..., None], k), k)).batch(batch)
    ds = tf.data.Dataset.from_tensor_slices(x).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat(epochs)

    def turn(i, img):
        s = tf.random.stateless_uniform([8], seed=tf.stack([tf.constant(seed, tf.int64), i]))
        img = tf.cast(img, tf.float32)[..., None]
        img = tf.cond(s[0] < 0.5, lambda: tf.image.flip_left_right(img), lambda: img)
        img = tf.clip_by_value(img, 0.0, 1.0) ** tf.exp(0.5 * (s[1] - 0.5))
        img = tf.cond(s[3] < contrast, lambda: remap_contrast(img, s[4:8]), lambda: img)
        k = tf.minimum(tf.cast(s[2] * len(TURNS), tf.int32), len(TURNS) - 1)
        return tf.image.rot90(img, k), k

    return ds.enumerate().map(turn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch).prefetch(2)


def turn_probabilities(model, x, batch=256):
    """(n, 4) probabilities of TURNS for prepared inputs `x` (n, H, W)."""
    return model.predict(np.asarray(x, np.float32)[..., None], batch_size=batch, verbose=0)


def undo_rate(probs, true_turn, confidence):
    """(share of slices upright after the graph's rule, share turned by a quarter, share upside down) for slices
    turned `true_turn` degrees, the rule being the graph's own (`screening_core.upright.chosen_turn`)."""
    from screening_core import upright
    undo = np.asarray(upright.chosen_turn(np.asarray(probs, np.float32), confidence)).argmax(1)
    net = (TURNS.index(true_turn) - undo) % len(TURNS)
    return float(np.mean(net == 0)), float(np.mean(net % 2 == 1)), float(np.mean(net == 2))


def main(argv=None):
    from screening_core.preprocessing import PREPROCESSING_ID, PREPROCESSING_IDS
    p = argparse.ArgumentParser(prog="python -m trainer.orientation", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--data-dir", action="append", required=True, help="folder of upright slices (repeatable)")
    p.add_argument("--exclude", action="append", default=[],
                   help="scored-rows CSV whose paths stay out of training and are the evaluation (repeatable)")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--epochs", type=int, default=12, help="passes over the training slices")
    p.add_argument("--batch", type=int, default=64, help="slices per step")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's")
    p.add_argument("--confidence", type=float, default=0.99,
                   help="a sideways turn is undone only where the network gives it more than this")
    p.add_argument("--stripped-share", type=float, default=0.0,
                   help="share of the training slices added again skull-stripped (`stripped`), in [0, 1]")
    p.add_argument("--band-share", type=float, default=0.0,
                   help="share of the training slices added again cut to a band of the head (`banded`), in [0, 1]")
    p.add_argument("--contrast-share", type=float, default=0.0,
                   help="share of training draws whose head intensities are remapped (inverted or waved: "
                   "`remap_contrast`), in [0, 1]")
    p.add_argument("--seed", type=int, default=42, help="the split, the copies, the draws and the initial weights")
    p.add_argument("--preprocessing", default=PREPROCESSING_ID, choices=PREPROCESSING_IDS,
                   help="prepare() version the slices are prepared with (that of the ensemble it joins)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch < 1 or not 0.25 <= args.confidence < 1 or not 0 <= args.stripped_share <= 1 \
            or not 0 <= args.contrast_share <= 1 or not 0 <= args.band_share <= 1:
        p.error("--epochs and --batch must be >= 1, --confidence in [0.25, 1), --stripped-share, --band-share and "
                "--contrast-share in [0, 1]")
    missing = [d for d in args.data_dir + args.exclude if not os.path.exists(d)]
    if missing:
        p.error(f"no such folder or file: {', '.join(missing)}")
    import keras

    from screening_core import artifact, preprocessing
    spec = preprocessing.InputSpec(preprocessing=args.preprocessing)
    held = excluded_paths(args.exclude)
    paths = slice_paths(args.data_dir, held)
    if len(paths) < 10:
        p.error(f"{len(paths)} slices under --data-dir once the excluded ones are left out: too few to train on")
    print(f"{len(paths)} training slices from {len(args.data_dir)} folders; {len(held)} evaluation slices kept out")
    t0 = time.time()
    x = prepare_all(paths, spec)
    rng = np.random.default_rng(args.seed)
    val = np.zeros(len(x), bool)
    val[rng.choice(len(x), len(x) // 10, replace=False)] = True
    for share, change, seed, what in ((args.stripped_share, stripped, args.seed, "skull-stripped"),
                                      (args.band_share, banded, args.seed + 1, "cut to a band")):
        if share:  # copies of source slices of the training part (never of the validation tenth, nor of copies)
            pick = np.sort(rng.choice(np.flatnonzero(~val[:len(paths)]), round(share * int((~val[:len(paths)]).sum())),
                                      replace=False))
            x = np.concatenate([x, prepare_changed([paths[i] for i in pick], spec, change, seed)])
            val = np.concatenate([val, np.zeros(len(pick), bool)])
            print(f"{len(pick)} training slices added {what}")
    print(f"prepared in {time.time() - t0:.0f} s")
    model = make_model(spec.height)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    t0 = time.time()
    train = x[~val]
    hist = model.fit(dataset(train, args.batch, args.seed, epochs=args.epochs, contrast=args.contrast_share),
                     epochs=args.epochs,
                     steps_per_epoch=len(train) // args.batch,
                     validation_data=dataset(x[val], 256, args.seed + 1, train=False), verbose=2)
    fit_seconds = time.time() - t0
    report = {"training_slices": int((~val).sum()), "fit_seconds": round(fit_seconds, 1), "params": model.count_params(),
              "history": {k: [round(float(v), 4) for v in vs] for k, vs in hist.history.items()}}
    if held:
        report["evaluation"] = evaluate(model, [r for r in _rows(args.exclude)], spec, args.confidence)
    os.makedirs(args.out, exist_ok=True)
    artifact.write_artifact(model, args.out, dict(
        name="slice-orientation", version=os.path.basename(os.path.normpath(args.out)),
        input_spec=spec, class_names=[str(t) for t in TURNS], threshold=args.confidence,
        target_sensitivity=0.0, validation_metrics={"accuracy": report["history"]["val_accuracy"][-1]},
        data_fingerprint="", training_config={**vars(args)},
        extra={"head": "orientation", "orientation": report}))
    write_card(args.out)
    print(card_table(report.get("evaluation", {})))
    print(f"written to {args.out}")
    return 0


def card_table(evaluation):
    """Where each source's slices end up, turned each way and put through the graph's rule, as a Markdown table."""
    lines = ["| source | n | as given: upright / sideways / upside down | turned 90 | turned 180 | turned 270 |",
             "|---|---|---|---|---|---|"]
    for source, r in evaluation.items():
        cells = [f"{100 * r[str(t)]['upright']:.1f} / {100 * r[str(t)]['sideways']:.1f} / "
                 f"{100 * r[str(t)]['upside_down']:.1f} %" for t in TURNS]
        lines.append(f"| {source} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_card(version_dir):
    """model_card.md of an orientation artifact, from its metadata."""
    from screening_core import artifact
    md = artifact.read_metadata(version_dir)
    report, cfg = md.get("orientation", {}), md.get("training_config", {})
    text = f"""# Model card: {md['name']} v{md['version']}

## Intended use
Not a screening model: a part of the screening ensembles that name it (`trainer.ensemble --orientation`). It tells
whether a prepared slice (`{md['input_spec']['preprocessing']}`) is turned by 0, 90, 180 or 270 degrees; the
ensemble turns a slice it calls sideways with probability above {md['threshold']:g} upright before any member sees it
(`screening_core.upright`). brain-score refuses it alone.

## Model
`trainer.orientation.make_model`: the 128 px input halved, four stages of two 3x3 convolutions (16-128 channels),
a dense layer on the 4x4 map, softmax over the four turns; {report.get('params', '?')} parameters,
trained from random weights (no pretrained weights).

## Training data and recipe
{report.get('training_slices', '?')} training slices per epoch: the upright slices of
{', '.join(f'`{d}`' for d in cfg.get('data_dir', []))} (the slices scored in
{', '.join(f'`{e}`' for e in cfg.get('exclude', []))} left out, and a tenth kept for the network's own validation),
{cfg.get('stripped_share', 0):g} of them added again crudely skull-stripped; mirrored and gamma-jittered at random, {cfg.get('contrast_share', 0):g} of the draws with the head's intensities remapped (inverted
or waved), each turned by a random quarter, the turn its label: no tumor label is used. {cfg.get('epochs')} epochs,
batch {cfg.get('batch')}, Adam {cfg.get('learning_rate')}, seed {cfg.get('seed')}; {report.get('fit_seconds', '?')} s
of fit. Rebuild: `make train-orientation`.

## Evaluation
Up to 200 slices of each source the exclusion lists scored (their validation, held-out site and external rows),
each source image turned as a user's copy is (then prepared), put through the network and the ensemble's rule:
where each ends up.

{card_table(report.get('evaluation', {}))}

## Limitations
- A half turn is never undone: skull-stripped slices near the vertex or the skull base have no front or back the
  network can tell, and an upside-down slice loses fewer tumors than a sideways one.
- Its mistakes on upright slices are mostly tumor-free slices at the skull base, the vertex and far lateral
  sagittal slices. It reads which way up a head is partly from the head's outline and the neck: sagittal and
  coronal slices of a volume that covers only a slab of the head (no neck, a flat top) or of a skull-stripped brain
  are its risk (it turned a quarter of the upright sagittal slices of three such T2 volumes of the tumor-free
  probe): docs/model_v4_notes.md row ORI.
"""
    with open(os.path.join(version_dir, "model_card.md"), "w") as f:
        f.write(text)


def _rows(csv_paths):
    for p in csv_paths:
        with open(p) as f:
            yield from csv.DictReader(f)


def evaluate(model, rows, spec, confidence, per_source=200, seed=0):
    """{source: {turn: {"upright", "sideways", "upside_down"}}}: up to `per_source` evaluation slices of each
    source, the source image turned by each of TURNS, then prepared, then turned back by the graph's rule: where
    each ends up."""
    by_source = {}
    for r in rows:
        if os.path.exists(r["path"]):
            by_source.setdefault(r.get("source") or "all", []).append(r["path"])
    rng = np.random.default_rng(seed)
    out = {}
    for source, paths in sorted(by_source.items()):
        paths = sorted(paths)
        picked = [paths[i] for i in sorted(rng.choice(len(paths), min(per_source, len(paths)), replace=False))]
        out[source] = {"n": len(picked)}
        for turn in TURNS:
            probs = turn_probabilities(model, prepare_all(picked, spec, turn))
            upright, sideways, upside_down = undo_rate(probs, turn, confidence)
            out[source][str(turn)] = {"upright": round(upright, 4), "sideways": round(sideways, 4),
                                      "upside_down": round(upside_down, 4)}
    return out


if __name__ == "__main__":
    raise SystemExit(main())

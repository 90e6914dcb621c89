"""tf.data input pipelines that read image files (local or gs://).

Decoding and preprocessing run through `preprocessing.image_bytes_to_input`,
the same function the Beam scorer calls, wrapped in `tf.numpy_function`.
They are deterministic, so their output is cached after the first epoch and
only the cheap, random augmentation runs every epoch.
"""
import numpy as np
import tensorflow as tf

from screening_core import preprocessing
from trainer import augment

AUTOTUNE = tf.data.AUTOTUNE


def _loader(spec):
    def load(path):
        with tf.io.gfile.GFile(path.decode(), "rb") as f:
            return preprocessing.image_bytes_to_input(f.read(), spec)

    def tf_load(path, label):
        image = tf.numpy_function(load, [path], tf.float32, stateful=False)
        image.set_shape((spec.height, spec.width, 1))
        return image, label
    return tf_load


def class_weights(labels):
    """{0: w0, 1: w1} that give both classes the same total weight.

    A class absent from `labels` weighs 1: a slice that only augmentation puts in it (a tumor painted or
    transplanted into a collection of tumor-free heads) counts as one example. Weighed as "the whole
    missing class", one such slice of the 4,828 healthy planes carried 2,414 times a tumor-free slice's
    weight, and the classifier of run 700 (session 27) never learnt (training AUC 0.5 after 6 epochs)."""
    labels = np.asarray(labels)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    return {0: len(labels) / (2.0 * n_neg) if n_neg else 1.0, 1: len(labels) / (2.0 * n_pos) if n_pos else 1.0}


def make_dataset(paths, labels, spec, global_batch_size, training, seed=0,
                 cache=True, weights=None, augment_mode="v2"):
    """Batches of (image, label[, weight]); augmented and shuffled when training."""
    ds = _examples(paths, labels, spec, training, seed, cache, weights, augment_mode)
    ds = ds.batch(global_batch_size, drop_remainder=False)
    return ds.prefetch(AUTOTUNE)


def make_balanced_dataset(paths, labels, sources, spec, global_batch_size, seed=0,
                          augment_mode="v2", shares=None):
    """Endless training batches that draw each source with equal probability (or its share of `shares`).

    Without it the larger collection dominates every batch, and a source's look
    (which here correlates with the label) is the easiest thing to learn. Class
    weights are computed per source, so each source is class-balanced too.
    """
    paths, labels, sources = np.asarray(paths), np.asarray(labels), np.asarray(sources)
    ds = _draw_sources(sources, seed, lambda m, part_seed: _examples(
        paths[m], labels[m], spec, True, part_seed, True, class_weights(labels[m]), augment_mode), shares)
    return ds.batch(global_batch_size, drop_remainder=False).prefetch(AUTOTUNE)


def _draw_sources(sources, seed, make_part, shares=None):
    """Endless mix of `make_part(mask, seed)` datasets, one per source, drawn with equal probability or,
    given `shares` ({source: share}, every training source named), in proportion to its share."""
    names = sorted(set(sources.tolist()))
    if shares:
        missing, unknown = [n for n in names if n not in shares], sorted(set(shares) - set(names))
        if missing or unknown:
            raise ValueError(f"--source-shares must name each training collection {names} once"
                             + (f"; no share for {missing}" if missing else "")
                             + (f"; not a training collection: {unknown}" if unknown else ""))
        weights = [shares[n] / sum(shares[k] for k in names) for n in names]
    else:
        weights = [1.0 / len(names)] * len(names)
    parts = [make_part(sources == src, seed + 7 * i).repeat() for i, src in enumerate(names)]
    return tf.data.Dataset.sample_from_datasets(parts, weights=weights, seed=seed)


def _examples(paths, labels, spec, training, seed, cache, weights, augment_mode):
    labels = np.asarray(labels, np.float32)[:, None]
    ds = tf.data.Dataset.from_tensor_slices((list(paths), labels))
    ds = ds.map(_loader(spec), num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        counter = tf.data.Dataset.counter(start=seed * 1_000_003)
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda xy, i: (augment.augment(xy[0], tf.stack([tf.cast(seed, tf.int64), i]), augment_mode),
                           xy[1]),
            num_parallel_calls=AUTOTUNE)
    if weights is not None:
        w = tf.constant([weights[0], weights[1]], tf.float32)
        ds = ds.map(lambda x, y: (x, y, tf.gather(w, tf.cast(y[0], tf.int32))),
                    num_parallel_calls=AUTOTUNE)
    return ds


# ---- lesion-supervised training (tumor masks where a collection has them) ----
MASK_UNKNOWN, MASK_EMPTY = "", "-"


def _lesion_loader(spec):
    """(image, mask at input size, mask known, tumor extent) for a path, its mask spec (path, "-" or "")
    and the path of a mask that only marks where the tumor is (`augment.mirror_pair`; "" for none)."""
    def project(gray, path, spec):
        with tf.io.gfile.GFile(path, "rb") as f:
            return preprocessing.project_mask(gray, preprocessing.decode_raster(f.read()), spec)[..., None]

    def load(path, mask, extent):
        with tf.io.gfile.GFile(path.decode(), "rb") as f:
            gray = preprocessing.decode_raster(f.read())
        x = preprocessing.prepare(gray, spec)
        mask, extent = mask.decode(), extent.decode()
        known = mask not in (MASK_UNKNOWN, MASK_EMPTY)
        m = project(gray, mask, spec).astype(np.float32) if known else np.zeros_like(x)
        if not extent:
            e = np.zeros(x.shape, np.uint8)
        else:  # most often the mask itself (a FLAIR slice): read and projected once
            e = ((m if extent == mask else project(gray, extent, spec)) > 0.5).astype(np.uint8)
        return x, m, np.float32(known or mask == MASK_EMPTY), e

    def tf_load(path, mask, extent, label, weight):
        x, m, known, e = tf.numpy_function(load, [path, mask, extent],
                                           (tf.float32, tf.float32, tf.float32, tf.uint8), stateful=False)
        x.set_shape((spec.height, spec.width, 1))
        m.set_shape((spec.height, spec.width, 1))
        e.set_shape((spec.height, spec.width, 1))
        known.set_shape(())
        return x, m, known, e, label, weight
    return tf_load


def load_donors(paths, masks, spec, min_pixels=20):
    """(images (n, H, W, 1), masks (n, H, W, 1)) float32 of masked tumor slices, prepared as the model sees
    them, for `augment.transplant_tumor`; slices whose mask has another shape or whose projected mask holds
    fewer than `min_pixels` are left out."""
    xs, ms = [], []
    for path, mask in zip(paths, masks, strict=True):
        with tf.io.gfile.GFile(path, "rb") as f:
            gray = preprocessing.decode_raster(f.read())
        with tf.io.gfile.GFile(mask, "rb") as f:
            m = preprocessing.decode_raster(f.read())
        if m.shape != gray.shape:  # not drawn on this slice: no tumor to cut
            continue
        m = preprocessing.project_mask(gray, m, spec)
        if (m >= 0.5).sum() >= min_pixels:
            xs.append(preprocessing.prepare(gray, spec))
            ms.append((m >= 0.5).astype(np.float32)[..., None])
    if not xs:
        raise ValueError("--transplant-tumors found no masked FLAIR/T2 training tumor slice to cut a tumor from")
    return np.stack(xs), np.stack(ms)


def _lesion_examples(paths, labels, masks, spec, training, seed, augment_mode, stride, synth=None, mirror=None,
                     transplant=None, fluid=None):
    labels = np.asarray(labels, np.float32)
    w = class_weights(labels)
    weights = np.where(labels > 0.5, w[1], w[0]).astype(np.float32)
    extents, p_mirror = mirror if mirror is not None and training else ([""] * len(paths), 0.0)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), list(masks), list(extents), labels[:, None], weights))
    ds = ds.map(_lesion_loader(spec), num_parallel_calls=AUTOTUNE, deterministic=True).cache()
    if training:
        p, kind = synth if synth is not None else (np.zeros(len(paths), np.float32), np.zeros(len(paths), np.int32))
        tp = np.zeros(len(paths), np.float32) if transplant is None else np.asarray(transplant[0], np.float32)
        fp = np.zeros(len(paths), np.float32) if fluid is None else np.asarray(fluid, np.float32)
        bank_x, bank_m = (np.zeros((1, spec.height, spec.width, 1), np.float32),) * 2 if transplant is None \
            else transplant[1:]
        bank_x, bank_m = tf.constant(bank_x), tf.constant(bank_m)
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices((np.asarray(p, np.float32),
                                                                          np.asarray(kind, np.int32), tp, fp))))
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        counter = tf.data.Dataset.counter(start=seed * 1_000_003)

        def aug(e, i):
            (x, m, known, extent, label, weight), (p, kind, tp, fp) = e
            s = tf.stack([tf.cast(seed, tf.int64), i])
            # a transplanted or painted tumor: a tumor slice whose mask is known (every other pixel a negative)
            j = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(s, 7), 0,
                                            tf.shape(bank_x)[0], tf.int32)
            x, m, moved = augment.maybe_transplant_tumor(x, m, bank_x[j], bank_m[j], s, tp)
            x, m, painted = augment.maybe_synthetic_tumor(x, m, s, tf.where(moved, 0.0, p), kind)
            painted = painted | moved
            known = tf.where(painted, 1.0, known)
            label = tf.where(painted, tf.ones_like(label), label)
            weight = tf.where(painted, tf.constant(w[1], tf.float32), weight)
            if p_mirror:  # a tumor slice mirrored into a tumor-free one (or a two-sided tumor)
                x, m, mirrored_label, mirrored = augment.maybe_mirror_pair(
                    x, m, tf.cast(extent, tf.float32), s, p_mirror * tf.cast(label[0] > 0.5, tf.float32))
                erased = mirrored & (mirrored_label < 0.5)
                known = tf.where(erased, 1.0, known)  # the mirrored healthy half: every pixel a negative
                label = tf.where(erased, tf.zeros_like(label), label)
                weight = tf.where(erased, tf.constant(w[0], tf.float32), weight)
            x, m = augment.augment_with_mask(x, m, s, augment_mode, fluid_bright=fp)
            return x, m, known, label, weight
        ds = tf.data.Dataset.zip((ds, counter)).map(aug, num_parallel_calls=AUTOTUNE)

    if not training:
        ds = ds.map(lambda x, m, known, extent, label, weight: (x, m, known, label, weight))

    def to_keras(x, m, known, label, weight):
        target = tf.nn.avg_pool2d(m[None], stride, stride, "VALID")[0]  # share of each cell that is lesion
        cell_weight = known * tf.ones(tf.shape(target)[:2])  # the loss is per cell
        return x, {"tumor_probability": label, "lesion_map": target}, {"tumor_probability": weight,
                                                                        "lesion_map": cell_weight}
    return ds.map(to_keras, num_parallel_calls=AUTOTUNE)


def make_lesion_dataset(paths, labels, masks, sources, spec, global_batch_size, training, seed=0,
                        augment_mode="v2", stride=16, balanced=True, synth=None, shares=None, mirror=None,
                        transplant=None, fluid=None):
    """Batches of (image, {label, lesion target}, {class weight, mask known}).

    Sources are drawn equally (or by `shares`) when `balanced` and training (endless then). `synth`: (probability,
    kind) per example (`augment.synthesis_plan`) of painting a synthetic tumor into it while training;
    `mirror`: (tumor extent mask path or "" per example, probability) of `augment.mirror_pair` while training;
    `transplant`: (probability per example, donor images, donor masks: `load_donors`) of setting a real tumor
    into it first (`augment.transplant_tumor`; a transplanted slice is not painted); `fluid`: per example, the
    probability that `augment.bright_fluid` makes it T2-like (FLAIR slices only).
    """
    paths, labels, masks, sources = (np.asarray(a) for a in (paths, labels, masks, sources))
    if not (training and balanced and len(set(sources.tolist())) > 1):
        ds = _lesion_examples(paths, labels, masks, spec, training, seed, augment_mode, stride, synth, mirror,
                              transplant, fluid)
        return ds.batch(global_batch_size).prefetch(AUTOTUNE)
    ds = _draw_sources(sources, seed, lambda m, part_seed: _lesion_examples(
        paths[m], labels[m], masks[m], spec, True, part_seed, augment_mode, stride,
        None if synth is None else (synth[0][m], synth[1][m]),
        None if mirror is None else (np.asarray(mirror[0])[m], mirror[1]),
        None if transplant is None else (np.asarray(transplant[0])[m], *transplant[1:]),
        None if fluid is None else np.asarray(fluid)[m]), shares)
    return ds.batch(global_batch_size).prefetch(AUTOTUNE)

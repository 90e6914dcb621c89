"""tf.data input pipelines that read image files (local or gs://).

Decoding and preprocessing run through `preprocessing.image_bytes_to_input`,
the same function the Beam scorer calls, wrapped in `tf.numpy_function`.
They are deterministic, so their output is cached after the first epoch and
only the cheap, random augmentation runs every epoch.
"""
import numpy as np
import tensorflow as tf

from trainer import augment, preprocessing

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
    """{0: w0, 1: w1} that give both classes the same total weight."""
    labels = np.asarray(labels)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    return {0: len(labels) / (2.0 * max(n_neg, 1)), 1: len(labels) / (2.0 * max(n_pos, 1))}


def make_dataset(paths, labels, spec, global_batch_size, training, seed=0,
                 cache=True, weights=None, augment_mode="v2"):
    """Batches of (image, label[, weight]); augmented and shuffled when training."""
    ds = _examples(paths, labels, spec, training, seed, cache, weights, augment_mode)
    ds = ds.batch(global_batch_size, drop_remainder=False)
    return ds.prefetch(AUTOTUNE)


def make_balanced_dataset(paths, labels, sources, spec, global_batch_size, seed=0,
                          augment_mode="v2"):
    """Endless training batches that draw each source with equal probability.

    Without it the larger collection dominates every batch, and a source's look
    (which here correlates with the label) is the easiest thing to learn. Class
    weights are computed per source, so each source is class-balanced too.
    """
    paths, labels, sources = np.asarray(paths), np.asarray(labels), np.asarray(sources)
    parts = []
    for i, src in enumerate(sorted(set(sources.tolist()))):
        m = sources == src
        parts.append(_examples(paths[m], labels[m], spec, True, seed + 7 * i, True,
                               class_weights(labels[m]), augment_mode).repeat())
    ds = tf.data.Dataset.sample_from_datasets(parts, weights=[1.0 / len(parts)] * len(parts),
                                              seed=seed)
    return ds.batch(global_batch_size, drop_remainder=False).prefetch(AUTOTUNE)


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

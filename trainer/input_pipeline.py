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


def make_dataset(paths, labels, spec, global_batch_size, training, seed=0,
                 cache=True, weights=None):
    """Batches of (image, label[, weight]); augmented and shuffled when training."""
    labels = np.asarray(labels, np.float32)[:, None]
    ds = tf.data.Dataset.from_tensor_slices((list(paths), labels))
    ds = ds.map(_loader(spec), num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        counter = tf.data.Dataset.counter(start=seed * 1_000_003)
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda xy, i: (augment.augment(xy[0], tf.stack([tf.cast(seed, tf.int64), i])), xy[1]),
            num_parallel_calls=AUTOTUNE)
    if weights is not None:
        w = tf.constant([weights[0], weights[1]], tf.float32)
        ds = ds.map(lambda x, y: (x, y, tf.gather(w, tf.cast(y[0], tf.int32))),
                    num_parallel_calls=AUTOTUNE)
    ds = ds.batch(global_batch_size, drop_remainder=False)
    return ds.prefetch(AUTOTUNE)

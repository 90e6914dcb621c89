import numpy as np
import tensorflow as tf

from tests import synth
from trainer import augment, preprocessing


def test_augment_is_seeded_bounded_and_keeps_background_black():
    x = tf.constant(preprocessing.prepare(synth.brain_slice(1, 96).astype(np.float32)))
    a = augment.augment(x, tf.constant([1, 2], tf.int64)).numpy()
    b = augment.augment(x, tf.constant([1, 2], tf.int64)).numpy()
    c = augment.augment(x, tf.constant([1, 3], tf.int64)).numpy()
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0
    corners = [augment.augment(x, tf.constant([7, i], tf.int64)).numpy()[:3, :3].max() for i in range(20)]
    assert np.median(corners) < 0.1  # no additive brightness on the background

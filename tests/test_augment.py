import numpy as np
import tensorflow as tf

from screening_core import preprocessing
from tests import synth
from trainer import augment


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


def test_contrast_modes_change_tissue_contrast_inside_the_head_only():
    x = tf.constant(preprocessing.prepare(synth.brain_slice(2, 96, lesion=True).astype(np.float32)))
    head = x.numpy()[..., 0] > 0.05
    inverted = 0
    for i in range(30):
        c = augment.contrast(x, tf.constant([4, i], tf.int64)).numpy()[..., 0]
        np.testing.assert_array_equal(c[~head], x.numpy()[..., 0][~head])  # background untouched
        assert c[head].min() > 0.05 and c.max() <= 1.0  # head stays head
        inverted += np.corrcoef(c[head], x.numpy()[..., 0][head])[0, 1] < 0
    assert inverted >= 3  # inversions happen (30 % of draws)
    for mode in augment.MODES:
        a = augment.augment(x, tf.constant([1, 2], tf.int64), mode).numpy()
        np.testing.assert_array_equal(a, augment.augment(x, tf.constant([1, 2], tf.int64), mode).numpy())


def test_skull_strip_zooms_to_the_core_and_keeps_the_mask_aligned():
    img = synth.brain_slice(3, 128, lesion=True, quadrant="tr", rim=True).astype(np.float32)
    x = preprocessing.prepare(img, preprocessing.InputSpec(128, 128))
    mask = (preprocessing.project_mask(img, (img >= 245) & (img < 250), preprocessing.InputSpec(128, 128))
            > 0.5).astype(np.float32)[..., None]
    out = augment.skull_strip(tf.concat([x, mask], -1), tf.constant([0, 1], tf.int64)).numpy()
    xs, ms = out[..., 0], out[..., 1]
    assert xs.shape == (128, 128)
    rim_before = (x[..., 0] > 0.95).sum()
    assert (xs > 0.95).sum() < 0.5 * rim_before  # the bright skull rim is gone
    rows, cols = np.flatnonzero((xs > 0).any(axis=1)), np.flatnonzero((xs > 0).any(axis=0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) >= 120  # zoomed to fill the frame again
    assert ms.sum() > 0 and xs[ms > 0.5].mean() > xs[xs > 0.05].mean()  # the mask still sits on the lesion

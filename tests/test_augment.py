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


def test_a_prepared_strip_stretches_the_brain_as_prepare_stretches_a_stripped_slice():
    img = synth.brain_slice(3, 128, lesion=True, quadrant="tr", rim=True).astype(np.float32)
    x = preprocessing.prepare(img, preprocessing.InputSpec(128, 128))
    stripped = augment.skull_strip(tf.constant(x), tf.constant([0, 1], tf.int64)).numpy()
    ours = augment.restretch(tf.constant(stripped)).numpy()[..., 0]
    theirs = preprocessing._finish(stripped[..., 0])[..., 0]
    head = stripped[..., 0] > 0.08  # preprocessing's head level; augment's is 0.05
    assert np.abs(ours[head] - theirs[head]).max() < 0.03  # the heads differ by the pixels in 0.05-0.08
    assert ours[head].max() == 1.0 and np.percentile(ours[head], 1) < 0.12
    assert (ours[stripped[..., 0] <= 0.05] == 0).all()


def _flair_like(size=128):
    """A FLAIR-like slice as prepare() leaves it: head tissue ~0.45, dark ventricles, a bright lesion."""
    yy, xx = np.mgrid[:size, :size] / size
    x = np.zeros((size, size), np.float32)
    head = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.42 ** 2
    x[head] = 0.45 + 0.03 * np.sin(40 * xx[head])  # tissue with some texture
    ventricle = (np.abs(yy - 0.5) < 0.12) & (np.abs(xx - 0.45) < 0.03)
    lesion = (yy - 0.35) ** 2 + (xx - 0.68) ** 2 < 0.07 ** 2
    x[ventricle] = 0.14
    x[lesion] = 0.9
    return x[..., None], head, ventricle, lesion


def test_bright_fluid_turns_flair_fluid_bright_and_leaves_lesion_tissue_and_background():
    x, head, ventricle, lesion = _flair_like()
    for i in range(5):
        t2 = augment.bright_fluid(tf.constant(x), tf.constant([5, i], tf.int64)).numpy()[..., 0]
        assert t2[ventricle].min() > 0.6  # the fluid is now bright, as on T2
        np.testing.assert_allclose(t2[lesion], x[..., 0][lesion], atol=1e-4)  # the lesion (and its mask) hold
        tissue = head & ~ventricle & ~lesion
        assert np.abs(t2[tissue] - x[..., 0][tissue]).max() < 0.01
        np.testing.assert_array_equal(t2[~head], 0.0)  # background stays black
    a = augment.bright_fluid(tf.constant(x), tf.constant([5, 0], tf.int64)).numpy()
    np.testing.assert_array_equal(a, augment.bright_fluid(tf.constant(x), tf.constant([5, 0], tf.int64)).numpy())


def test_fluid_bright_probability_zero_changes_nothing_and_one_always_applies():
    x, _, ventricle, lesion = _flair_like()
    mask = tf.constant(lesion[..., None].astype(np.float32))
    seed = tf.constant([9, 1], tf.int64)
    plain, m0 = augment.augment_with_mask(tf.constant(x), mask, seed, "v2")
    off, m1 = augment.augment_with_mask(tf.constant(x), mask, seed, "v2", fluid_bright=0.0)
    np.testing.assert_array_equal(plain.numpy(), off.numpy())
    np.testing.assert_array_equal(m0.numpy(), m1.numpy())
    # with p = 1 the (geometrically moved) ventricle is bright: the brightest part of the head
    # besides the lesion sits where the mask is not
    on, m2 = augment.augment_with_mask(tf.constant(x), mask, seed, "v2", fluid_bright=1.0)
    np.testing.assert_array_equal(m0.numpy(), m2.numpy())
    assert on.numpy()[m2.numpy() < 0.5].max() > plain.numpy()[m0.numpy() < 0.5].max() + 0.15


def test_bright_spots_are_small_bright_foci_inside_the_brain_and_away_from_the_lesion():
    x, head, ventricle, lesion = _flair_like()
    mask = lesion[..., None].astype(np.float32)
    yy, xx = np.mgrid[:128, :128]
    near = np.zeros_like(lesion)
    for y, x0 in zip(*np.nonzero(lesion), strict=True):
        near |= (np.abs(yy - y) <= 3) & (np.abs(xx - x0) <= 3)
    painted = 0
    for i in range(8):
        s = augment.bright_spots(tf.constant(x), tf.constant(mask), tf.constant([6, i], tf.int64)).numpy()[..., 0]
        changed = np.abs(s - x[..., 0]) > 0.05
        assert changed.any()
        assert not (changed & near).any()  # no spot on or next to the lesion: the mask stays the truth
        np.testing.assert_array_equal(s[~head], 0.0)  # nothing outside the head
        assert s.max() <= 1.0 and (s >= x[..., 0] - 1e-6).all()  # spots only brighten
        assert changed.sum() < 0.05 * head.sum()  # small foci, not a lesion-sized region
        painted += (s[changed] > 0.6).any()
    assert painted >= 6  # bright like a lesion on FLAIR


def test_spots_probability_zero_changes_nothing():
    x, _, _, lesion = _flair_like()
    mask = tf.constant(lesion[..., None].astype(np.float32))
    seed = tf.constant([2, 8], tf.int64)
    a, _ = augment.augment_with_mask(tf.constant(x), mask, seed, "contrast-strip")
    b, _ = augment.augment_with_mask(tf.constant(x), mask, seed, "contrast-strip", spots=0.0)
    c, _ = augment.augment_with_mask(tf.constant(x), mask, seed, "contrast-strip", spots=1.0)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())


def test_synthetic_tumors_are_masked_masses_inside_the_brain_with_the_sequences_look():
    x, head, _, _ = _flair_like()
    brain = x[..., 0]
    kinds = augment.SYNTH_KINDS
    for i in range(6):
        seed = tf.constant([9, i], tf.int64)
        out = {}
        for name in ("bright", "enhancing", "dark"):
            img, mask, ok = augment.synthetic_tumor(tf.constant(x), seed, tf.constant(kinds[name]))
            img, mask = img.numpy()[..., 0], mask.numpy()[..., 0] > 0.5
            assert bool(ok) and 20 <= mask.sum() < 0.5 * head.sum()  # a mass, not the whole brain
            assert not (mask & ~head).any()  # inside the head
            np.testing.assert_array_equal(img[~head], 0.0)  # the background untouched
            changed = np.abs(img - brain) > 0.05
            assert not (changed & ~head).any() and changed.sum() >= 0.5 * mask.sum()
            out[name] = img, mask
        med = np.median(brain[head])
        (b, m), (d, dm) = out["bright"], out["dark"]
        assert b[m].mean() > 1.25 * med and d[dm].mean() < 0.85 * med  # hyper- and hypointense
        same = augment.synthetic_tumor(tf.constant(x), seed, tf.constant(kinds["bright"]))[0].numpy()[..., 0]
        np.testing.assert_array_equal(same, b)  # deterministic for its seed
    rings = 0
    for i in range(20):  # enhancing: a bright rim round a dark necrotic core in most draws
        img, mask, _ = augment.synthetic_tumor(tf.constant(x), tf.constant([4, i], tf.int64),
                                               tf.constant(kinds["enhancing"]))
        img, mask = img.numpy()[..., 0], mask.numpy()[..., 0] > 0.5
        rings += img[mask].max() > 1.2 * np.median(brain[head]) and img[mask].min() < 0.7 * np.median(brain[head])
    assert 5 <= rings <= 19


def test_a_slice_without_room_for_a_tumor_is_left_alone():
    x = np.zeros((128, 128, 1), np.float32)
    x[60:68, 60:68] = 0.5  # a few head pixels: no brain to hold a mass
    img, mask, ok = augment.synthetic_tumor(tf.constant(x), tf.constant([1, 1], tf.int64), tf.constant(0))
    assert not bool(ok) and mask.numpy().sum() == 0
    np.testing.assert_array_equal(img.numpy(), x)


def test_a_transplanted_tumor_is_the_donors_own_at_its_place_scaled_to_the_targets_brain():
    donor, head, _, lesion = _flair_like()  # lesion 0.9 in tissue 0.45: twice the brain
    target = np.where(head, 0.3, 0.0).astype(np.float32)[..., None]  # a darker brain, no lesion
    img, mask, ok = augment.transplant_tumor(tf.constant(target), tf.constant(donor),
                                             tf.constant(lesion[..., None].astype(np.float32)))
    img, mask = img.numpy()[..., 0], mask.numpy()[..., 0] > 0.5
    # the donor's mask at the donor's place (where it lies in the target's brain: >= 90 % of it)
    assert bool(ok) and not (mask & ~lesion).any() and mask.sum() >= 0.9 * lesion.sum()
    core = lesion & np.roll(lesion, 3, 0) & np.roll(lesion, -3, 0) & np.roll(lesion, 3, 1) & np.roll(lesion, -3, 1)
    np.testing.assert_allclose(img[core], 0.6, atol=0.03)  # twice the target's brain, as in the donor
    grown = np.lib.stride_tricks.sliding_window_view(np.pad(lesion, 3), (7, 7)).any(axis=(2, 3))
    np.testing.assert_array_equal(img[~grown], target[..., 0][~grown])  # untouched beyond the feathered border
    # a tumor that would lie outside the target's brain is not set in
    small = np.where((np.mgrid[:128, :128][0] - 64) ** 2 + (np.mgrid[:128, :128][1] - 64) ** 2 < 20 ** 2, 0.3, 0.0).astype(np.float32)
    img, mask, ok = augment.transplant_tumor(tf.constant(small[..., None]), tf.constant(donor),
                                             tf.constant(lesion[..., None].astype(np.float32)))
    assert not bool(ok) and mask.numpy().sum() == 0
    np.testing.assert_array_equal(img.numpy()[..., 0], small)


def test_transplanted_training_slices_are_masked_tumor_slices_cut_from_donors_of_the_same_look():
    from trainer import lesion_train
    donor, head, _, lesion = _flair_like()
    n = 6
    x = np.stack([np.where(head, 0.4, 0.0)] * n).astype(np.float16)
    x[0] = donor[..., 0]
    masks = np.zeros((n, 128, 128), np.uint8)
    masks[0] = lesion * 255
    arrays = {"x": x, "mask": masks, "pixel_weight": np.ones(n, np.float32)}
    labels = np.array([1, 0, 0, 0, 0, 0])
    seq = np.array(["flair", "flair", "t2", "", "t1-post", "flair"])
    donors = lesion_train.transplant_donors(seq, labels, arrays, np.arange(n))
    k = augment.SYNTH_KINDS
    assert list(donors[k["bright"]]) == list(donors[k["bright-or-enhancing"]]) == [0]
    assert not len(donors[k["enhancing"]]) and not len(donors[k["dark"]])
    assert not len(lesion_train.transplant_donors(seq, labels, arrays, np.arange(1, n))[k["bright"]])  # train only
    kind = np.array([augment.kind_of_sequence(q) for q in seq])
    p = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0], np.float32)
    ds = lesion_train.make_train_dataset(arrays, np.arange(1, n), labels, None, np.ones(n), 64, 40, 3, "v2",
                                         synth_kind=kind, transplant_p=p, donors=donors)
    images, targets = next(iter(ds))
    score, lesion_map = targets["tumor_probability"].numpy(), targets["lesion_map"].numpy()
    got = lesion_map[..., 0].reshape(40, -1).sum(axis=1) > 0
    # FLAIR, T2 and unknown-sequence slices got the FLAIR donor's tumor and train as tumor slices; the
    # T1 post-contrast slice has no donor of its look and stays a tumor-free slice
    assert got.any() and not got.all()
    np.testing.assert_array_equal(score[:, 0] == 1.0, got)
    assert images.shape == (40, 128, 128, 1)


def test_non_tumor_lesion_pixels_train_as_heavier_negatives_unless_a_painted_tumor_covers_them():
    from trainer import lesion_train
    x, head, _, _ = _flair_like()
    n = 4
    mimic = np.zeros((n, 128, 128), np.uint8)
    mimic[1:, 60:68, 40:48] = 255  # a white-matter hyperintensity on slices 1-3; slice 0 has none
    arrays = {"x": np.stack([x[..., 0]] * n).astype(np.float16), "mask": np.zeros((n, 128, 128), np.uint8),
              "mimic": mimic, "pixel_weight": np.ones(n, np.float32)}
    labels = np.zeros(n)
    probs = np.full(n, 1 / n)
    for weight, paint in ((6.0, None), (1.0, None), (6.0, np.ones(n, np.float32))):
        ds = lesion_train.make_train_dataset(arrays, np.arange(n), labels, probs, np.ones(n), 64, 48, 5, "v2",
                                             synth_p=paint, synth_kind=None if paint is None else np.zeros(n, np.int32),
                                             mimic_weight=weight)
        _, targets = next(iter(ds))
        m, w = targets["lesion_map"].numpy()[..., 0], targets["lesion_map"].numpy()[..., 1]
        heavy = (w == weight).reshape(48, -1).sum(axis=1) if weight > 1 else np.zeros(48)
        assert set(np.unique(w)) <= {1.0, weight}
        if paint is None:
            assert not m.any()  # a mimic is no tumor
            if weight > 1:
                assert 4 <= np.median(heavy) <= 40  # the 8x8-pixel lesion: a few map cells, moved with the slice
        else:
            assert (w[m > 0] == 1.0).all()  # a painted tumor over the lesion is a tumor pixel, at tumor weight


def test_synthesis_plan_paints_only_pixel_known_negatives_above_the_skull_base():
    from trainer.augment import synthesis_plan
    seq = np.array(["flair", "t1-post", "t1", "", "t2", "flair", "flair"])
    labels = np.array([0, 0, 0, 0, 0, 1, 0])
    weight = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    level = np.array([0.5, 0.9, 0.4, 0.6, 0.1, 0.5, 0.5])
    p, kind = synthesis_plan(seq, labels, weight, level, 0.3)
    np.testing.assert_allclose(p, [0.3, 0.3, 0.3, 0.3, 0.0, 0.0, 0.0])  # not below 0.3, not tumors, not unknown pixels
    k = augment.SYNTH_KINDS
    assert list(kind[:4]) == [k["bright"], k["enhancing"], k["dark"], k["bright-or-enhancing"]]
    p, _ = synthesis_plan(seq, labels, weight, level, 0.3, kinds=("bright", "enhancing", "bright-or-enhancing"))
    np.testing.assert_allclose(p, [0.3, 0.3, 0.0, 0.3, 0.0, 0.0, 0.0])  # T1 without contrast: no dark paint
    planes = np.array(["flair", "flair-coronal", "flair-sagittal", "", "t2"])
    p, _ = synthesis_plan(planes, np.zeros(5), np.ones(5), np.ones(5), 0.5, planes=("axial",))
    np.testing.assert_allclose(p, [0.5, 0.0, 0.0, 0.5, 0.5])  # --transplant-axial-only: no axial tumor in other planes


def test_a_higher_paint_contrast_gives_the_same_mass_brighter():
    from trainer import lesion_train
    x, head, _, _ = _flair_like()
    med = np.median(x[..., 0][head])
    seed = tf.constant([9, 2], tf.int64)
    for name, gain in (("bright", 0.2), ("enhancing", 0.05)):  # enhancing: only its rim, not the core, moves
        kind = tf.constant(augment.SYNTH_KINDS[name])
        low, m_low, _ = augment.synthetic_tumor(tf.constant(x), seed, kind)
        high, m_high, _ = augment.synthetic_tumor(tf.constant(x), seed, kind, contrast=1.8)
        m = m_low.numpy()[..., 0] > 0.5
        np.testing.assert_array_equal(m_low.numpy(), m_high.numpy())  # the same mass, only its intensity moves
        assert high.numpy()[..., 0][m].mean() > low.numpy()[..., 0][m].mean() + gain * med
    assert lesion_train.SYNTH_LOOKS == tuple(augment.SYNTH_KINDS)  # the flag's TensorFlow-free copy


def test_a_one_sided_tumor_is_mirrored_away_or_onto_both_sides_and_a_midline_one_is_left_alone():
    x, head, _, lesion = _flair_like()  # the lesion sits right of the centre column
    mask = lesion[..., None].astype(np.float32)
    seen = set()
    for i in range(12):
        img, m, label, ok = augment.mirror_pair(tf.constant(x), tf.constant(mask), tf.constant(mask),
                                                tf.constant([3, i], tf.int64))
        img, m = img.numpy()[..., 0], m.numpy()[..., 0]
        assert bool(ok)
        mirrored_lesion = lesion[:, ::-1]
        if float(label) == 0.0:  # the healthy half over the tumor half: no lesion anywhere, no mask
            assert img.max() < 0.6 and m.sum() == 0
            np.testing.assert_array_equal(img[:, :64], x[..., 0][:, :64])  # the healthy half kept
        else:  # the tumor half over the healthy half: the lesion twice, its mask with it
            assert (img[lesion] == 0.9).all() and (img[mirrored_lesion] == 0.9).all()
            assert (m > 0.5).sum() == 2 * lesion.sum()
        seen.add(float(label))
    assert seen == {0.0, 1.0}, "both ways are drawn, so a mirror-symmetric head says nothing of the label"
    midline = np.zeros_like(mask)
    midline[40:50, 60:70] = 1.0  # a tumor across the centre column has no healthy half
    img, m, label, ok = augment.mirror_pair(tf.constant(x), tf.constant(mask), tf.constant(midline),
                                            tf.constant([3, 0], tf.int64))
    assert not bool(ok) and float(label) == 1.0
    np.testing.assert_array_equal(img.numpy(), x)
    lopsided = x.copy()
    lopsided[:, :40] = 0.0  # a head that is not mirror-symmetric (a sagittal slice's outline)
    assert not bool(augment.mirror_pair(tf.constant(lopsided), tf.constant(mask), tf.constant(mask),
                                        tf.constant([3, 0], tf.int64))[3])

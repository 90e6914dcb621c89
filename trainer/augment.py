"""Training-time augmentation, run in tf.data (not in the model).

Kept out of the model so the exported artifact is a plain inference graph
that loads in safe mode and scores identically in Beam. The augmentations
attack the source confound: scanners and collections differ in contrast,
gamma, sharpness, noise, JPEG quality and resolution, so each is varied.

Grad-CAM on the first model (v1) showed heat on image corners and the neck
region: cues of the source collection (plane and sequence), not of tumors.
Hence the strong framing changes (zoom 0.8-1.25, shifts of 12%) and random
erasing of small boxes anywhere, so no fixed region can carry the label.
Photometric changes are multiplicative (a black background stays black, as
in validation images), which keeps BatchNorm statistics consistent.

`contrast` mode (v3) adds changes of *tissue contrast*, not only brightness:
in the public brain-MRI collection tumors are mostly T1 contrast-enhanced and
negatives mostly T2/FLAIR-looking, so the sequence's look predicts the label.
A random monotonic curve, a random non-monotonic curve, contrast inversion
(T1 <-> T2-like grey/white and fluid contrast) and a smooth bias field are
applied inside the head only, so the one cue that survives every variant is a
lesion that differs from its surroundings.
"""
import math

import numpy as np
import tensorflow as tf

from screening_core import looks
from trainer.config import AUGMENT_MODES


def _rotate_zoom(image, seed):
    """Random rotation (+-12 deg), zoom (0.8-1.25) and shift (+-12%) via one affine warp."""
    s = tf.random.stateless_uniform([4], seed=seed, minval=-1.0, maxval=1.0)
    angle = s[0] * 12.0 * math.pi / 180.0
    zoom = tf.exp(0.223 * s[1])
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    cx, cy = w / 2.0, h / 2.0
    tx = cx - cos * cx + sin * cy + s[2] * 0.12 * w
    ty = cy - sin * cx - cos * cy + s[3] * 0.12 * h
    transform = tf.stack([cos, -sin, tx, sin, cos, ty, 0.0, 0.0])[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]


def _blur(image):
    k = tf.constant([1.0, 2.0, 1.0]) / 4.0
    kernel = tf.reshape(k[:, None] * k[None, :], [3, 3, 1, 1])
    return tf.nn.conv2d(image[None], kernel, 1, "SAME")[0]


def _resolution(image, seed):
    size = tf.shape(image)[:2]
    factor = tf.random.stateless_uniform([], seed=seed, minval=0.4, maxval=1.0)
    small = tf.cast(tf.cast(size, tf.float32) * factor, tf.int32)
    return tf.image.resize(tf.image.resize(image, small, antialias=True), size)


def _erase(image, seed, max_side=0.3):
    """Zero one random box of up to max_side x max_side of the image."""
    s = tf.random.stateless_uniform([4], seed=seed)
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    bh, bw = s[0] * max_side * h, s[1] * max_side * w
    y0, x0 = s[2] * (h - bh), s[3] * (w - bw)
    rows = tf.range(h)[:, None, None]
    cols = tf.range(w)[None, :, None]
    inside = (rows >= y0) & (rows < y0 + bh) & (cols >= x0) & (cols < x0 + bw)
    return tf.where(inside, 0.0, image)


def _maybe(apply, fn, image):
    """fn(image) when `apply`, else image; only the chosen branch is computed."""
    return tf.cond(apply, fn, lambda: image)


_HEAD = 0.05  # prepare() puts head pixels in [0.1, 1] and the background at 0


def _lut(image, ys):
    """Piecewise-linear intensity curve through (linspace(0, 1, K), ys), head pixels only."""
    k = tf.cast(tf.shape(ys)[0] - 1, tf.float32)
    pos = tf.clip_by_value((image - 0.1) / 0.9, 0.0, 1.0) * k
    i = tf.clip_by_value(tf.floor(pos), 0.0, k - 1.0)
    frac = pos - i
    i = tf.cast(i, tf.int32)
    y = tf.gather(ys, i) * (1.0 - frac) + tf.gather(ys, i + 1) * frac
    return tf.where(image > _HEAD, 0.1 + 0.9 * y, image)


def _monotonic_curve(image, seed, knots=6):
    steps = tf.random.stateless_uniform([knots - 1], seed=seed, minval=0.05, maxval=1.0)
    ys = tf.concat([[0.0], tf.cumsum(steps)], 0)
    return _lut(image, ys / ys[-1])


def _random_curve(image, seed, knots=5):
    return _lut(image, tf.random.stateless_uniform([knots], seed=seed))


def _invert(image):
    return tf.where(image > _HEAD, 1.1 - tf.clip_by_value(image, 0.1, 1.0), image)


def _bias_field(image, seed, strength=0.35):
    """Multiply the head by a smooth random field exp(quadratic(x, y)), as coil shading does."""
    c = tf.random.stateless_uniform([5], seed=seed, minval=-1.0, maxval=1.0) * strength
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    yy = tf.linspace(-1.0, 1.0, h)[:, None, None]
    xx = tf.linspace(-1.0, 1.0, w)[None, :, None]
    field = tf.exp(c[0] * xx + c[1] * yy + c[2] * xx * yy + c[3] * xx * xx + c[4] * yy * yy)
    return tf.where(image > _HEAD, tf.clip_by_value(image * field, 0.1, 1.0), image)


def _fill(mask):
    """Fill a (H, W, 1) 0/1 mask between its outermost pixels along rows and columns (holes closed)."""
    def span(m, axis):
        fwd = tf.math.cumsum(m, axis=axis) > 0
        bwd = tf.math.cumsum(m, axis=axis, reverse=True) > 0
        return tf.cast(fwd & bwd, tf.float32)
    return span(mask, 0) * span(mask, 1)


def skull_strip(stack, seed):
    """Imitate a skull-stripped scan: keep an eroded core of the head, crop to it, resize.

    Research collections (BraTS and others) are often skull-stripped and cropped
    to the brain; a model that has only seen whole heads reads that as a new
    kind of image. The head (filled) is eroded by 4-14 px of 128, everything
    outside is zeroed, and the result is zoomed to the same square framing
    `prepare` gives, on every channel of `stack` (image, and lesion mask if
    present), so a mask stays aligned.
    """
    h, w = tf.shape(stack)[0], tf.shape(stack)[1]
    head = _fill(tf.cast(stack[..., :1] > _HEAD, tf.float32))
    steps = tf.random.stateless_uniform([], seed, 4, 15, dtype=tf.int32) * h // 128
    core = tf.while_loop(lambda i, m: i < steps,
                         lambda i, m: (i + 1, -tf.nn.max_pool2d(-m[None], 3, 1, "SAME")[0]),
                         (tf.constant(0), head))[1]
    rows = tf.where(tf.reduce_any(core[..., 0] > 0, axis=1))[:, 0]
    cols = tf.where(tf.reduce_any(core[..., 0] > 0, axis=0))[:, 0]

    def crop():
        r0, r1 = tf.cast(rows[0], tf.float32), tf.cast(rows[-1] + 1, tf.float32)
        c0, c1 = tf.cast(cols[0], tf.float32), tf.cast(cols[-1] + 1, tf.float32)
        side = tf.maximum(r1 - r0, c1 - c0)
        cy, cx = (r0 + r1) / 2.0, (c0 + c1) / 2.0
        hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
        box = tf.stack([(cy - side / 2) / hf, (cx - side / 2) / wf, (cy + side / 2) / hf, (cx + side / 2) / wf])
        out = tf.image.crop_and_resize((stack * core)[None], box[None], [0], tf.stack([h, w]),
                                       extrapolation_value=0.0)[0]
        return tf.where(out[..., :1] > 0.02, out, tf.concat([tf.zeros_like(out[..., :1]), out[..., 1:]], -1))
    return tf.cond(tf.size(rows) > h // 8, crop, lambda: stack)


def contrast(image, seed):
    """Tissue-contrast changes inside the head; the background stays 0."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    u = tf.random.stateless_uniform([4], seed=seeds[0])
    image = _maybe(u[0] < 0.5, lambda: _monotonic_curve(image, seeds[1]), image)
    image = _maybe(u[1] < 0.15, lambda: _random_curve(image, seeds[2]), image)
    image = _maybe(u[2] < 0.3, lambda: _invert(image), image)
    image = _maybe(u[3] < 0.4, lambda: _bias_field(image, seeds[3]), image)
    return image


def _core(image, rim):
    """The head (holes filled) eroded by `rim` px of 128: the brain, without scalp and skull."""
    head = _fill(tf.cast(image > _HEAD, tf.float32))
    k = 2 * (rim * (image.shape[0] or 128) // 128) + 1  # a static window: max_pool2d wants a Python int
    return -tf.nn.max_pool2d(-head[None], k, 1, "SAME")[0]


def _median_inside(image, core, empty):
    """The median intensity where `core` holds (the brain's tissue), `empty` when it holds nowhere."""
    inside = tf.sort(tf.boolean_mask(image, core > 0.5))
    return tf.cond(tf.size(inside) > 0, lambda: inside[tf.size(inside) // 2], lambda: tf.constant(empty))


def bright_fluid(image, seed, rim=6):
    """Make a FLAIR slice T2-like: the fluid inside the brain (dark on FLAIR) turns bright.

    Why: no training collection has enough T2 slices with a tumor (50, of two children), and on T2
    the lesion-first map reads ventricles and posterior-fossa CSF as lesion (v8's highest tumor-free
    scores on brats-sample). FLAIR is T2-weighted with the fluid signal nulled; giving the fluid its
    T2 brightness back yields T2-like slices whose lesion masks still hold, so bright ventricles and
    sulci become negatives at every level and the tumor stays a positive. Pixels within `rim` of
    128 of the head's edge (scalp, skull) are left as they are; the fluid cut-off and its new
    brightness are drawn per slice.
    """
    s = tf.random.stateless_uniform([2], seed=seed)
    core = _core(image, rim)
    cut = _median_inside(image, core, 0.0) * (0.45 + 0.15 * s[0])  # FLAIR fluid sits at about half the brain's median or below
    level = 0.8 + 0.2 * s[1]
    t2 = tf.clip_by_value(level - 1.5 * (image - 0.1), 0.1, 1.0)  # darkest on FLAIR -> brightest, texture kept
    fluid = tf.sigmoid((cut - image) / 0.02) * core
    return image + fluid * (t2 - image)


def bright_spots(image, mask, seed, max_spots=8, rim=16):
    """Paint 2-`max_spots` small bright ovoid spots into the brain, away from the lesion mask.

    Why: the lesion-first map reads any bright focus on FLAIR/T2 as tumor, and tumor-free scans with
    white-matter hyperintensities (multiple sclerosis, small-vessel disease) are exactly where a
    screening aid must stay quiet; the few such slices in our collections (brain-mri's tumor-free
    slices v7 and v8 flagged) are all we have. The spots are 2-7 px across at 128 px (3-10 mm on an
    adult head), as bright as a lesion, blurred at the edge, and their pixels stay negatives: a
    tumor is larger and has mass effect; a cluster of small round foci is not one. Spots keep a
    margin of 3 px from the (mask's) lesion, and `rim` px of 128 from the head's edge.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    h, w = image.shape[0] or 128, image.shape[1] or 128
    core = _core(image, rim)
    lesion = tf.cast(mask > 0.5, tf.float32)[None]
    margin = tf.nn.max_pool2d(lesion, 2 * (3 * h // 128) + 1, 1, "SAME")[0]  # no spot pixel in here
    centres_off = tf.nn.max_pool2d(lesion, 2 * (9 * h // 128) + 1, 1, "SAME")[0]  # nor a spot cut in half
    allowed = tf.reshape(core * (1.0 - centres_off), [1, -1])
    n = tf.random.stateless_uniform([], seeds[0], 2, max_spots + 1, dtype=tf.int32)
    logits = tf.math.log(allowed + 1e-12) + tf.where(tf.reduce_sum(allowed) > 0, 0.0, 1e6)
    where = tf.random.stateless_categorical(logits, max_spots, seeds[1])[0]
    cy = tf.cast(where // w, tf.float32)
    cx = tf.cast(where % w, tf.float32)
    radius = tf.random.stateless_uniform([max_spots, 2], seeds[2], 1.0, 3.5) * (h / 128)
    yy = tf.range(h, dtype=tf.float32)[:, None, None]
    xx = tf.range(w, dtype=tf.float32)[None, :, None]
    blobs = tf.exp(-((yy - cy) / radius[:, 0]) ** 2 - ((xx - cx) / radius[:, 1]) ** 2)
    blobs *= tf.cast(tf.range(max_spots) < n, tf.float32)
    field = tf.clip_by_value(tf.reduce_max(blobs, -1, keepdims=True), 0.0, 1.0) * core * (1.0 - margin)
    bright = tf.clip_by_value(_median_inside(image, core, 0.5) * tf.random.stateless_uniform([], seeds[3], 1.5, 2.1), 0.6, 1.0)
    usable = tf.reduce_sum(allowed) > 0
    return tf.where(usable, image + field * tf.maximum(bright - image, 0.0), image)


SYNTH_KINDS = {"bright": 0, "enhancing": 1, "dark": 2, "bright-or-enhancing": 3}


def _smooth_noise(seed, h, w, cells):
    """A smooth random field of about unit spread: `cells` x `cells` normals, upsampled bicubically."""
    coarse = tf.random.stateless_normal([1, cells, cells, 1], seed)
    return tf.image.resize(coarse, [h, w], method="bicubic")[0]


def synthetic_tumor(image, seed, kind, rim=12, contrast=1.35):
    """Paint a tumor-like mass into a tumor-free slice; returns (image, mask, painted).

    Why: in every collection the tumor-free slices come from other levels or another source than
    the tumor slices, and the lesion map learns where tumors were rather than what they look like
    (v9 misses large ring-enhancing T1c tumors both members never saw, and reads posterior-fossa
    CSF on T2 as lesion). Synthetic lesions in real tumor-free tissue, which then carry a pixel mask,
    put a tumor at every level, in every sequence and on the negatives' own source; tumors painted
    this way trained segmenters that transfer to real ones (Hu et al., "Label-free liver tumor
    segmentation", CVPR 2023). `kind` (SYNTH_KINDS) chooses the look the slice's sequence gives a
    tumor: bright (FLAIR/T2: hyperintense, textured), enhancing (T1 with contrast: a bright rim
    around a dark necrotic core, or a solid enhancing mass, in a hypointense oedema halo), dark
    (T1 without contrast: hypointense), or bright-or-enhancing (sequence unknown). The mass is
    6-18 px of 128 in semi-axis (about 20-60 mm across on an adult head), an ellipse with a
    noise-perturbed border, inside the brain (`rim` px of 128 from the head's edge); its intensities
    are drawn relative to the brain's median, so they hold on any contrast: a bright mass (and an
    enhancing rim) starts at `contrast` times the median, which grey matter on FLAIR and T2 nearly reaches
    at the default; a higher one keeps the paint brighter than any normal tissue. `painted` is False
    (image and an empty mask returned) when the slice has too little brain to hold one.
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)
    h, w = image.shape[0] or 128, image.shape[1] or 128
    core = _core(image, rim)
    inner = _core(image, rim + 10)  # centres far enough inside for most of the mass to be brain
    u = tf.random.stateless_uniform([10], seeds[0])
    allowed = tf.reshape(inner, [1, -1])
    usable = tf.reduce_sum(allowed) > 20
    logits = tf.math.log(allowed + 1e-12) + tf.where(usable, 0.0, 1e6)
    where = tf.random.stateless_categorical(logits, 1, seeds[1])[0, 0]
    cy, cx = tf.cast(where // w, tf.float32), tf.cast(where % w, tf.float32)
    r = (6.0 + 12.0 * u[0]) * (h / 128)
    aspect = 0.7 + 0.6 * u[1]
    ry, rx = r * tf.sqrt(aspect), r / tf.sqrt(aspect)
    angle = u[2] * math.pi
    yy = tf.range(h, dtype=tf.float32)[:, None, None] - cy
    xx = tf.range(w, dtype=tf.float32)[None, :, None] - cx
    a = (tf.cos(angle) * yy + tf.sin(angle) * xx) / ry
    b = (-tf.sin(angle) * yy + tf.cos(angle) * xx) / rx
    d0, wobble = tf.sqrt(a * a + b * b), _smooth_noise(seeds[2], h, w, 6)
    d = d0 + 0.18 * wobble  # an irregular border
    edge = 1.5 / r  # about 1.5 px of soft border
    body = tf.sigmoid((1.0 - d) / edge) * core
    texture = 1.0 + 0.12 * _smooth_noise(seeds[3], h, w, 24)
    med = _median_inside(image, core, 0.5)

    def towards(img, weight, value):
        return img + weight * (tf.clip_by_value(value, 0.1, 1.0) - img)

    bright = towards(image, body, med * (contrast + 0.55 * u[3]) * texture)
    halo = (tf.sigmoid((1.45 - d) / edge) * core - body) * (0.4 + 0.4 * u[4])
    inner_r = tf.where(u[5] < 0.6, 0.45 + 0.3 * u[6], 0.0)  # 60 %: ring enhancing; else solid
    necrosis = tf.sigmoid((inner_r - d0 - 0.06 * wobble) / edge) * core * tf.cast(inner_r > 0, tf.float32)
    enhancing = towards(image, halo, med * (0.75 + 0.15 * u[7]))
    enhancing = towards(enhancing, body - necrosis, med * (contrast + 0.15 + 0.7 * u[8]) * texture)
    enhancing = towards(enhancing, necrosis, med * (0.3 + 0.3 * u[9]) * texture)
    dark = towards(image, body, med * (0.45 + 0.3 * u[9]) * texture)
    k = tf.where(tf.equal(kind, 3), tf.where(u[7] < 0.5, 0, 1), tf.cast(kind, tf.int32))
    painted = tf.stack([bright, enhancing, dark])[k]
    mask = tf.cast(body > 0.5, tf.float32)
    ok = usable & (tf.reduce_sum(mask) >= 20)
    return tf.where(ok, painted, image), tf.where(ok, mask, tf.zeros_like(mask)), ok


def transplant_tumor(image, donor, donor_mask, rim=12, inside=0.9, margin=3):
    """Set a real tumor, cut with its mask from a donor slice, into a tumor-free slice; (image, mask, ok).

    Why: a lesion map learns where tumors were as well as what they look like: on the held-out LGG site's
    FLAIR tumors set into tumor-free slices, v13 found 93-100 % at mid levels and 4-58 % at the bottom and
    top (trainer/stress.py), the levels where no collection shows a tumor. Copy-paste of real lesions
    (TumorCP, Yang et al., MICCAI 2021) puts real tumor texture and shape at those levels, where
    `synthetic_tumor` puts a drawn one. The tumor stays at the donor's place (both slices are head-centred
    on the same canvas) and must lie `inside` within the target's brain (the head eroded by `rim` px of
    128); its intensities are the donor's relative to the donor's brain median (tissue beyond `margin` px
    of the tumor), times the target's; its border is feathered over about 2 px. `ok` is False (image and an
    empty mask returned) where the tumor does not fit or either slice has too little brain."""
    core = _core(image, rim)
    dm = tf.cast(donor_mask > 0.5, tf.float32)
    tissue = _core(donor, rim) * (1.0 - tf.nn.max_pool2d(dm[None], 2 * margin + 1, 1, "SAME")[0])
    area = tf.reduce_sum(dm)
    ok = ((area >= 20) & (tf.reduce_sum(dm * core) >= inside * area)
          & (tf.reduce_sum(core) >= 50) & (tf.reduce_sum(tissue) >= 50))
    tumor = tf.clip_by_value(donor / tf.maximum(_median_inside(donor, tissue, 1.0), 1e-3)
                             * _median_inside(image, core, 0.5), 0.1, 1.0)
    k = tf.constant([0.0545, 0.2442, 0.4026, 0.2442, 0.0545])  # a 5-tap Gaussian, sigma 1 px
    w = tf.nn.conv2d(tf.nn.conv2d(dm[None], tf.reshape(k, [5, 1, 1, 1]), 1, "SAME"),
                     tf.reshape(k, [1, 5, 1, 1]), 1, "SAME")[0] * core
    out = image * (1.0 - w) + tumor * w
    mask = dm * core
    return tf.where(ok, out, image), tf.where(ok, mask, tf.zeros_like(mask)), ok


def maybe_transplant_tumor(image, mask, donor, donor_mask, seed, p):
    """`transplant_tumor` with probability `p`, drawn statelessly from `seed`: (image, mask, transplanted)."""
    t = tf.random.experimental.stateless_fold_in(seed, 49979687)
    return tf.cond(tf.random.stateless_uniform([], t) < p,
                   lambda: transplant_tumor(image, donor, donor_mask),
                   lambda: (image, mask, tf.constant(False)))


def maybe_synthetic_tumor(image, mask, seed, p, kind, contrast=1.35):
    """`synthetic_tumor` with probability `p`, drawn statelessly from `seed`: (image, mask, painted).

    The one draw both trainers (the lesion U-Net and the classifier's lesion head) make, so a slice
    gets the same painted tumor, or none, from the same seed in either."""
    t = tf.random.experimental.stateless_fold_in(seed, 32452843)
    return tf.cond(tf.random.stateless_uniform([], t) < p,
                   lambda: synthetic_tumor(image, tf.random.experimental.stateless_fold_in(t, 1), kind,
                                           contrast=contrast),
                   lambda: (image, mask, tf.constant(False)))


def mirror_pair(image, mask, extent, seed, margin=4, min_symmetry=0.85):
    """Turn a tumor slice whose tumor lies in one half of the head into a tumor-free slice or a two-sided one.

    Why: in every collection the tumor-free slices come from other levels or another source than the
    tumor slices, so a slice classifier learns level and source. The healthy half of a tumor slice,
    mirrored over its tumor half, is a tumor-free slice at the tumor's own level, in its sequence, on
    its source and scanner: the counterfactual no collection gives. Half of the draws go the other
    way (the tumor half mirrored over the healthy half: a tumor on both sides, its mask mirrored
    with it), so a perfectly symmetric head says nothing of the label and only the lesion does.
    `extent` is the tumor's mask at input size (drawn on any sequence of the slice: it marks where
    the tumor is, whether or not this sequence shows it); it must stay `margin` px of 128 off the
    head's centre column, and the head's outline must be mirror-symmetric (IoU >= `min_symmetry`:
    axial and coronal slices, not sagittal). Returns (image, mask, label, ok); `ok` False leaves
    the slice as it was.
    """
    w = image.shape[1] or 128
    m = margin * w // 128
    cols = tf.reduce_max(tf.cast(extent[..., 0] > 0.5, tf.float32), axis=0)  # (w,) columns the tumor touches
    x = tf.range(w)
    left = tf.reduce_all((cols < 0.5) | (x < w // 2 - m))
    right = tf.reduce_all((cols < 0.5) | (x >= w // 2 + m))
    head = _fill(tf.cast(image > _HEAD, tf.float32))
    mirrored_head = tf.reverse(head, [1])
    iou = tf.reduce_sum(head * mirrored_head) / tf.maximum(tf.reduce_sum(tf.maximum(head, mirrored_head)), 1.0)
    ok = (tf.reduce_sum(cols) > 0) & (left | right) & (iou >= min_symmetry)
    tumor_half = tf.reshape(tf.where(left, x < w // 2, x >= w // 2), [1, w, 1])
    flipped, flipped_mask = tf.reverse(image, [1]), tf.reverse(mask, [1])
    erase = tf.random.stateless_uniform([], seed) < 0.5
    out = tf.where(erase, tf.where(tumor_half, flipped, image), tf.where(tumor_half, image, flipped))
    out_mask = tf.where(erase, tf.zeros_like(mask), tf.where(tumor_half, mask, flipped_mask))
    label = tf.where(erase, 0.0, 1.0)
    return tf.where(ok, out, image), tf.where(ok, out_mask, mask), tf.where(ok, label, 1.0), ok


def maybe_mirror_pair(image, mask, extent, seed, p):
    """`mirror_pair` with probability `p`, drawn statelessly from `seed`: (image, mask, label, mirrored)."""
    t = tf.random.experimental.stateless_fold_in(seed, 49979687)
    return tf.cond(tf.random.stateless_uniform([], t) < p,
                   lambda: mirror_pair(image, mask, extent, tf.random.experimental.stateless_fold_in(t, 1)),
                   lambda: (image, mask, tf.constant(1.0), tf.constant(False)))


_KIND_OF_LOOK = {"flair": "bright", "t2": "bright", "t1ce": "enhancing", "t1": "dark"}


def kind_of_sequence(sequence):
    """The SYNTH_KINDS code of the tumor look a sequence folder gives (unknown: bright or enhancing).

    The look is the one its words name (`looks.look_of`: `t1-post` T1ce, `t1-pre` T1), so a folder that names
    its plane too (the healthy planes' `flair-coronal`, `t1-sagittal`) keeps it: taken for unknown, T1 slices
    were given FLAIR tumors to learn as tumors (docs/model_v4_notes.md row TPF)."""
    return SYNTH_KINDS[_KIND_OF_LOOK.get(looks.look_of(sequence or ""), "bright-or-enhancing")]


def synthesis_plan(sequences, labels, pixel_weight, level, p, min_level=0.3, kinds=None, planes=None):
    """(probability, kind) per slice for `augment.synthetic_tumor`.

    Only tumor-free slices whose every pixel is a known negative (pixel weight 1) are painted, so
    the painted mask is the whole truth of the slice, and only from `min_level` up: below it the
    slice is mostly face, orbits and skull base, where a mass painted into the 'head' lands outside
    the brain. The kind follows the sequence folder: FLAIR/T2 bright, T1 with contrast enhancing,
    T1 without dark, unknown (brain-mri) bright or enhancing. `kinds` (SYNTH_KINDS names) keeps painting to
    the slices whose look gives one of them; `planes` to the slices whose folder names one of them
    (`looks.plane_of`): an axial donor's tumor set into a sagittal or coronal head lies where no tumor
    would show that way.
    """
    sequences = np.asarray(sequences)
    kind = np.array([kind_of_sequence(q) for q in sequences], np.int32)
    eligible = (np.asarray(labels) == 0) & (np.asarray(pixel_weight) >= 1.0) & (np.asarray(level) >= min_level)
    if kinds is not None:
        eligible &= np.isin(kind, [SYNTH_KINDS[k] for k in kinds])
    if planes is not None:
        eligible &= np.isin([looks.plane_of(q or "") for q in sequences], list(planes))
    return np.where(eligible, p, 0.0).astype(np.float32), kind


MODES = AUGMENT_MODES


def augment(image, seed, mode="v2"):
    """One random variant of a [0, 1] (H, W, 1) image; deterministic for `seed`.

    mode "v2" is the v2 recipe; "contrast" first applies `contrast`;
    "contrast-strip" also imitates skull stripping in 30 % of draws; "contrast-strip-prepared" then
    stretches the stripped brain as `prepare` stretches a real skull-stripped slice (`restretch`).
    """
    if mode not in MODES:
        raise ValueError(f"augment mode must be one of {MODES}, got {mode!r}")
    if mode.startswith("contrast"):
        image = contrast(image, tf.random.experimental.stateless_fold_in(seed, 7919))
    image = _maybe_strip(image, seed, mode)
    seeds = tf.random.experimental.stateless_split(seed, 12)
    u = tf.random.stateless_uniform([8], seed=seeds[0])
    image = _geometric(image, seeds, u)
    return _photometric(image, seeds, u)


def _maybe_strip(stack, seed, mode):
    """The "contrast-strip" modes' imitated skull stripping (30 % of draws); other modes leave `stack` as it is."""
    if not mode.startswith("contrast-strip"):
        return stack
    prepared = mode.endswith("-prepared")
    s = tf.random.experimental.stateless_fold_in(seed, 104729)
    u = tf.random.stateless_uniform([], seed=s)

    def strip():
        out = skull_strip(stack, tf.random.experimental.stateless_fold_in(s, 1))
        return tf.concat([restretch(out[..., :1]), out[..., 1:]], -1) if prepared else out
    return _maybe(u < 0.3, strip, stack)


def restretch(image, low=1.0, high=99.0):
    """The head's intensities stretched to [0.1, 1] between its `low` and `high` percentiles; background 0.

    `prepare` stretches whatever head it finds, so a real skull-stripped slice reaches the model with
    its brain filling [0.1, 1] (brats-sample's FLAIR brain sits near 0.7); `skull_strip` alone keeps
    the whole head's stretch, with the brain near 0.3-0.4 as under a skull, a look `prepare` never
    gives a stripped slice. The same percentiles and levels as `preprocessing._finish`.
    """
    head = image > _HEAD
    values = tf.sort(tf.boolean_mask(image, head))
    n = tf.size(values)

    def stretch():
        last = tf.cast(n - 1, tf.float32)
        lo = values[tf.cast(tf.round(low / 100.0 * last), tf.int32)]
        hi = values[tf.cast(tf.round(high / 100.0 * last), tf.int32)]
        out = (image - lo) / tf.maximum(hi - lo, 1e-6) * 0.9 + 0.1
        return tf.where(head, tf.clip_by_value(out, 0.1, 1.0), tf.zeros_like(image))
    return tf.cond(n >= 16, stretch, lambda: image)


def augment_with_mask(image, mask, seed, mode="v2", fluid_bright=0.0, spots=0.0):
    """`augment` for an image and its lesion mask: the mask follows every geometric change.

    `fluid_bright`: the probability of `bright_fluid` first (pass it > 0 for FLAIR slices only);
    `spots`: the probability of `bright_spots` (for slices on which lesions are bright).
    `mask` may carry more channels (a non-tumor lesion mask beside the tumor's): each follows the same
    changes, and painted spots keep away from all of them.
    """
    if mode not in MODES:
        raise ValueError(f"augment mode must be one of {MODES}, got {mode!r}")
    f = tf.random.experimental.stateless_fold_in(seed, 15485863)
    u = tf.random.stateless_uniform([2], seed=f)
    image = _maybe(u[0] < fluid_bright,
                   lambda: bright_fluid(image, tf.random.experimental.stateless_fold_in(f, 1)), image)
    image = _maybe(u[1] < spots,
                   lambda: bright_spots(image, tf.reduce_max(mask, axis=-1, keepdims=True), tf.random.experimental.stateless_fold_in(f, 2)), image)
    if mode.startswith("contrast"):
        image = contrast(image, tf.random.experimental.stateless_fold_in(seed, 7919))
    both = tf.concat([image, mask], axis=-1)
    both = _maybe_strip(both, seed, mode)
    seeds = tf.random.experimental.stateless_split(seed, 12)
    u = tf.random.stateless_uniform([8], seed=seeds[0])
    both = _geometric(both, seeds, u)
    return _photometric(both[..., :1], seeds, u), tf.clip_by_value(both[..., 1:], 0.0, 1.0)


def _geometric(image, seeds, u):
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    image = _rotate_zoom(image, seeds[2])
    return _maybe(u[4] < 0.4, lambda: _erase(image, seeds[10]), image)


def _photometric(image, seeds, u):
    gamma = tf.exp(tf.random.stateless_uniform([], seeds[3], -0.4, 0.4))
    image = tf.pow(tf.clip_by_value(image, 1e-6, 1.0), gamma)
    gain = tf.random.stateless_uniform([], seeds[4], 0.8, 1.2)
    image = image * gain
    image = _maybe(u[0] < 0.3, lambda: _blur(image), image)
    image = _maybe(u[1] < 0.3, lambda: _resolution(image, seeds[6]), image)
    noise_std = tf.random.stateless_uniform([], seeds[7], 0.0, 0.04)
    image = _maybe(u[2] < 0.4, lambda: image + noise_std * tf.random.stateless_normal(tf.shape(image), seeds[8]),
                   image)
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = _maybe(u[3] < 0.4, lambda: tf.reshape(tf.image.stateless_random_jpeg_quality(image, 30, 95, seeds[9]),
                                                  tf.shape(image)), image)
    return tf.clip_by_value(image, 0.0, 1.0)

"""Generated test images: head-like ellipses, optionally with a bright lesion.

Tests never read ../shared; everything they need is made here.
"""
import io

import numpy as np
from PIL import Image


def brain_slice(seed, size=96, lesion=False, quadrant=None, radius=None, rim=False):
    """uint8 grayscale slice: an elliptic head with texture, and a lesion if asked.

    `rim` adds a bright skull rim, so per-image intensity normalisation is set by
    the rim in every image and a lesion is only visible locally.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = 0.5 + rng.uniform(-0.05, 0.05, 2)
    ry, rx = rng.uniform(0.32, 0.42, 2)
    head = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img = np.where(head, 90 + 40 * np.sin(xx * rng.uniform(8, 20)) * np.cos(yy * rng.uniform(8, 20)), 0)
    img = img + rng.normal(0, 6, img.shape) * head
    if rim:
        r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        img = np.where(head & (r2 > 0.8), 250, img)
    if lesion:
        if quadrant is None:
            ly, lx = cy + rng.uniform(-0.15, 0.15), cx + rng.uniform(-0.15, 0.15)
        else:
            ly = cy + (-0.17 if quadrant in ("tl", "tr") else 0.17)
            lx = cx + (-0.17 if quadrant in ("tl", "bl") else 0.17)
        r = radius or rng.uniform(0.07, 0.1)
        img = np.where(((yy - ly) ** 2 + (xx - lx) ** 2) <= r * r, 245, img)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(arr, fmt="PNG", mode=None, **kw):
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_class_folders(root, classes, per_class, size=64, fmt="PNG", seed=0):
    """root/<class>/img_<i>.png; classes maps name -> has lesion."""
    import os
    paths = []
    for ci, (name, lesion) in enumerate(classes.items()):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            p = os.path.join(root, name, f"img_{i:03d}.{fmt.lower()}")
            with open(p, "wb") as f:
                f.write(encode(brain_slice(seed + 1000 * ci + i, size, lesion), fmt))
            paths.append(p)
    return paths


def write_sequence_collection(root, patients, per_patient=4, size=64, sequences=("flair", "t1-pre"),
                              site="AA", seed=0):
    """An LGG-like collection: root/<sequence>/{tumor,notumor}/TCGA_<site>_<patient>_<date>_<slice>.png.

    Each patient has slices in every sequence with the same file names (as in
    the LGG copy); odd slices hold a lesion. A masks/ folder mirrors the tumor
    slices. Returns the patient keys.
    """
    import os
    keys = []
    for p in range(patients):
        key = f"TCGA_{site}_{p:04d}_2001010{p % 9 + 1}"
        keys.append(key)
        for s in range(per_patient):
            lesion = s % 2 == 1
            name = f"{key}_{s + 1}.png"
            base_seed = seed + 100 * p + s
            for qi, seq in enumerate(sequences):
                d = os.path.join(root, seq, "tumor" if lesion else "notumor")
                os.makedirs(d, exist_ok=True)
                img = brain_slice(base_seed, size, lesion=lesion)
                if qi % 2:
                    img = np.where(img > 0, 255 - img, 0).astype(np.uint8)  # another contrast
                with open(os.path.join(d, name), "wb") as f:
                    f.write(encode(img))
            if lesion:
                os.makedirs(os.path.join(root, "masks"), exist_ok=True)
                with open(os.path.join(root, "masks", name), "wb") as f:
                    f.write(encode(((brain_slice(base_seed, size, lesion=True) >= 245) * 255).astype(np.uint8)))
    return keys

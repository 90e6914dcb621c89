"""Images the model was not made for, to measure the out-of-distribution guard.

Each case returns grayscale uint8/float images (the raw rasters `prepare()`
takes). None of them leaves this machine or enters the repository: the photos
ship with matplotlib, the CT slice with pydicom, and the resliced views are
computed from the shared BraTS sample at measurement time.
"""
import glob
import io
import os
import re

import numpy as np
from PIL import Image


def ct_like(n=60, size=256, seed=0):
    """Synthetic head CT slices: bright bone ring, nearly flat brain, dark air, CT noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    out = []
    for _ in range(n):
        a, b = rng.uniform(0.32, 0.42), rng.uniform(0.38, 0.46)
        r = (xx / a) ** 2 + (yy / b) ** 2
        img = np.full((size, size), -1000.0)  # air, HU
        img[r < 1.0] = 1200.0 + rng.normal(0, 80)  # skull
        brain = r < rng.uniform(0.80, 0.88)
        img[brain] = 35.0 + rng.normal(0, 3)
        img[brain & (np.abs(xx) < 0.03)] = 20.0  # falx / ventricles: low contrast
        img += rng.normal(0, 6, img.shape)
        lo, hi = 0.0, 80.0  # brain window
        out.append(np.clip((img - lo) / (hi - lo), 0, 1).astype(np.float32) * 255)
    return out


def ct_small_dicom(n=20, seed=0):
    """pydicom's real CT test slice (a body CT), at random crops and rotations."""
    import pydicom
    from pydicom.data import get_testdata_file
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = ds.pixel_array.astype(np.float32)
    return _variants(base, n, seed)


def photos(n=60, seed=0):
    """Photos and graphics shipped with matplotlib, at random crops, rotations and flips."""
    import matplotlib.cbook as cbook
    out = []
    names = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
    for i, name in enumerate(names):
        with cbook.get_sample_data(name, asfileobj=True) as f:
            img = np.asarray(Image.open(io.BytesIO(f.read())).convert("L"), np.float32)
        out += _variants(img, n // len(names), seed + i)
    return out


def _variants(img, n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = img.shape
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y:y + ch, x:x + cw]
        crop = np.rot90(crop, rng.integers(0, 4))
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def _volumes(brats_root, sequence):
    """{patient: (slices, H, W)} from the sample's axial slices, in slice order."""
    by_patient = {}
    for path in glob.glob(os.path.join(brats_root, sequence, "*", "*.png")):
        m = re.match(r"(.+)_(\d+)\.png$", os.path.basename(path))
        if m:
            by_patient.setdefault(m.group(1), []).append((int(m.group(2)), path))
    vols = {}
    for patient, items in by_patient.items():
        items.sort()
        vols[patient] = np.stack([np.asarray(Image.open(p).convert("L"), np.float32) for _, p in items])
    return vols


def resliced(brats_root, per_volume=4):
    """Sagittal and coronal views resliced from the BraTS sample's axial slices.

    The sample keeps ~40 axial slices per patient, every 3-4 mm, so the views are
    coarse in the head-foot direction (stretched to square); they show what
    matters here: the anatomy of a non-axial plane.
    """
    out = []
    for sequence in ("flair", "t1ce"):
        for vol in _volumes(brats_root, sequence).values():
            _, h, w = vol.shape
            for frac in np.linspace(0.35, 0.65, per_volume):
                sag = vol[::-1, :, int(w * frac)]  # head at the top
                cor = vol[::-1, int(h * frac), :]
                for view in (sag, cor):
                    out.append(np.asarray(Image.fromarray(view.astype(np.uint8)).resize((h, h)), np.float32))
    return out


def sagittal_mri():
    """matplotlib's 16-bit MRI sample (s1045.ima): a real sagittal head slice."""
    import gzip

    import matplotlib.cbook as cbook
    with cbook.get_sample_data("s1045.ima.gz", asfileobj=True) as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return [np.frombuffer(raw[-256 * 256 * 2:], np.uint16).reshape(256, 256).astype(np.float32)]


def axial_folder(root, limit=None):
    """Every image under `root` (a collection the model never trained on), as rasters."""
    paths = sorted(glob.glob(os.path.join(root, "**", "*.png"), recursive=True)
                   + glob.glob(os.path.join(root, "**", "*.jpg"), recursive=True))
    paths = [p for p in paths if "/masks/" not in p][:limit]
    return [np.asarray(Image.open(p).convert("L"), np.float32) for p in paths]

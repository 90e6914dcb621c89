"""Read every discovered image once: validate it, fingerprint it, thumbnail it.

Unreadable files are dropped here and listed in the EDA report, so training
never crashes on one bad file.
"""
import concurrent.futures
import hashlib
import io

import numpy as np
import tensorflow as tf
from PIL import Image

from screening_core import preprocessing
from trainer import dedup


def _scan_one(example):
    try:
        with tf.io.gfile.GFile(example.path, "rb") as f:
            data = f.read()
        gray = preprocessing.decode_raster(data)
        with Image.open(io.BytesIO(data)) as im:
            size, mode = im.size, im.mode
        return dict(thumb=dedup.thumbnail(gray), size=size, mode=mode,
                    sha256=hashlib.sha256(data).hexdigest())
    except Exception as e:  # any unreadable file is reported, never fatal
        return dict(error=f"{type(e).__name__}: {e}")


def scan(examples, workers=8):
    """(kept_examples, thumbs, sizes, modes, skipped, fingerprint)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(_scan_one, examples))
    kept, thumbs, sizes, modes, skipped, hashes = [], [], [], [], [], []
    for ex, r in zip(examples, results, strict=True):
        if "error" in r:
            skipped.append({"path": ex.path, "reason": r["error"]})
            continue
        kept.append(ex)
        thumbs.append(r["thumb"])
        sizes.append(r["size"])
        modes.append(r["mode"])
        hashes.append(f"{r['sha256']}:{ex.label}")
    fingerprint = hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()
    thumbs = np.stack(thumbs) if thumbs else np.zeros((0, dedup.THUMB_SIZE ** 2), np.float32)
    return kept, thumbs, sizes, modes, skipped, fingerprint

"""Deterministic raw rasters that pin `prepare()` (tests/test_preprocessing.py).

Generated from NumPy's PCG64 stream only (no codec involved), so the same
arrays come out on any machine; cases cover what `prepare` branches on.
"""
import numpy as np

from tests import synth


def cases():
    """{name: 2-D array}: 8-bit and 16-bit heads, padding, a strip, flat and non-finite images."""
    rng = np.random.default_rng(20261128)
    head = synth.brain_slice(5, 224, lesion=True).astype(np.float32)
    wide = np.zeros((200, 320), np.float32)
    wide[10:190, 70:250] = synth.brain_slice(6, 180)
    mr16 = synth.brain_slice(7, 512, lesion=True).astype(np.float32) * 16.0 + rng.normal(0, 3, (512, 512))
    nan = head.copy()
    nan[:20, :20] = np.nan
    nan[30, 30] = np.inf
    white_frame = np.pad(head, 20, constant_values=255.0)  # a web copy's frame (v2 removes it)
    grey_frame = np.pad(head, 16, constant_values=128.0)  # a grey frame, dark image inside (removed)
    grey_background = head.copy()  # a scanner's own grey background beside the head (kept)
    grey_background[head < 20] = 90.0
    annotated = np.pad(head, ((24, 24), (40, 40)))  # a screenshot's burned-in text and scale bar (v3 leaves them out)
    for i in range(12):  # two lines of glyph-like strokes in the top-left corner
        x = 4 + 7 * i
        annotated[4:12, x:x + 2] = 255.0
        annotated[4:6, x:x + 5] = 255.0
        annotated[14:22, x + 2:x + 4] = 230.0
    annotated[60:210, 296:298] = 255.0  # a scale bar at the right edge, with ticks
    annotated[60:210:15, 292:298] = 255.0
    return {
        "head_224_uint8": head.astype(np.uint8),
        "head_224_float": head,
        "wide_padded": wide,
        "mr_512_16bit": np.clip(mr16, 0, 65535).astype(np.uint16),
        "strip_3x900": (rng.random((3, 900)) * 255).astype(np.float32),
        "noise_97x131": (rng.random((97, 131)) * 1000).astype(np.float32),
        "flat": np.full((64, 64), 7.0, np.float32),
        "non_finite": nan,
        "white_frame": white_frame,
        "grey_frame": grey_frame,
        "grey_background": grey_background,
        "annotated": annotated,
        "negative": 255.0 - head,  # a film negative or an inverted screenshot (v4 turns it back)
    }


def write(preprocessing_id=None):
    """Record the current `prepare` outputs as the golden file of `preprocessing_id` (default: the current one)."""
    import os

    from screening_core import preprocessing
    spec = preprocessing.InputSpec(preprocessing=preprocessing_id or preprocessing.PREPROCESSING_ID)
    path = os.path.join(os.path.dirname(__file__), "golden", f"prepare_{spec.preprocessing}.npz")
    np.savez_compressed(path, **{k: preprocessing.prepare(v, spec) for k, v in cases().items()})
    return path

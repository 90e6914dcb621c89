"""DICOM display semantics: MONOCHROME1 is inverted, the VOI window is applied."""
import numpy as np

from beam_pipeline import decoding, sample_data


def _decode(**kw):
    arr = sample_data.synthetic_slice(3, 64, lesion=True)
    data = sample_data.dicom_bytes(arr, 0, "1.2.3", "1.2.3.4", 1, **kw)
    return arr, decoding.decode(data, "x.dcm").frames[0].gray


def test_monochrome1_is_inverted():
    _, m2 = _decode(photometric="MONOCHROME2")
    _, m1 = _decode(photometric="MONOCHROME1")
    # Same stored pixels; MONOCHROME1 means high values are dark, so the decoded image is inverted.
    np.testing.assert_allclose(m1, m1.max() - m2 + m2.min(), atol=1e-3)
    assert np.corrcoef(m1.ravel(), m2.ravel())[0, 1] < -0.99


def test_voi_window_clips_to_the_window():
    arr, wide = _decode(window=(2048, 4096))
    _, narrow = _decode(window=(1500, 400))  # stored values are arr * 16, head ~1100-1900
    assert len(np.unique(wide)) > len(np.unique(narrow))
    bright = arr.astype(np.float32) * 16 >= 1700
    assert np.allclose(narrow[bright], narrow.max())  # above the window: saturated

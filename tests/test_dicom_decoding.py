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


def test_the_slice_plane_is_read_from_the_orientation():
    """The model reads axial slices; a row says which plane its slice is in, from ImageOrientationPatient."""
    import pytest
    assert decoding.plane_of([1, 0, 0, 0, 1, 0]) == "axial"
    assert decoding.plane_of([0, 1, 0, 0, 0, -1]) == "sagittal"
    assert decoding.plane_of([1, 0, 0, 0, 0, -1]) == "coronal"
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    assert decoding.plane_of([1, 0, 0, 0, c, -s]) == "axial"  # a tilted axial (along the AC-PC line)
    c, s = np.cos(np.radians(45)), np.sin(np.radians(45))
    assert decoding.plane_of([1, 0, 0, 0, c, -s]) == "oblique"
    for bad in ([1, 0, 0], [1, 0, 0, 1, 0, 0], ["a", 0, 0, 0, 1, 0], [float("nan"), 0, 0, 0, 1, 0]):
        with pytest.raises(ValueError):
            decoding.plane_of(bad)


def test_rows_carry_the_plane_and_a_malformed_orientation_loses_nothing_else():
    import io

    import pydicom

    def with_orientation(iop):
        ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(sample_data.synthetic_slice(3, 64), 0, "1.2.3",
                                                                 "1.2.3.4", 1)))
        if iop is not None:
            ds.ImageOrientationPatient = iop
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return decoding.decode(buf.getvalue(), "x.dcm").dicom

    assert with_orientation([0, 1, 0, 0, 0, -1])["plane"] == "sagittal"
    assert with_orientation(None)["plane"] is None
    broken = with_orientation([1, 0, 0, 1, 0, 0])  # parallel directions: no plane, the rest of the header kept
    assert broken["plane"] is None and broken["series_instance_uid"] == "1.2.3.4"

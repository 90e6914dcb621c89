"""NIfTI volumes: every axial slice a frame, shown as a radiologist expects whatever the voxel order."""
import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from beam_pipeline import decoding


def _marked_volume():
    """x, y, z = 40, 50, 6 voxels; one bright voxel column at voxel (35, 45)."""
    v = np.zeros((40, 50, 6), np.int16)
    v[35, 45, :] = 1000
    return v


@pytest.mark.parametrize("affine, where", [
    # RAS voxel axes: voxel (35, 45) lies toward the patient's right and front -> top left (radiological)
    (np.diag([1.0, 1.0, 2.0, 1.0]), (4, 4)),
    # LPS voxel axes (DICOM's order, what many converters write): the same voxel lies left and back
    # -> bottom right
    (np.diag([-1.0, -1.0, 2.0, 1.0]), (45, 35)),
])
def test_axial_slices_are_in_radiological_display_whatever_the_voxel_order(affine, where):
    d = decoding.decode(nib.Nifti1Image(_marked_volume(), affine).to_bytes(), "v.nii")
    assert d.image_format == "nifti" and len(d.frames) == 6 and (d.height, d.width) == (50, 40)
    assert d.dicom["pixel_area_mm2"] == pytest.approx(1.0)  # 1 x 1 mm voxels in the slice plane
    for i, f in enumerate(d.frames):
        assert f.frame_index == i and f.gray.dtype == np.float32
        assert np.unravel_index(f.gray.argmax(), f.gray.shape) == where


def test_slices_run_feet_to_head_even_for_a_sagittal_voxel_order():
    v = np.zeros((6, 40, 50), np.int16)  # voxel axes: superior, anterior, right (a sagittal acquisition)
    v[5, :, :] = 7  # the top slice
    affine = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    d = decoding.decode(nib.Nifti1Image(v, affine).to_bytes())
    assert len(d.frames) == 6 and d.frames[-1].gray.max() == 7 and d.frames[0].gray.max() == 0


def test_scaling_gzip_and_nifti2_are_read():
    v = _marked_volume()
    img = nib.Nifti1Image(v, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    d = decoding.decode(gzip.compress(img.to_bytes()), "v.nii.gz")
    assert d.frames[0].gray.max() == pytest.approx(510.0) and d.frames[0].gray.min() == pytest.approx(10.0)
    d2 = decoding.decode(nib.Nifti2Image(v, np.eye(4)).to_bytes(), "v.nii")
    assert d2.image_format == "nifti" and len(d2.frames) == 6


def test_a_gzip_that_is_not_a_volume_stays_an_archive():
    with pytest.raises(decoding.DecodeError) as e:
        decoding.decode(gzip.compress(b"just text " * 100), "notes.txt.gz")
    assert e.value.code == "nested_archive"


def test_the_slice_pixel_area_follows_the_voxel_size_and_unit():
    img = nib.Nifti1Image(_marked_volume(), np.diag([0.5, 0.5, 3.0, 1.0]))
    img.header.set_xyzt_units("mm")
    assert decoding.decode(img.to_bytes()).dicom["pixel_area_mm2"] == pytest.approx(0.25)
    img.header.set_xyzt_units("micron")
    assert decoding.decode(img.to_bytes()).dicom["pixel_area_mm2"] == pytest.approx(0.25e-6)


def test_a_slice_with_oblong_voxels_is_resampled_to_square_pixels_so_the_head_keeps_its_shape():
    """A sagittal acquisition with 4 mm slices, seen axially: 1 mm front to back, 4 mm left to right. A
    round head 160 mm across must stay round, and its area per pixel follow the new pixel."""
    i, j = np.meshgrid(np.arange(48), np.arange(192), indexing="ij")  # voxel axes: right (4 mm), anterior (1 mm)
    head = ((i * 4.0 - 96) ** 2 + (j * 1.0 - 96) ** 2 <= 80 ** 2).astype(np.int16) * 500
    img = nib.Nifti1Image(np.repeat(head[..., None], 3, axis=2), np.diag([4.0, 1.0, 1.0, 1.0]))
    img.header.set_xyzt_units("mm")
    d = decoding.decode(img.to_bytes(), "sagittal.nii")
    frame = d.frames[1].gray
    assert frame.shape == (192, 192) and (d.height, d.width) == (192, 192)
    rows, cols = np.nonzero(frame > 250)
    assert np.ptp(rows) == pytest.approx(160, abs=4) and np.ptp(cols) == pytest.approx(160, abs=6)
    assert d.dicom["pixel_area_mm2"] == pytest.approx(1.0)


def test_each_volume_of_a_folder_is_a_series_of_its_own_and_the_folder_one_study(tmp_path):
    """Two people's volumes side by side were one series of all their slices: a worklist row no one could
    act on. Each file is its series, named by its file (and so by its look); the folder stays one study."""
    from beam_pipeline import run
    from tests import rows as rows_mod
    from tests import tiny_model
    zz, yy, xx = np.meshgrid(*(np.arange(n) - n / 2 for n in (48, 56, 5)), indexing="ij")
    head = (((zz / 20) ** 2 + (yy / 24) ** 2 < 1.0) * (100 + 20 * np.cos(xx))).astype(np.int16)
    night = tmp_path / "night"
    night.mkdir()
    for name in ("a_t2.nii.gz", "b_flair.nii.gz"):
        nib.save(nib.Nifti1Image(head, np.eye(4)), str(night / name))
    model = tiny_model.write_tiny_artifact(tmp_path / "m", lesion_bias=5.0)  # flags every slice
    out = tmp_path / "out"
    assert run.main(["--input", str(night), "--output", str(out), "--model", model, "--keep-paths"]) == 0
    series = sorted(rows_mod.images(out, "series-*.parquet"), key=lambda s: s["source_uri"])
    assert [os.path.basename(s["source_uri"]) for s in series] == ["a_t2.nii.gz", "b_flair.nii.gz"]
    assert [s["n_images"] for s in series] == [5, 5] and all(s["folder"] is None for s in series)
    (study,) = rows_mod.images(out, "studies-*.parquet")
    assert study["n_series"] == 2 and study["n_images"] == 10 and study["source_uri"].endswith("night")
    assert study["flagged_series"] == ["night/a_t2.nii.gz", "night/b_flair.nii.gz"]
    page = open(rows_mod.result_file(out, "report.html")).read()
    assert "<h3>volume night/a_t2.nii.gz" in page and "folder night/a_t2" not in page


def test_a_volume_series_is_told_from_a_folder_by_its_name_pseudonymised_too():
    from beam_pipeline.studies import is_volume_series
    assert is_volume_series({"source_uri": "/in/p-0a1b2c3d4e5f/p-9f8e7d6c5b4a.gz", "folder": None})
    assert is_volume_series({"source_uri": "/in/night.zip", "folder": "visit/a_t1.nii"})
    assert not is_volume_series({"source_uri": "/in/p-0a1b2c3d4e5f", "folder": None})  # loose slices' folder
    assert not is_volume_series({"source_uri": "/in/night.tar.gz", "folder": "visit"})
    assert not is_volume_series({"source_uri": "/in/x.nii.gz", "study_instance_uid": "1.2.3"})

"""trainer.volume_slices: a tumor-free training collection cut from real volumes as brain-score cuts them."""
import os
import re

import numpy as np
import pytest


def _head(shape=(40, 48, 30), seed=0):
    """An ellipsoid head in slices 4-21; slices 22-29 hold faint noise only (above the vertex), 0-3 nothing."""
    rng = np.random.default_rng(seed)
    xx, yy, zz = np.meshgrid(*(np.arange(n) - c for n, c in zip(shape, (20, 24, 13), strict=True)), indexing="ij")
    head = ((xx / 16) ** 2 + (yy / 20) ** 2 + (zz / 9.5) ** 2) < 1.0
    ramp = 200 + 10 * (xx + 20) + 4 * (yy + 24)  # brighter toward one side and one end: a flip shows
    v = np.where(head, ramp + 10 * rng.standard_normal(shape), 0.0)
    v[:, :, 22:] = np.abs(rng.normal(0, 10, (shape[0], shape[1], shape[2] - 22)))
    return v.astype(np.int16)


LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # voxel axes toward the patient's left, back, head: DICOM's order


def _write(folder, subjects, affine=LPS):
    import nibabel as nib
    for look in ("flair", "t1"):
        os.makedirs(folder / look, exist_ok=True)
        for i, s in enumerate(subjects):
            nib.save(nib.Nifti1Image(_head(seed=i), affine), str(folder / look / f"{s}.nii.gz"))


def test_slices_are_cut_as_brain_score_cuts_the_volume_with_the_head_only_and_held_out_subjects_left_out(tmp_path):
    from PIL import Image

    from beam_pipeline import decoding
    from trainer import discovery, lesion_train, volume_slices
    _write(tmp_path / "in", ["s01", "s02", "s03"])
    out = tmp_path / "heads"
    assert volume_slices.main(["--input", str(tmp_path / "in"), "--out", str(out), "--exclude", "^s03$"]) == 0
    assert sorted(os.listdir(out)) == ["flair", "masks", "t1"] and not os.listdir(out / "masks")
    names = sorted(os.listdir(out / "flair" / "notumor"))
    assert {n.split("_z")[0] for n in names} == {"vol_s01", "vol_s02"}  # s03 held back
    assert volume_slices.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "test"), "--only", "^s03$"]) == 0
    assert {n.split("_z")[0] for n in os.listdir(tmp_path / "test" / "t1" / "notumor")} == {"vol_s03"}
    zs = sorted({int(n[-7:-4]) for n in names})
    assert zs[0] >= 4 and zs[-1] <= 21 and len(zs) >= 14  # the head's slices; not the noise above it nor the empty ones
    # the same orientation as brain-score's frames of the volume
    decoded = decoding.decode((tmp_path / "in" / "flair" / "s01.nii.gz").read_bytes(), "s01.nii.gz")
    png = np.asarray(Image.open(out / "flair" / "notumor" / "vol_s01_z012.png"), float)
    frame = decoded.frames[12].gray
    assert png.shape == frame.shape
    assert np.corrcoef(png.ravel(), frame.ravel())[0, 1] > 0.99
    # read as tumor-free slices of their look, and one subject's slices share a patient key
    examples, _ = discovery.discover(str(out))
    assert {(e.label, e.collection) for e in examples} == {(0, "heads")}
    assert {e.sequence for e in examples} == {"flair", "t1"}
    default = lesion_train._parse(["--data-dir", str(out)]).group_pattern
    keys = {re.match(default, os.path.basename(e.path)).group(1) for e in examples}
    assert keys == {"vol_s01", "vol_s02"}


@pytest.mark.parametrize("make, argv_extra, says", [
    (lambda d: _write(d, ["bad_name"]), [], "letters, digits and '-'"),
    (lambda d: os.makedirs(d), [], "no <look>/<subject>.nii.gz"),
    (lambda d: _write(d, ["s01"]), ["--exclude", "("], "not a regular expression"),
    (lambda d: _write(d, ["s01"]), ["--non-tumor-lesions", "flair"], "LOOK=DIR"),
    (lambda d: _write(d, ["s01"]), ["--non-tumor-lesions", "flair=/nonexistent"], "not a folder"),
    (lambda d: (_write(d, ["s01"]), _write_lesions(d / "wmh", {"s01": (5, 12)}, shape=(40, 40, 30))),
     ["--non-tumor-lesions", "flair={in}/wmh"], "voxel grid"),
    (lambda d: _write(d, ["s01"]), ["--planes", "axial,oblique"], "distinct planes of axial, sagittal, coronal"),
    (lambda d: _write(d, ["s01"]), ["--planes", "sagittal,sagittal"], "distinct planes"),
])
def test_bad_input_is_refused_with_a_reason(tmp_path, capsys, make, argv_extra, says):
    from trainer import volume_slices
    make(tmp_path / "in")
    with pytest.raises(SystemExit) as e:
        volume_slices.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
                           + [a.format(**{"in": tmp_path / "in"}) for a in argv_extra])
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err + str(e.value.code)
    assert says in err


def _write_lesions(folder, spots, shape=(40, 48, 30), affine=LPS):
    """{subject: (first, last) slice} of a small bright lesion mask in the head's grid."""
    import nibabel as nib
    os.makedirs(folder, exist_ok=True)
    for subject, (z0, z1) in spots.items():
        m = np.zeros(shape, np.uint8)
        m[18:22, 20:24, z0:z1 + 1] = 1
        nib.save(nib.Nifti1Image(m, affine), str(folder / f"{subject}.nii.gz"))


def test_non_tumor_lesion_masks_are_cut_with_their_look_and_train_as_mimic_pixels(tmp_path):
    from trainer import discovery, lesion_data, volume_slices
    _write(tmp_path / "in", ["s01", "s02"])
    _write_lesions(tmp_path / "in" / "lesions-flair", {"s01": (8, 10)})  # beside the looks: not a look itself
    out = tmp_path / "heads"
    assert volume_slices.main(["--input", str(tmp_path / "in"), "--out", str(out),
                               "--non-tumor-lesions", f"flair={tmp_path / 'in' / 'lesions-flair'}"]) == 0
    assert sorted(os.listdir(out)) == ["flair", "masks", "non-tumor-lesions", "t1"]
    assert sorted(os.listdir(out / "non-tumor-lesions")) == ["flair"]  # T1 has its own grid: no mask
    assert sorted(os.listdir(out / "non-tumor-lesions" / "flair")) == [f"vol_s01_z{k:03d}.png" for k in (8, 9, 10)]
    examples, _ = discovery.discover(str(out))
    data = lesion_data.build(examples, [str(out)], size=64, processes=1)
    marked = {(e.sequence, os.path.basename(e.path)) for e, m in zip(examples, data["mimic"], strict=True) if m.any()}
    assert marked == {("flair", f"vol_s01_z{k:03d}.png") for k in (8, 9, 10)}
    assert not data["mask"].any() and data["mimic"].max() == 255  # a mimic is no tumor


def test_an_existing_collection_is_never_written_over(tmp_path, capsys):
    from trainer import volume_slices
    _write(tmp_path / "in", ["s01"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("previous")
    with pytest.raises(SystemExit) as e:
        volume_slices.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "kept.txt").read_text() == "previous"


def test_sagittal_and_coronal_slices_are_cut_as_a_viewer_shows_them_beside_their_look(tmp_path, capsys):
    """A model that has seen only axial heads flags half of the sagittal and coronal slices of heads without a
    tumor; these planes are cut head up, the face to the left (sagittal) and the patient's right on the
    image's left (coronal), and keep the subject's patient key."""
    from PIL import Image

    from trainer import discovery, lesion_train, volume_slices
    _write(tmp_path / "in", ["s01", "s02"])
    coarse = np.diag([-1.0, -1.0, 5.0, 1.0])  # 5 mm slices: a sagittal cut would be a staircase
    _write(tmp_path / "coarse", ["s03"], affine=coarse)
    for look in ("flair", "t1"):
        os.replace(tmp_path / "coarse" / look / "s03.nii.gz", tmp_path / "in" / look / "s03.nii.gz")
    out = tmp_path / "planes"
    assert volume_slices.main(["--input", str(tmp_path / "in"), "--out", str(out), "--planes", "sagittal,coronal"]) == 0
    assert "s03: voxels coarser than 2.5 mm, not cut sagittal" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["flair-coronal", "flair-sagittal", "masks", "t1-coronal", "t1-sagittal"]
    sag = sorted(os.listdir(out / "flair-sagittal" / "notumor"))
    assert {n.split("_z")[0] for n in sag} == {"vol_s01", "vol_s02"}
    # the synthetic head is brighter toward the patient's left (x) and back (y); above its vertex lies faint noise
    s = np.asarray(Image.open(out / "flair-sagittal" / "notumor" / "vol_s01_z020.png"), float)
    assert s.shape == (30, 48)  # rows: feet-to-head extent, columns: front to back
    assert s[:, 30:40].mean() > s[:, 8:18].mean()  # the back, on the right: the face is to the left
    assert s[:6].sum() > 0 and s[-4:].sum() == 0  # above the vertex at the top, nothing below the head
    c = np.asarray(Image.open(out / "flair-coronal" / "notumor" / "vol_s01_z024.png"), float)
    assert c.shape == (30, 40)
    assert c[10:20, 24:34].mean() > c[10:20, 6:16].mean()  # the patient's left on the image's right
    assert c[:6].sum() > 0 and c[-4:].sum() == 0
    examples, _ = discovery.discover(str(out))
    assert {e.sequence for e in examples} == {"flair-sagittal", "flair-coronal", "t1-sagittal", "t1-coronal"}
    default = lesion_train._parse(["--data-dir", str(out)]).group_pattern
    assert {re.match(default, os.path.basename(e.path)).group(1) for e in examples} == {"vol_s01", "vol_s02"}

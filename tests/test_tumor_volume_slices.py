"""trainer.tumor_volume_slices: a labelled test collection cut from co-registered looks and one tumor mask."""
import os
import re

import numpy as np
import pytest

from tests.test_volume_slices import LPS, _head

TUMOR_SLICES = range(12, 16)  # the labelled slices of the synthetic tumor (z of the volume)


def _tumor(shape=(40, 48, 30)):
    t = np.zeros(shape, np.uint8)
    t[8:18, 10:20, 12:16] = 2  # 100 voxels per slice: tumor slices by brats-sample's rule
    t[9:12, 11:14, 11] = 1  # a labelled slice below with 9 voxels: neither tumor nor tumor-free
    return t


def _write_case(folder, looks=("flair", "t2"), tumor_shape=(40, 48, 30)):
    import nibabel as nib
    os.makedirs(folder, exist_ok=True)
    for i, look in enumerate(looks):
        nib.save(nib.Nifti1Image(_head(seed=i), LPS), str(folder / f"{look}.nii.gz"))
    nib.save(nib.Nifti1Image(_tumor(tumor_shape), LPS), str(folder / "tumor.nii.gz"))


def test_every_look_is_cut_on_the_same_slices_with_one_mask_by_brats_sample_rule(tmp_path):
    from PIL import Image

    from beam_pipeline import decoding
    from trainer import discovery, lesion_train, tumor_volume_slices
    _write_case(tmp_path / "in" / "case-a")
    _write_case(tmp_path / "in" / "case-b")
    out = tmp_path / "check"
    assert tumor_volume_slices.main(["--input", str(tmp_path / "in"), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["flair", "masks", "t2"]
    z = lambda folder: sorted(int(n[-7:-4]) for n in os.listdir(folder) if n.startswith("vol_case-a_"))
    for look in ("flair", "t2"):
        assert z(out / look / "tumor") == list(TUMOR_SLICES)
        free = z(out / look / "notumor")
        # the head's slices (4-21) at least 3 slices from any labelled one (11-15); slice 11's 9 voxels count as labelled
        assert free == [k for k in range(4, 22) if k <= 8 or k >= 18]
    assert sorted(os.listdir(out / "masks")) == sorted(os.listdir(out / "flair" / "tumor"))
    mask = np.asarray(Image.open(out / "masks" / "vol_case-a_z013.png"))
    assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 100
    # the slice as brain-score cuts the volume, and its mask over the same pixels
    decoded = decoding.decode((tmp_path / "in" / "case-a" / "t2.nii.gz").read_bytes(), "t2.nii.gz")
    png = np.asarray(Image.open(out / "t2" / "tumor" / "vol_case-a_z013.png"), float)
    assert png.shape == decoded.frames[13].gray.shape
    assert np.corrcoef(png.ravel(), decoded.frames[13].gray.ravel())[0, 1] > 0.99
    # read as labelled slices of their look with the mask, one patient key per case
    examples, _ = discovery.discover(str(out))
    assert {e.sequence for e in examples} == {"flair", "t2"}
    assert {e.label for e in examples} == {0, 1}
    default = lesion_train._parse(["--data-dir", str(out)]).group_pattern
    assert {re.match(default, os.path.basename(e.path)).group(1) for e in examples} == {"vol_case-a", "vol_case-b"}


@pytest.mark.parametrize("make, says", [
    (lambda d: os.makedirs(d), "holds no <case>/tumor.nii.gz"),
    (lambda d: _write_case(d / "bad_name"), "letters, digits and '-'"),
    (lambda d: (_write_case(d / "case-a"), os.remove(d / "case-a" / "tumor.nii.gz")), "needs tumor.nii.gz"),
    (lambda d: _write_case(d / "case-a", tumor_shape=(40, 40, 30)), "voxel grid"),
])
def test_bad_input_is_refused_with_a_reason_and_nothing_is_left_behind(tmp_path, capsys, make, says):
    from trainer import tumor_volume_slices
    make(tmp_path / "in")
    with pytest.raises(SystemExit) as e:
        tumor_volume_slices.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert e.value.code not in (0, None)
    assert says in capsys.readouterr().err + str(e.value.code)
    assert sorted(os.listdir(tmp_path)) == ["in"]  # neither the collection nor a part of it


def test_an_existing_collection_is_not_overwritten(tmp_path, capsys):
    from trainer import tumor_volume_slices
    _write_case(tmp_path / "in" / "case-a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("earlier cut")
    with pytest.raises(SystemExit):
        tumor_volume_slices.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "earlier cut"

"""trainer.template_slices: tumor-free T1/T2/FLAIR slices at every level from a brain template's tissue maps."""
import os

import numpy as np
import pytest


def _template(folder, shape=(40, 48, 30)):
    """A ball of a brain: white matter inside, grey matter around it, CSF in a central ventricle."""
    import nibabel as nib

    from trainer import template_slices
    zz, yy, xx = np.meshgrid(*(np.arange(n) - n / 2 for n in shape), indexing="ij")
    r = np.sqrt((zz / 18) ** 2 + (yy / 22) ** 2 + (xx / 14) ** 2)
    brain, ventricle = r < 1.0, r < 0.25
    wm = ((r < 0.7) & ~ventricle).astype(np.float32)
    gm = (brain & (r >= 0.7)).astype(np.float32)
    t1 = np.where(brain, 0.35 * gm + 0.8 * wm + 0.1 * ventricle, 0.0).astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    for key, vol in (("t1", t1), ("gm", gm), ("wm", wm)):
        nib.save(nib.Nifti1Image(vol * 255, np.eye(4)), os.path.join(folder, template_slices.FILES[key]))
    return t1, gm, wm, ventricle, r


def test_looks_draw_csf_bright_on_t2_and_dark_on_flair_and_stay_inside_the_brain(tmp_path):
    from trainer import template_slices
    _, _, _, ventricle, r = _template(tmp_path / "tpl")
    t1, gm, wm = template_slices.load_template(str(tmp_path / "tpl"))
    looks, brain = template_slices.looks_of(t1, gm, wm)
    white = (r < 0.7) & ~ventricle & (r > 0.35)
    assert looks["t2"][ventricle].mean() > looks["t2"][white].mean() + 0.4  # CSF bright on T2
    assert looks["flair"][ventricle].mean() < looks["flair"][white].mean() - 0.2  # dark on FLAIR
    assert looks["flair"][(r >= 0.7) & brain].mean() > looks["flair"][white].mean()  # grey above white
    for look in template_slices.LOOKS:
        assert looks[look][~brain].max() == 0.0


def test_the_collection_is_tumor_free_slices_of_every_look_with_an_empty_masks_folder(tmp_path):
    from PIL import Image

    from trainer import lesion_data, template_slices
    _template(tmp_path / "tpl")
    out = tmp_path / "mni152"
    assert template_slices.main(["--template-dir", str(tmp_path / "tpl"), "--out", str(out), "--step", "3",
                                 "--variants", "2"]) == 0
    assert os.path.isdir(out / "masks") and not os.listdir(out / "masks")
    names = {look: sorted(os.listdir(out / look / "notumor")) for look in template_slices.LOOKS}
    assert len({tuple(v) for v in names.values()}) == 1  # the same levels and variants in every look
    levels = {n.rsplit("_", 1)[1] for n in names["t2"]}
    assert len(names["t2"]) == 2 * len(levels) and len(levels) >= 4
    assert sorted(os.listdir(out)) == ["SOURCE.txt", "flair", "masks", "t1", "t2"]
    assert "Louis Collins" in (out / "SOURCE.txt").read_text()  # the template's notice travels with it
    img = np.asarray(Image.open(out / "t2" / "notumor" / names["t2"][len(names["t2"]) // 2]))
    assert img.dtype == np.uint8 and img.ndim == 2 and img.max() > 100 and (img == 0).mean() > 0.2
    # the lesion trainer reads every slice as an all-negative map (a masks/ folder, no mask for a tumor-free slice)
    from trainer import discovery
    examples, notes = discovery.discover(str(out))
    assert notes["layout"] == "sequence_folders" and len(examples) == 3 * len(names["t2"])
    assert {(e.label, e.collection) for e in examples} == {(0, "mni152")}
    assert {e.sequence for e in examples} == set(template_slices.LOOKS)
    assert set(lesion_data.mask_plan(examples, [str(out)])) == {("", 1.0)}
    # a second run never overwrites, and a folder without the template says what it needs
    with pytest.raises(SystemExit):
        template_slices.main(["--template-dir", str(tmp_path / "tpl"), "--out", str(out)])
    with pytest.raises(SystemExit, match="must hold"):
        template_slices.main(["--template-dir", str(tmp_path), "--out", str(tmp_path / "x")])


def test_a_subset_of_looks_writes_the_same_slices_of_those_looks_and_a_bad_look_is_refused(tmp_path, capsys):
    from trainer import template_slices
    _template(tmp_path / "tpl")
    full, part = tmp_path / "full", tmp_path / "part"
    for out, looks in ((full, []), (part, ["--looks", "t2,flair"])):
        assert template_slices.main(["--template-dir", str(tmp_path / "tpl"), "--out", str(out), "--step", "4",
                                     *looks]) == 0
    assert sorted(os.listdir(part)) == ["SOURCE.txt", "flair", "masks", "t2"]
    for look in ("t2", "flair"):
        names = sorted(os.listdir(part / look / "notumor"))
        assert names == sorted(os.listdir(full / look / "notumor"))
        assert all((part / look / "notumor" / n).read_bytes() == (full / look / "notumor" / n).read_bytes()
                   for n in names)
    with pytest.raises(SystemExit) as e:
        template_slices.main(["--template-dir", str(tmp_path / "tpl"), "--out", str(tmp_path / "x"), "--looks", "t3"])
    assert e.value.code == 2 and "--looks" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_skull_share_draws_a_scalp_around_every_slice_or_none(tmp_path):
    from PIL import Image

    from trainer import template_slices
    _template(tmp_path / "tpl", shape=(64, 72, 30))  # room around the brain
    lit = {}
    for share in ("0", "1"):
        out = tmp_path / f"s{share}"
        assert template_slices.main(["--template-dir", str(tmp_path / "tpl"), "--out", str(out), "--step", "4",
                                     "--looks", "t1", "--skull-share", share]) == 0
        lit[share] = [float((np.asarray(Image.open(f)) > 40).mean()) for f in sorted((out / "t1" / "notumor").iterdir())]
    assert all(a > b for a, b in zip(lit["1"], lit["0"], strict=True))  # every slice got its ring
    with pytest.raises(SystemExit):
        template_slices.main(["--template-dir", str(tmp_path / "tpl"), "--out", str(tmp_path / "x"),
                              "--skull-share", "1.5"])


def test_the_probe_scores_every_level_of_every_look_at_each_artifacts_threshold(tmp_path, capsys):
    from tests import tiny_model
    from trainer import template_slices
    _template(tmp_path / "tpl", shape=(64, 72, 30))
    everywhere = tiny_model.write_tiny_artifact(tmp_path / "a", lesion_bias=5.0)  # its map says lesion everywhere
    nowhere = tiny_model.write_tiny_artifact(tmp_path / "b", lesion_bias=-5.0)
    result = template_slices.probe([everywhere, nowhere], *template_slices.load_template(str(tmp_path / "tpl")),
                                   step=2)
    for look in template_slices.LOOKS:
        assert result[everywhere][look]["flagged"] == 1.0 and result[nowhere][look]["flagged"] == 0.0
        assert result[everywhere][look]["n"] >= 5 and not result[everywhere][look]["in_sample"]
        assert set(result[nowhere][look]["by_level"].values()) == {0.0}
    assert template_slices.main(["--template-dir", str(tmp_path / "tpl"), "--probe", everywhere]) == 0
    out = capsys.readouterr().out
    assert "| 1 | t2 |" in out and "100.0 %" in out

"""trainer.t2_synthesis: T2-like slices from co-registered FLAIR and T1 through a map learnt on real T2."""
import os

import numpy as np
import pytest

# tissue -> (FLAIR, T1, T2) grey levels, as the looks show them: fluid dark on FLAIR and T1, bright on T2
TISSUES = {"fluid": (20, 25, 240), "white": (100, 200, 60), "grey": (130, 130, 130), "lesion": (230, 90, 215)}


def _slice(seed, size=96):
    """(FLAIR, T1, T2, tumor mask) of a round head: white matter, a grey rim, fluid in the middle (the ventricles,
    dark on both inputs) and a lesion placed by the seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    r = np.hypot(yy, xx)
    tissue = np.full((size, size), "", dtype=object)
    tissue[r < 40] = "grey"
    tissue[r < 34] = "white"
    tissue[(np.abs(xx) < 6) & (np.abs(yy) < 12)] = "fluid"
    cy, cx = rng.integers(-18, 18, 2)
    lesion = (np.hypot(yy - cy, xx - cx) < 6) & (tissue == "white")
    tissue[lesion] = "lesion"
    looks = []
    for k in range(3):
        img = np.zeros((size, size), np.float32)
        for name, levels in TISSUES.items():
            img[tissue == name] = levels[k]
        looks.append(np.clip(img + rng.normal(0, 4, img.shape) * (tissue != ""), 0, 255).astype(np.uint8))
    return (*looks, lesion)


def _write(root, looks, n, start=0):
    from PIL import Image
    for k in range(start, start + n):
        flair, t1, t2, lesion = _slice(k)
        cls = "tumor" if k % 2 else "notumor"
        for name, img in zip(("flair", "t1", "t2"), (flair, t1, t2), strict=True):
            if name in looks:
                os.makedirs(root / looks[name] / cls, exist_ok=True)
                Image.fromarray(img).save(root / looks[name] / cls / f"TCGA_XX_{k:04d}_2000_{k}.png")
        if cls == "tumor":
            os.makedirs(root / "masks", exist_ok=True)
            Image.fromarray(lesion.astype(np.uint8) * 255).save(root / "masks" / f"TCGA_XX_{k:04d}_2000_{k}.png")


def test_the_learnt_map_turns_flair_and_t1_into_the_t2_they_were_learnt_with(tmp_path, capsys):
    from PIL import Image

    from trainer import t2_synthesis
    _write(tmp_path / "ped", {"flair": "flair", "t1": "t1", "t2": "t2"}, 12)
    _write(tmp_path / "lgg", {"flair": "flair", "t1": "t1-pre"}, 6, start=100)
    out = tmp_path / "lgg-t2syn"
    assert t2_synthesis.main(["--fit-on", str(tmp_path / "ped"), "--apply-to", str(tmp_path / "lgg"),
                              "--t1", "t1-pre", "--out", str(out)]) == 0
    assert "learnt on 12 slices; wrote 3 notumor, 3 tumor T2-like slices" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["SOURCE.txt", "masks", "t2", "t2_table.npy"]
    assert sorted(os.listdir(out / "masks")) == sorted(os.listdir(out / "t2" / "tumor"))  # each tumor keeps its mask
    for k in range(100, 106):
        _, _, truth, lesion = _slice(k)
        name = f"TCGA_XX_{k:04d}_2000_{k}.png"
        made = np.asarray(Image.open(out / "t2" / ("tumor" if k % 2 else "notumor") / name), np.float32)
        head = truth > 0
        assert np.corrcoef(made[head], truth[head].astype(np.float32))[0, 1] > 0.95
        assert (made[~head] == 0).all()
        fluid = (np.abs(np.mgrid[:96, :96][1] - 48) < 5) & (np.abs(np.mgrid[:96, :96][0] - 48) < 10)
        assert made[fluid].mean() > made[head & ~fluid & ~lesion].mean() + 60  # the ventricles turn bright


@pytest.mark.parametrize("make, says", [
    (lambda d: _write(d / "ped", {"flair": "flair", "t1": "t1"}, 4), "no slice name present in flair/, t1/ and t2/"),
    (lambda d: (_write(d / "ped", {"flair": "flair", "t1": "t1", "t2": "t2"}, 4),
                _write(d / "lgg", {"flair": "flair"}, 2)), "no slice with both flair/ and t1-pre/"),
])
def test_collections_without_twins_are_refused_and_nothing_is_left_behind(tmp_path, capsys, make, says):
    from trainer import t2_synthesis
    os.makedirs(tmp_path / "lgg", exist_ok=True)
    make(tmp_path)
    with pytest.raises(SystemExit) as e:
        t2_synthesis.main(["--fit-on", str(tmp_path / "ped"), "--apply-to", str(tmp_path / "lgg"), "--t1", "t1-pre",
                           "--out", str(tmp_path / "out")])
    assert e.value.code not in (0, None) and says in str(e.value.code) + capsys.readouterr().err
    assert not any(n.startswith("out") for n in os.listdir(tmp_path))

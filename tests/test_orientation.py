"""trainer.orientation: the network that tells a turned slice, trained on upright slices turned at random."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests import synth


def _upright(seed, size=64):
    """A tall head with a neck below it: a slice that has an up."""
    img = synth.brain_slice(seed, size).astype(np.float32)
    img[int(0.8 * size):, size // 2 - 5:size // 2 + 5] = 120
    return img.astype(np.uint8)


def _collection(root, n):
    os.makedirs(root / "flair" / "notumor", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    paths = []
    for i in range(n):
        p = root / "flair" / "notumor" / f"p{i:02d}_z{i:02d}.png"
        Image.fromarray(_upright(i)).save(p)
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "masks" / f"p{i:02d}_z{i:02d}.png")
        paths.append(str(p))
    return paths


def test_the_cli_trains_on_upright_slices_and_writes_a_sealed_orientation_artifact(tmp_path):
    from screening_core import artifact
    from trainer import orientation
    paths = _collection(tmp_path / "data", 24)
    scored = tmp_path / "scored.csv"
    with open(scored, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "source"])
        w.writeheader()
        w.writerows({"path": p, "source": "src"} for p in paths[:6])
    # masks are not slices, and the scored slices stay out of training
    assert orientation.slice_paths([str(tmp_path / "data")], orientation.excluded_paths([scored])) == sorted(paths[6:])
    out = tmp_path / "models" / "slice-orientation" / "1"
    assert orientation.main(["--data-dir", str(tmp_path / "data"), "--exclude", str(scored), "--out", str(out),
                             "--epochs", "1", "--batch", "8", "--confidence", "0.95"]) == 0
    md = artifact.verify(str(out))
    assert md["head"] == "orientation" and md["threshold"] == 0.95 and md["output"]["class_names"] == ["0", "90", "180", "270"]
    assert md["orientation"]["training_slices"] == 17  # 18 left after the 6 scored ones, a tenth held for its own validation
    evaluation = md["orientation"]["evaluation"]["src"]
    assert evaluation["n"] == 6 and set(evaluation) == {"n", "0", "90", "180", "270"}
    for turn in ("0", "90", "180", "270"):
        shares = evaluation[turn]
        assert abs(shares["upright"] + shares["sideways"] + shares["upside_down"] - 1) < 1e-6
    model, _ = artifact.load(str(out))
    assert tuple(model.output.shape) == (None, 4)
    assert not [layer.name for layer in model.layers if layer.name.endswith("_pool")]  # never OOD-guard features
    json.dumps(md)  # the report is plain JSON
    card = (out / "model_card.md").read_text()
    assert "| src | 6 |" in card and "brain-score refuses it alone" in card and f"{model.count_params()} parameters" in card


@pytest.mark.parametrize("flags", [["--confidence", "1.0"], ["--epochs", "0"], ["--confidnce", "0.9"],
                                   ["--preprocessing", "gray-headcrop-pnorm-v9"], ["--exclude", "nope.csv"], []])
def test_bad_flags_are_refused_before_any_slice_is_read(tmp_path, flags, capsys):
    from trainer import orientation
    (tmp_path / "empty").mkdir()
    data = str(tmp_path / ("empty" if not flags else "nowhere"))  # no flags: a folder without slices
    with pytest.raises(SystemExit) as e:
        orientation.main(["--data-dir", data, "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_where_a_slice_ends_up_is_the_graphs_own_rule():
    """undo_rate applies screening_core.upright.chosen_turn: sure sideways turns are undone (the likelier way),
    half turns and unsure ones are left."""
    from trainer import orientation
    sure_90 = [0.002, 0.996, 0.001, 0.001]
    sure_180 = [0.002, 0.001, 0.996, 0.001]
    unsure_90 = [0.1, 0.8, 0.05, 0.05]
    probs = np.array([sure_90, sure_90, sure_180, unsure_90], np.float32)
    assert orientation.undo_rate(probs, 90, 0.99) == (0.5, 0.5, 0.0)  # the half-turn and the unsure guess: left sideways
    assert orientation.undo_rate(probs, 270, 0.99) == (0.0, 0.5, 0.5)  # undone the wrong way: upside down
    assert orientation.undo_rate(probs, 0, 0.99) == (0.5, 0.5, 0.0)  # an upright slice called sideways is turned


def test_a_contrast_remap_changes_the_head_and_leaves_the_background_black():
    import tensorflow as tf

    from trainer import orientation
    img = np.zeros((32, 32, 1), np.float32)
    img[8:24, 8:24] = np.linspace(0.1, 1.0, 16, dtype=np.float32)[None, :, None]
    for u in ([0.2, 0.5, 0.5, 0.0], [0.8, 1.0, 1.0, 0.3]):
        out = orientation.remap_contrast(tf.constant(img), tf.constant(u, tf.float32)).numpy()
        assert (out[img == 0] == 0).all() and (out[img > 0] >= 0.05).all() and out.max() <= 1.0
        assert not np.allclose(out, img, atol=0.05)
    inverted = orientation.remap_contrast(tf.constant(img), tf.constant([0.2, 0.0, 0.0, 0.0], tf.float32)).numpy()
    row = inverted[16, 8:24, 0]
    assert (np.diff(row) < 0).all()  # brightest where it was darkest: T2 against T1


def test_a_band_keeps_the_middle_of_the_head_and_blanks_its_top_and_bottom():
    from trainer import orientation
    img = np.zeros((100, 80), np.float32)
    img[10:90, 20:60] = 100.0
    for seed in range(5):
        out = orientation.banded(img, seed)
        rows = np.flatnonzero(out.any(1))
        assert 10 <= rows[0] <= 30 and 46 <= rows[-1] <= 78  # top 0-25 % and bottom 15-45 % of the 80-row head gone
        assert np.array_equal(out[rows[0]:rows[-1] + 1], img[rows[0]:rows[-1] + 1])  # what is kept is untouched
    assert np.array_equal(orientation.banded(np.zeros((20, 20), np.float32), 0), np.zeros((20, 20)))

"""trainer.copy_check scores a source's validation images as they are and as copies bring them."""
import csv
import json

import numpy as np
from PIL import Image

from tests import synth, tiny_model
from trainer import copy_check, export


def test_every_copy_is_scored_for_both_labels_at_the_threshold(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path, size=32, threshold=0.5)
    export.export(model_dir)
    rows = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(synth.encode(synth.brain_slice(i, 96, lesion=bool(i % 2))))
        rows.append({"path": str(path), "class_name": "x", "label": i % 2, "group": i, "score": 0.5,
                     "split": "validation", "source": "src", "level": 0.5})
    rows.append({**rows[0], "split": "held_out_site"})  # not drawn: another split
    with open(f"{model_dir}/validation_predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "copies.json"
    assert copy_check.main([model_dir, "--source", "src", "--per-class", "5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    plain = Image.fromarray(synth.brain_slice(0, 40).astype(np.uint8))
    names = [name for name, _ in copy_check.variants(plain, np.random.default_rng(0))]
    assert list(result) == names and names[0] == "as it is" and len(names) == 20
    for figures in result.values():
        assert figures["n_tumor"] == 3 and figures["n_tumor_free"] == 3  # validation rows only, every one drawn
        for share in (figures["tumors_found"], figures["tumor_free_flagged"]):
            assert any(abs(share - k / 3) < 1e-9 for k in range(4))
    # the drawn images are the same for the same seed
    assert copy_check.draw(model_dir, "src", 2, 0) == copy_check.draw(model_dir, "src", 2, 0)


def test_an_artifact_it_cannot_use_is_said_in_one_line(tmp_path):
    import pytest
    with pytest.raises(SystemExit, match="no SHA256SUMS"):
        copy_check.main([str(tmp_path / "nope")])
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    with pytest.raises(SystemExit, match="no validation_predictions.csv"):
        copy_check.main([model_dir])

import os

import pytest

from tests import synth
from trainer import discovery


def test_yes_no_folders(tmp_path):
    synth.write_class_folders(tmp_path, {"yes": True, "no": False}, 3)
    examples, notes = discovery.discover(str(tmp_path))
    assert notes["layout"] == "class_folders"
    assert sorted((e.class_name, e.label) for e in examples) == [("no", 0)] * 3 + [("yes", 1)] * 3


def test_four_class_folders(tmp_path):
    synth.write_class_folders(tmp_path, {"glioma": 1, "meningioma": 1, "pituitary": 1, "notumor": 0}, 2,
                              fmt="JPEG")
    examples, _ = discovery.discover(str(tmp_path))
    assert len(examples) == 8
    assert {e.class_name: e.label for e in examples} == {
        "glioma": 1, "meningioma": 1, "pituitary": 1, "notumor": 0}


def test_training_testing_parents_are_pooled(tmp_path):
    for parent in ("Training", "Testing"):
        synth.write_class_folders(tmp_path / parent, {"glioma_tumor": 1, "no_tumor": 0}, 2)
    examples, notes = discovery.discover(str(tmp_path))
    assert notes["layout"] == "split_parents"
    assert len(examples) == 8
    assert {e.source for e in examples} == {"Training", "Testing"}


def test_csv_index(tmp_path):
    img_dir = tmp_path / "Brain Tumor" / "Brain Tumor"
    img_dir.mkdir(parents=True)
    rows = ["Image,Class,Mean"]
    for i in range(4):
        (img_dir / f"Image{i + 1}.jpg").write_bytes(synth.encode(synth.brain_slice(i, 32), "JPEG"))
        rows.append(f"Image{i + 1},{i % 2},1.0")
    rows.append("Image99,1,1.0")  # listed but missing
    (tmp_path / "Brain Tumor.csv").write_text("\n".join(rows))
    examples, notes = discovery.discover(str(tmp_path))
    assert notes["layout"] == "csv"
    assert [e.label for e in sorted(examples, key=lambda e: e.path)] == [0, 1, 0, 1]
    assert notes["missing"] == ["Image99"]


def test_unknown_folder_lists_what_was_found(tmp_path):
    synth.write_class_folders(tmp_path, {"yes": True, "maybe": False}, 1)
    with pytest.raises(discovery.DiscoveryError, match=r"\['maybe'\].*found folders \['maybe', 'yes'\]"):
        discovery.discover(str(tmp_path))


def test_class_map_override(tmp_path):
    synth.write_class_folders(tmp_path, {"tumour_present": True, "clear": False}, 1)
    examples, _ = discovery.discover(str(tmp_path), discovery.parse_class_map("tumour_present=1,clear=0"))
    assert {e.class_name: e.label for e in examples} == {"tumour_present": 1, "clear": 0}


def test_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(discovery.DiscoveryError, match="no class folders"):
        discovery.discover(str(tmp_path))


def test_missing_dir(tmp_path):
    with pytest.raises(discovery.DiscoveryError, match="does not exist"):
        discovery.discover(os.path.join(tmp_path, "nope"))

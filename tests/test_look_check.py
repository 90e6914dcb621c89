"""trainer.look_check: the share of tumor slices found per look, scored by brain-score, stored for the report."""
import json
import os
import random

import pytest


def _row(path, flagged, p, status="ok"):
    return {"source_uri": path, "status": status, "predicted_label": "tumor" if flagged else "no_tumor",
            "tumor_probability": p}


def test_found_and_flagged_come_from_the_class_folders_and_patients_from_the_slice_names():
    from trainer import look_check
    rows = [_row(f"/c/t2/tumor/vol_a_z{k:03d}.png", k < 3, 0.9 if k < 3 else 0.2) for k in range(4)]
    rows += [_row(f"/c/t2/notumor/vol_b_z{k:03d}.png", k == 0, 0.6 if k == 0 else 0.1) for k in range(5)]
    rows += [_row("/c/t2/tumor/vol_a_z009.png", False, 0.0, status="error"),  # not scored: left out
             _row("/c/t2/readme/x.png", True, 0.9)]  # in no class folder: left out
    random.Random(0).shuffle(rows)
    assert look_check.summarise(rows) == {"tumor_slices": 4, "found": 0.75, "tumor_free_slices": 5, "flagged": 0.2,
                                          "auc": 0.95, "patients": 2}  # 19 of 20 pairs ranked right
    with pytest.raises(SystemExit, match="tumor and tumor-free"):
        look_check.summarise([r for r in rows if "/notumor/" not in r["source_uri"]])


def test_the_banner_names_the_looks_whose_tumors_are_found_least_often():
    from beam_pipeline import report
    md = {"look_check": {"patients": 2, "looks": {"flair": {"found": 0.86}, "t2": {"found": 0.53},
                                                  "t1": {"found": 0.80}}}}
    text = report._look_check_html(md)
    assert "(2 patients)" in text and "FLAIR 86%, T2 53%, T1 80%" in text
    assert "a T2 series without a flag is not a negative" in text and "T1 series" not in text
    even = {"look_check": {"patients": 2, "looks": {"flair": {"found": 0.86}, "t2": {"found": 0.80}}}}
    assert "not a negative" not in report._look_check_html(even)
    three = {"look_check": {"patients": 2, "looks": {"flair": {"found": 0.9}, "t2": {"found": 0.5},
                                                     "t1": {"found": 0.5}, "t1ce": {"found": 0.4}}}}
    assert "a T1ce, T2 or T1 series without a flag" in report._look_check_html(three)
    assert report._look_check_html({}) == ""


def test_write_stores_the_figures_by_look_in_the_sealed_artifact_and_a_new_threshold_drops_them(tmp_path, capsys):
    from beam_pipeline import report
    from screening_core import artifact
    from tests import synth, tiny_model
    from trainer import look_check
    for look in ("t2", "flair"):
        for cls in ("tumor", "notumor"):
            os.makedirs(tmp_path / "check" / look / cls)
            for k in range(2):
                (tmp_path / "check" / look / cls / f"vol_p{k}_z00{k}.png").write_bytes(
                    synth.encode(synth.brain_slice(k + (cls == "tumor"), 32)))
    os.makedirs(tmp_path / "check" / "masks")
    model = tiny_model.write_tiny_artifact(tmp_path / "a", lesion_bias=5.0)  # its map says lesion everywhere
    assert look_check.main(["--input", str(tmp_path / "check"), "--model", model, "--write"]) == 0
    out = capsys.readouterr()
    assert "| 1 | T2 | 2 | 100 % of 2 | 100 % of 2 |" in out.out and "metadata.json" in out.err
    md = artifact.verify(model)  # re-sealed: it still loads
    check = md["look_check"]
    assert set(check["looks"]) == {"t2", "flair"} and check["threshold"] == md["threshold"]
    assert check["looks"]["t2"]["found"] == 1.0 and check["patients"] == 2
    assert "vol_p" not in json.dumps(check)  # counts and shares only, no slice or patient names
    assert "T2 100%" in report._validation_html(set(), md)
    from trainer import model_card
    section = model_card._look_check_section(md)
    assert "2 patients whose looks share one tumor mask" in section and "| t2 | 100.0% of 2 | 100.0% of 2 |" in section
    stale = {**md, "threshold": md["threshold"] / 2}
    assert any("look check" in p for p in artifact.contract_problems(stale))
    tiny_model.rethreshold_on_new_predictions(model, md)  # a re-threshold drops the stale figures
    assert "look_check" not in md and not artifact.contract_problems(md)


@pytest.mark.parametrize("make, says", [
    (lambda d: os.makedirs(d), "holds no <look>/tumor/"),
    (lambda d: [os.makedirs(d / "misc" / c) for c in ("tumor", "notumor")], "must say its look"),
    (lambda d: [os.makedirs(d / f / c) for f in ("t1", "t1-pre") for c in ("tumor", "notumor")], "one folder per look"),
])
def test_a_collection_without_look_folders_is_refused(tmp_path, capsys, make, says):
    from tests import tiny_model
    from trainer import look_check
    make(tmp_path / "c")
    model = tiny_model.write_tiny_artifact(tmp_path / "a")
    with pytest.raises(SystemExit) as e:
        look_check.main(["--input", str(tmp_path / "c"), "--model", model])
    assert e.value.code not in (0, None) and says in str(e.value.code) + capsys.readouterr().err

"""trainer.targets: the lesion-first model's acceptance targets, read off an artifact, met or not."""
import json
import os

import numpy as np
import pytest


def test_roc_points_are_the_best_of_any_threshold():
    from screening_core import metrics
    labels = [1] * 10 + [0] * 20
    scores = [0.9] * 8 + [0.3, 0.1] + [0.05] * 18 + [0.5, 0.2]
    # 95 % specificity allows 1 of 20 tumor-free slices flagged (0.5): the threshold sits above 0.2, 9 of 10 found
    assert metrics.sensitivity_at_specificity(labels, scores, 0.95) == 0.9
    assert metrics.sensitivity_at_specificity(labels, scores, 0.90) == 1.0  # 2 allowed: above 0.05
    assert metrics.sensitivity_at_specificity(labels, scores, 1.0) == 0.8  # none allowed: above 0.5
    # every tumor found needs the threshold at 0.1: 0.5 and 0.2 are flagged, 18 of 20 are not
    assert metrics.specificity_at_sensitivity(labels, scores, 1.0) == 0.9
    assert metrics.specificity_at_sensitivity(labels, scores, 0.8) == 1.0
    assert np.isnan(metrics.sensitivity_at_specificity([1, 1], [0.2, 0.3], 0.95))


def _artifact(tmp_path, brain_mri_tumor=0.9, level_median=0.01):
    """A version folder with what the targets read: scored rows, map figures, level bins, one cross check."""
    d = tmp_path / "a"
    os.makedirs(d)
    rng = np.random.default_rng(0)
    rows = ["path,class_name,label,score,split,source,group"]
    for i in range(200):  # brain-mri: tumors at brain_mri_tumor, tumor-free at 0.1 (one in twenty at 0.95)
        tumor = i % 2
        score = brain_mri_tumor if tumor else (0.95 if i % 40 == 0 else 0.1)
        rows.append(f"m{i}.jpg,x,{tumor},{score + rng.uniform(0, 0.01)},validation,brain-mri,g{i % 50}")
    for i in range(40):  # brats-sample T2: one patient, perfectly ranked
        rows.append(f"b{i}.png,x,{i % 2},{0.2 + 0.5 * (i % 2)},external,brats-sample/t2,case1")
    (d / "validation_predictions.csv").write_text("\n".join(rows) + "\n")
    md = {"threshold": 0.05, "training_config": {"data_dir": ["../shared/data/lgg", "../shared/data/brain-mri"]},
          "generalisation": [{"trained_on": "lgg", "by_source": {
              "brain-mri": {"roc_auc": 0.38, "ci95": {"auc": [0.34, 0.43]}, "n": 100},
              "brats-sample/flair": {"roc_auc": 0.9, "n": 10}}}],
          "lesion": {"map_figures": {"validation/lgg/flair": {
              "n": 135, "dice_mean": 0.24, "dice_mean_at_map_level": 0.61, "map_level": 0.01,
              "pointing_game": 0.91, "mass_inside_mask": 0.4}},
              "level_bins": {"validation": {"lgg/flair": [{"bin": "0.0-0.2", "n": 9, "median": level_median,
                                                           "flagged": 0.1},
                                                          {"bin": "0.2-0.4", "n": 9, "median": 0.0, "flagged": 0.0}]}}}}
    return str(d), md


def test_each_target_is_measured_from_the_artifact_and_what_it_lacks_is_not_met(tmp_path):
    from trainer import targets
    d, md = _artifact(tmp_path)
    rows = {r["what"]: r for r in targets.measure(d, md, bootstrap=50)}
    sens = rows["validation brain-mri: sensitivity at specificity 0.95"]
    assert sens["value"] == 1.0 and sens["met"] and sens["ci95"] is not None and sens["groups"] == 50
    assert rows["validation brain-mri: auc"]["value"] < 0.995 and rows["validation brain-mri: auc"]["met"] is False
    t2 = rows["external brats-sample/t2: auc"]
    assert t2["value"] == 1.0 and t2["ci95"] is None and t2["groups"] == 1  # one patient: no interval
    # no held-out site in this artifact: listed, not measured, never counted as met
    assert rows["held_out_site lgg/flair: auc"]["met"] is None
    # the check trained without brain-mri is scored on brain-mri; brats-sample was never in the training data
    cross = [r for w, r in rows.items() if w.startswith("trained without")]
    assert [(r["what"], r["value"], r["met"]) for r in cross] == [
        ("trained without brain-mri, scored on brain-mri: auc", 0.38, False)]
    assert rows["validation/lgg/flair: map Dice at the map level 0.01"]["met"] is True
    assert rows["validation/lgg/flair: mass inside mask"]["met"] is False
    bins = rows["tumor-free level bins whose median is above the threshold (target: none)"]
    assert bins["met"] is True and bins["value"] == 0 and bins["n"] == 2
    d2, md2 = _artifact(tmp_path / "worse", brain_mri_tumor=0.5, level_median=0.2)
    rows2 = {r["what"]: r for r in targets.measure(d2, md2, bootstrap=0)}
    # tumors at 0.5 sit below the one tumor-free slice in twenty at 0.95 ... and above the rest: still all found
    assert rows2["validation brain-mri: sensitivity at specificity 0.95"]["value"] == 1.0
    bins2 = rows2["tumor-free level bins whose median is above the threshold (target: none)"]
    assert bins2["met"] is False and bins2["above"] == ["validation/lgg/flair 0.0-0.2 (n 9)"]
    from trainer import model_card
    assert "Level bins above the threshold: validation/lgg/flair 0.0-0.2 (n 9)." in model_card._targets_section(
        {"targets": {"rows": list(rows2.values())}})
    text = targets.table(targets.measure(d, md, bootstrap=0))
    assert "| validation brain-mri: auc >= 0.995 |" in text and "(1 group, no CI)" in text
    assert "| held_out_site lgg/flair: auc >= 0.95 | not measured | - |" in text


def test_write_stores_the_rows_in_the_sealed_artifact_the_card_shows_them_and_a_new_threshold_drops_them(
        tmp_path, capsys):
    from screening_core import artifact
    from tests import tiny_model
    from trainer import model_card, targets
    model = tiny_model.write_tiny_artifact(tmp_path / "m")
    d, md = _artifact(tmp_path)
    os.replace(os.path.join(d, "validation_predictions.csv"), os.path.join(model, "validation_predictions.csv"))
    artifact.update_metadata(model, lambda m: m.update({k: md[k] for k in ("generalisation", "lesion")}))
    assert targets.main([model, "--write", "--bootstrap", "20"]) == 0
    out = capsys.readouterr()
    assert "| validation brain-mri: auc >= 0.995 |" in out.out and "targets met" in out.err
    stored = artifact.verify(model)  # re-sealed: it still loads
    assert stored["targets"]["threshold"] == stored["threshold"]
    assert "Acceptance targets" in model_card._targets_section(stored)
    assert "Level bins above" not in model_card._targets_section(stored)  # none above in this artifact
    assert "5 of 10 targets met, 3 not measured" in model_card._targets_section(stored)
    from beam_pipeline import report
    assert "It meets 5 of its 10 acceptance targets" in report._validation_html(set(), stored)
    assert "m0.jpg" not in json.dumps(stored["targets"])  # figures only, no slice names
    stale = {**stored, "threshold": stored["threshold"] / 2}
    assert any("acceptance targets" in p for p in artifact.contract_problems(stale))
    tiny_model.rethreshold_on_new_predictions(model, stored)
    assert "targets" not in stored and not artifact.contract_problems(stored)


def test_a_folder_that_is_no_artifact_or_a_tampered_one_is_refused(tmp_path, capsys):
    from tests import tiny_model
    from trainer import targets
    with pytest.raises(SystemExit) as e:
        targets.main([str(tmp_path)])
    assert e.value.code == 2 and "not a model artifact" in capsys.readouterr().err
    model = tiny_model.write_tiny_artifact(tmp_path / "m")
    with open(os.path.join(model, "model.onnx"), "wb") as f:
        f.write(b"not the sealed file")
    with pytest.raises(SystemExit) as e:  # --write would re-seal it: refused
        targets.main([model, "--write", "--bootstrap", "0"])
    assert e.value.code == 2 and "targets" not in json.load(open(os.path.join(model, "metadata.json")))

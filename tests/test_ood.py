"""The out-of-distribution guard and the drift check: never a silent negative for an image
unlike the training data, and a night whose input moved is visible (and can fail)."""
import json
import os
import zipfile

import numpy as np

from beam_pipeline import drift, run, schema
from screening_core import artifact
from tests import rows as rows_mod
from tests import synth, tiny_model
from trainer import ood


def test_reference_separates_a_shifted_distribution_with_known_false_ood_rate():
    rng = np.random.default_rng(0)
    d = 8
    train = {"f": rng.normal(0, 1, (2000, d))}
    labels = rng.integers(0, 2, 2000)
    train["f"][labels == 1] += 2.0  # two classes
    val_labels = rng.integers(0, 2, 4000)
    val = {"f": rng.normal(0, 1, (4000, d)) + 2.0 * val_labels[:, None]}
    ref = ood.fit(train, labels, val, val_groups=np.arange(4000))
    assert 0.02 < ref.info["validation_false_ood_rate"] < 0.06  # 4 % target, measured on the other half
    far = {"f": rng.normal(0, 1, (500, d)) + np.r_[6.0, np.zeros(d - 1)]}
    assert np.mean(ref.score(far) > ref.threshold) > 0.95
    assert ood._auroc(ref.score(val), ref.score(far)) > 0.99


def test_reference_round_trips_and_is_sealed(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path, ood=True)
    md = artifact.verify(model_dir)
    assert md["ood"]["method"] == "mahalanobis-sum-of-layers+input-histogram"
    assert "ood_reference.npz" in open(os.path.join(model_dir, "SHA256SUMS")).read()
    ref = ood.Reference.load(ood.reference_path(model_dir))
    assert ref.threshold == md["ood"]["threshold"] and ref.names[-1] == ood.HISTOGRAM
    with open(ood.reference_path(model_dir), "ab") as f:
        f.write(b"tampered")
    try:
        artifact.verify(model_dir)
        raise AssertionError("a changed reference must be refused")
    except artifact.ArtifactError as e:
        assert "ood_reference.npz was changed" in str(e)


def _noise(seed, size=64):
    return np.random.default_rng(seed).integers(0, 256, (size, size)).astype(np.uint8)


def test_out_of_distribution_images_are_flagged_never_silently_negative(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path, threshold=0.999, ood=True)  # nothing flagged as tumor
    with zipfile.ZipFile(tmp_path / "night.zip", "w") as zf:
        for s in range(1000, 1060):  # brain slices the reference never saw
            zf.writestr(f"brain/{s}.png", synth.encode(synth.brain_slice(s, 64, lesion=bool(s % 2))))
        for s in range(40):
            zf.writestr(f"noise/{s}.png", synth.encode(_noise(s)))
    out = str(tmp_path / "out")
    argv = ["--input", str(tmp_path / "night.zip"), "--keep-paths", "--output", out, "--model", model_dir]
    assert run.main(argv + ["--no-fail-on-drift"]) == 0  # reported, not fatal, when the site says so
    rows = rows_mod.images(out)
    brain = [r for r in rows if r["member_path"].startswith("brain/")]
    noise = [r for r in rows if r["member_path"].startswith("noise/")]
    assert all(r["ood_score"] is not None for r in rows)
    assert np.mean([r["in_distribution"] for r in brain]) >= 0.85
    assert all(r["in_distribution"] is False for r in noise)
    assert {r["predicted_label"] for r in noise} == {schema.LABEL_OOD}  # not "no_tumor"
    summary = run.read_summary(out)
    assert summary["out_of_distribution"] == sum(not r["in_distribution"] for r in rows)
    assert summary["drift"]["assessed"] and summary["drift"]["drifted"]
    assert any("out of distribution" in reason for reason in summary["drift"]["reasons"])
    page = open(rows_mod.result_file(out, "report.html")).read()
    assert "Input drift" in page and "out of distribution (below threshold, not judged)" in page
    capsys.readouterr()
    assert run.main(argv) == 4  # a drifted night is not a good night by default
    assert "Exit 4" in capsys.readouterr().out


def test_drift_rules():
    reference = {"score_histogram": [5, 1, 1, 1, 1, 1, 1, 1, 1, 5], "ood_rate": 0.03}
    same = {"by_status": {"ok": 180}, "out_of_distribution": 5, "score_histogram": [50, 10, 10, 10, 10, 10, 10, 10, 10, 50]}
    assert drift.assess(same, reference)["drifted"] is False
    shifted = {**same, "score_histogram": [0, 0, 0, 0, 90, 90, 0, 0, 0, 0]}
    result = drift.assess(shifted, reference)
    assert result["drifted"] is False and "PSI" in result["warnings"][0]  # prevalence moves it too: a warning
    many_ood = {**same, "out_of_distribution": 40}
    assert drift.assess(many_ood, reference)["drifted"] is True
    few = {**same, "by_status": {"ok": 10}}
    assert drift.assess(few, reference)["assessed"] is False
    assert drift.assess(same, None)["assessed"] is False
    assert json.dumps(drift.assess(shifted, reference))  # goes into _SUMMARY.json


def test_out_of_distribution_is_marked_per_study_and_per_flagged_image(tmp_path):
    """A study of noise-like images flagged as tumor: its worklist row shows its out-of-distribution share,
    and its flagged images' captions say so, next to series and instance number."""
    import io

    import pydicom

    from beam_pipeline import sample_data
    model_dir = tiny_model.write_tiny_artifact(tmp_path, threshold=1e-6, ood=True)  # every image flagged
    with zipfile.ZipFile(tmp_path / "night.zip", "w") as zf:
        for n in range(6):
            arr = _noise(n) if n < 4 else synth.brain_slice(1000 + n, 64)
            ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(arr, 0, "1.2.3.4", "1.2.3.4.5", n + 1)))
            ds.SeriesDescription, ds.SeriesNumber = "AX FLAIR", 7
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            zf.writestr(f"{n}.dcm", buf.getvalue())
    out = str(tmp_path / "out")
    run.main(["--input", str(tmp_path / "night.zip"), "--output", out, "--model", model_dir])
    rows = rows_mod.images(out)
    n_ood = sum(r["in_distribution"] is False for r in rows)
    assert n_ood >= 4
    (study,) = rows_mod.images(out, "studies-*.parquet")
    (series,) = rows_mod.images(out, "series-*.parquet")
    assert study["n_out_of_distribution"] == series["n_out_of_distribution"] == n_ood
    page = open(rows_mod.result_file(out, "report.html")).read()
    assert f"{n_ood} of 6 (scores less trustworthy)" in page
    assert "AX FLAIR (series 7), image 1 p=" in page and 'out of distribution</b></figcaption>' in page
    assert 'href="heatmaps/' in page


def test_the_drift_histogram_has_one_bin_count_in_both_packages():
    from beam_pipeline import drift, summary
    from trainer import ood as trainer_ood
    assert trainer_ood.SCORE_BINS == summary.SCORE_BINS
    md = {"ood": {"validation_false_ood_rate": 0.03}, "reference_score_histogram": [1] * summary.SCORE_BINS}
    assert drift.reference_of(md) is not None
    assert drift.reference_of({**md, "reference_score_histogram": [1] * 7}) is None


def test_a_small_second_run_keeps_the_days_drift_verdict(tmp_path):
    """The report's drift banner is over the day's whole result: a second run of 5 images (too few to
    assess alone) must not turn the first run's red banner into 'Drift not assessed'."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path, threshold=0.999, ood=True)
    with zipfile.ZipFile(tmp_path / "night.zip", "w") as zf:
        for s in range(60):
            zf.writestr(f"noise/{s}.png", synth.encode(_noise(s)))
    with zipfile.ZipFile(tmp_path / "late.zip", "w") as zf:
        for s in range(5):
            zf.writestr(f"brain/{s}.png", synth.encode(synth.brain_slice(2000 + s, 64)))
    out = str(tmp_path / "out")
    argv = ["--keep-paths", "--output", out, "--model", model_dir, "--manifest", str(tmp_path / "m.json")]
    run.main(["--input", str(tmp_path / "night.zip"), *argv])
    assert run.read_summary(out)["drift"]["drifted"]
    run.main(["--input", str(tmp_path / "night.zip"), "--input", str(tmp_path / "late.zip"), *argv])
    summary = run.read_summary(out)
    assert summary["rows"] == 5 and summary["result"]["rows"] == 65
    assert summary["drift"]["assessed"] and summary["drift"]["drifted"]
    assert not summary["drift_last_run"]["assessed"]
    page = open(rows_mod.result_file(out, "report.html")).read()
    assert "Input drift" in page and "Drift not assessed" not in page

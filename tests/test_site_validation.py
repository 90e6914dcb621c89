"""brain-validate on generated labelled data, and the site profile round trip."""
import csv
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_pipeline import pseudonym, run, validate
from screening_core import metrics
from tests import rows as rows_mod
from tests import synth, tiny_model


def test_evaluate_known_answer():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60), np.zeros(140)].astype(int)
    p = np.r_[rng.uniform(0.6, 1.0, 60), rng.uniform(0.0, 0.5, 140)]  # perfectly separable
    groups = np.arange(200) // 2  # two images per patient
    r = validate.evaluate(y, p, groups, np.array([""] * 200), [True] * 200, artifact_threshold=0.55,
                          target=0.95, required_lower=0.80, bootstrap=200)
    assert r["roc_auc"] == 1.0 and r["sensitivity"] >= 0.95 - 1e-9 and r["specificity"] == 1.0
    assert r["site_threshold"] == metrics.choose_threshold(y, p, 0.95)
    assert r["at_artifact_threshold"]["sensitivity"] == 1.0 and r["meets"]
    few = validate.evaluate(y[::10], p[::10], groups[::10], np.array([""] * 20), [None] * 20, 0.55, 0.95, 0.85, 200,
                            min_patients=5, patient_known=np.ones(20, bool))  # 20 patients, one image each
    # 6 tumors, all found: the bootstrap says [1, 1]; Wilson over 6 patients says >= 0.61, so not met.
    assert few["sensitivity"] == 1.0 and abs(few["sensitivity_wilson_lower95"] - 0.610) < 0.001
    assert not few["meets"] and few["status"] == "not met" and "below the required" in few["verdict"]


def _per_patient(n_patients, slices, separable, seed=0):
    """(y, p, groups): half the patients with tumor slices, half tumor-free, `slices` images each;
    scores separate the classes, or are noise (an at-chance model)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_patients) % 2, slices)
    p = np.where(y == 1, rng.uniform(0.6, 1.0, y.size), rng.uniform(0.0, 0.4, y.size)) if separable \
        else rng.uniform(0.0, 1.0, y.size)
    return y, p, np.repeat(np.arange(n_patients), slices)


def test_an_at_chance_model_never_meets_whatever_the_sample_size():
    for n_patients, slices in ((14, 20), (60, 20), (400, 1)):
        y, p, g = _per_patient(n_patients, slices, separable=False, seed=n_patients)
        r = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300)
        assert abs(r["roc_auc"] - 0.5) < 0.1
        assert not r["meets"] and "MEETS" not in r["verdict"] and not r["site_threshold_offered"]
        # Sensitivity 0.95 on noise needs a threshold near 0: specificity ~0.05, far below the floor.
        assert r["specificity"] < 0.2 and "specificity's lower bound" in r["verdict"]


def test_a_few_patients_are_an_insufficient_sample_even_when_perfectly_separated():
    y, p, g = _per_patient(14, 20, separable=True)  # 7 + 7 patients, 280 images
    r = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300)
    assert r["roc_auc"] == 1.0 and r["status"] == "insufficient sample" and not r["meets"]
    assert "only 7 tumor patients" in r["verdict"]
    # The same 280 images each counted as a patient would pass the counts: the verdict says they are not.
    each = validate.evaluate(y, p, np.arange(y.size), np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300)
    assert each["every_image_its_own_group"] and "every image is its own group" in each["verdict"]
    assert each["status"] == "insufficient sample" and not each["meets"] and not each["site_threshold_offered"]
    assert "280 of 280 images have no known patient" in each["verdict"]
    assert "140 tumor images in 140 groups" in each["verdict"] and "patients/studies" not in each["verdict"]
    # A site that states each image is another patient (one key slice per study) is taken at its word.
    stated = validate.evaluate(y, p, np.arange(y.size), np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9,
                               300, patient_known=np.ones(y.size, bool))
    assert stated["meets"] and stated["images_without_known_patient"] == 0


def test_one_image_without_a_known_patient_keeps_a_sample_from_meeting():
    """A --group-pattern that misses a few file names leaves those images as patients of their own: the counts
    would pass on slices, so the verdict is 'insufficient sample' until every image's patient is known."""
    y, p, g = _per_patient(100, 3, separable=True)
    known = np.ones(y.size, bool)
    known[7] = False
    g = np.array([f"patient-{i}" for i in g], dtype=object)
    g[7] = "image-7"  # its group is only itself
    r = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300, patient_known=known)
    assert r["status"] == "insufficient sample" and not r["meets"]
    assert r["images_without_known_patient"] == 1 and "1 of 300 images have no known patient" in r["verdict"]
    check = next(c for c in r["checks"] if c["check"] == "patients known")
    assert not check["passed"] and check["value"] == "299 of 300"


def test_a_good_sample_of_enough_patients_meets():
    y, p, g = _per_patient(100, 3, separable=True)  # 50 + 50: Wilson over 30 found of 30 is only 0.886
    r = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300)
    assert r["status"] == "meets" and r["meets"] and r["site_threshold_offered"]
    assert all(c["passed"] for c in r["checks"])


def test_the_verdict_says_how_many_patients_the_study_flag_finds_and_how_many_tumor_free_ones_it_flags():
    """Images pass the checks, yet one stray high slice in every tumor-free patient flags them all: the verdict
    and validation.json say so by patient (not a check: it costs reading order, not safety)."""
    y, p, g = _per_patient(100, 20, separable=True)  # 50 + 50 patients, 20 images each
    stray = np.flatnonzero(y == 0)[::20]  # the first image of each tumor-free patient scores high
    p[stray] = 0.99
    r = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300)
    assert r["meets"] and r["specificity"] == pytest.approx(0.95)  # 19 of 20 images of each is clear
    assert r["by_patient"] == {"tumor_patients": 50, "tumor_patients_found": 50, "tumor_free_patients": 50,
                               "tumor_free_patients_flagged": 50}
    assert "By patient at the site threshold: 50 of 50 tumor patients found, 50 of 50 tumor-free patients flagged" \
        in r["verdict"]
    clean = validate.evaluate(y, np.where(y == 1, 0.9, 0.1), g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95,
                              0.9, 0)
    assert clean["by_patient"]["tumor_free_patients_flagged"] == 0 and "0 of 50 tumor-free patients flagged" in \
        clean["verdict"]
    mixed = validate.evaluate(y, p, g // 2, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 0)  # pairs
    assert mixed["by_patient"]["tumor_free_patients"] == 0
    assert "no patient has only tumor-free images, so the sample cannot show how often" in mixed["verdict"]


def test_a_look_is_validated_only_with_enough_patients_of_its_own_and_a_verdict_that_meets():
    y, p, g = _per_patient(100, 3, separable=True)  # 50 tumor + 50 tumor-free patients, 3 images each
    look = np.where(g < 80, "flair", "t2")  # T2: the last 20 patients only
    r = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300,
                          min_patients=20, image_looks=look)
    assert r["meets"] and set(r["by_look"]) == {"flair", "t2"}
    t2 = r["by_look"]["t2"]
    assert t2["n"] == int((look == "t2").sum()) and t2["n_positive_groups"] + t2["n_negative_groups"] == 20
    assert r["validated_looks"] == ["flair"]  # T2's 20 patients are not 20 of each class
    assert "Validated looks: <b>FLAIR</b>; too few patients of their own: T2" in validate._looks_line(r)
    chance = validate.evaluate(y, np.full(y.size, 0.5), g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9,
                               300, min_patients=20, image_looks=look)
    assert not chance["meets"] and chance["validated_looks"] == []  # no look is validated by a failed verdict


@pytest.mark.parametrize("kind,tumor_value,free_value", [("look", "t1ce", "flair"), ("plane", "sagittal", "axial")])
def test_a_sample_whose_classes_differ_by_look_or_plane_never_meets(kind, tumor_value, free_value):
    """The source confound of the public collections, at a site: tumors exported from a T1ce (sagittal) protocol,
    tumor-free images from a FLAIR (axial) one. A model that reads the look separates them perfectly; the verdict
    says the pooled figures measure the look and does not meet, however many patients there are."""
    y, p, g = _per_patient(100, 3, separable=True)
    values = np.where(y == 1, tumor_value, free_value).astype(object)
    args = (y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 100)
    r = validate.evaluate(*args, **{f"image_{kind}s": values})
    assert r["status"] == "not met" and not r["meets"] and not r["site_threshold_offered"]
    assert f"the classes differ by {kind} (distance 1.00" in r["verdict"]
    # Most images of both classes in the same look, a few tumors in another: the mix holds.
    values = np.where((y == 1) & (g % 10 == 0), tumor_value, free_value).astype(object)
    assert validate.evaluate(*args, **{f"image_{kind}s": values})["meets"]
    # Looks unknown for all but a few images ("other" / no plane): the mix is not judged.
    values = np.full(y.size, "other" if kind == "look" else None, dtype=object)
    values[:5] = tumor_value
    assert validate.evaluate(*args, **{f"image_{kind}s": values})["meets"]


def test_a_sample_the_drift_alarm_would_ring_on_never_meets():
    """The share of the sample's images the OOD guard finds unlike the training images is held to the nightly
    drift check's limit: a site whose own scans would ring the alarm every night is not validated by them."""
    y, p, g = _per_patient(100, 3, separable=True)
    args = (y, p, g, np.array([""] * y.size))
    few = np.ones(y.size, bool)
    few[::20] = False  # 5 %
    r = validate.evaluate(*args, list(few), 0.5, 0.95, 0.9, 100, ood_limit=0.10)
    assert r["meets"] and r["out_of_distribution_share"] == pytest.approx(0.05)
    many = np.ones(y.size, bool)
    many[::4] = False  # 25 %
    r = validate.evaluate(*args, list(many), 0.5, 0.95, 0.9, 100, ood_limit=0.10)
    assert r["status"] == "not met" and "25.0% of the sample's images are unlike the model's training images" in \
        r["verdict"]
    assert validate.evaluate(*args, [None] * y.size, 0.5, 0.95, 0.9, 100, ood_limit=0.10)["meets"]  # no guard


def test_the_sample_is_held_to_the_artifacts_own_drift_limit(tmp_path):
    """brain-validate reads the limit from the artifact's OOD reference (beam_pipeline.drift), as brain-score does."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path, ood=True)
    sample = tmp_path / "local_sample"
    _sample(sample)
    rng = np.random.default_rng(0)
    for i in range(6):  # noise, unlike any head the tiny model was fitted on
        (sample / "t1" / ("tumor" if i % 2 else "notumor") / f"noise_{i}.png").write_bytes(
            synth.encode(rng.integers(0, 255, (32, 32), dtype=np.uint8)))
    out = tmp_path / "validation"
    assert validate.main(["--sample", str(sample), "--output", str(out), "--model", model_dir, "--bootstrap", "50",
                          "--one-image-per-patient"]) == 3
    result = json.load(open(out / "validation.json"))
    check = next(c for c in result["checks"] if c["check"] == "out-of-distribution share")
    from beam_pipeline import drift, model_store
    limit = drift.ood_limit(drift.reference_of(model_store.metadata(model_dir)))
    share = result["out_of_distribution_share"]
    assert share > limit and not check["passed"]  # six noise images of 22: over a quarter of the sample
    assert f"the nightly drift alarm rings above {limit:.0%}" in result["verdict"]
    assert "every image is its own group" not in result["verdict"]  # stated: each image is a patient


def _strata_sample(seed=0):
    """(y, p, groups, strata): 400 patients the model separates (stratum "a") and 40 more (20 + 20, stratum "b")
    whose tumor-free images it all flags: pooled, specificity is still 200/220."""
    y, p, g = _per_patient(400, 2, separable=True, seed=seed)
    yb, pb, gb = _per_patient(40, 2, separable=True, seed=seed + 1)
    pb = np.where(yb == 0, 0.99, pb)  # b's tumor-free images score above every tumor
    return (np.r_[y, yb], np.r_[p, pb], np.r_[g, gb + 400], np.r_[np.full(y.size, "a"), np.full(yb.size, "b")])


@pytest.mark.parametrize("kind", ["look", "plane"])
def test_a_look_or_plane_the_model_fails_fails_the_verdict_though_the_pooled_figures_pass(kind):
    y, p, g, stratum = _strata_sample()
    names = {"look": {"a": "flair", "b": "t2"}, "plane": {"a": "axial", "b": "sagittal"}}[kind]
    values = np.array([names[v] for v in stratum], dtype=object)
    args = (y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 200)
    pooled = validate.evaluate(*args, min_patients=20)
    assert pooled["meets"] and pooled["specificity"] > 0.9  # without strata the failure is invisible
    r = validate.evaluate(*args, min_patients=20, **{f"image_{kind}s": values})
    bad = names["b"]
    assert not r["meets"] and r["status"] == "not met"
    assert r[f"by_{kind}"][bad]["specificity"] == 0.0 and r[f"validated_{kind}s"] == []
    label = "T2" if kind == "look" else "sagittal plane"
    assert f"{label}: specificity 0.000 is below 0.500 (20 tumor, 20 tumor-free patients)" in r["verdict"]
    assert {"check": "looks and planes on their own", "passed": False, "value": "1 of 2 fail"} in r["checks"]
    # Without the failing stratum's images the rest validates, and only its own stratum.
    keep = values == names["a"]
    rest = validate.evaluate(y[keep], p[keep], g[keep], np.array([""] * keep.sum()), [None] * keep.sum(), 0.5, 0.95,
                             0.9, 200, min_patients=20, **{f"image_{kind}s": values[keep]})
    assert rest["meets"] and rest[f"validated_{kind}s"] == [names["a"]]
    # Too few patients of its own: the stratum is listed, neither checked nor validated.
    few = validate.evaluate(*args, min_patients=21, **{f"image_{kind}s": values})
    assert few["meets"] and few[f"validated_{kind}s"] == [names["a"]]
    assert f"too few patients of their own: {label.split()[0] if kind == 'plane' else 'T2'}" in \
        validate._strata_line(few, kind, (lambda k: k) if kind == "plane" else (lambda k: validate.looks.NAMES[k]))


def test_join_reads_each_rows_plane():
    rows = [{"status": "ok", "sop_instance_uid": f"u{i}", "tumor_probability": 0.1 * i, "plane": plane,
             "series_description": "T2 TSE"} for i, plane in enumerate(("axial", "sagittal", None))]
    labels = {"u0": (1, "g0", ""), "u1": (0, "g1", ""), "u2": (0, "g2", "")}
    *_, image_looks, image_planes, _ = validate.join(rows, "sop_instance_uid", labels)
    assert image_planes.tolist() == ["axial", "sagittal", None] and image_looks.tolist() == ["t2"] * 3


def test_a_sample_without_known_planes_makes_no_claim_about_planes():
    y, p, g = _per_patient(100, 3, separable=True)
    r = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300,
                          image_planes=np.array([None] * y.size, dtype=object))
    assert r["meets"] and r["validated_planes"] is None and r["by_plane"] == {}
    assert "No plane is known in this sample" in validate._looks_line(r)


def test_a_dicom_sample_is_validated_by_plane_and_the_profile_lists_its_planes(tmp_path):
    """brain-validate --sample on DICOM: each image's plane comes from its orientation through the scored rows, the
    verdict's strata hold them, and the profile (here forced) carries validated_planes."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    from beam_pipeline import sample_data
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    sample = tmp_path / "dicom_sample"
    for i in range(8):
        cls, iop = ("tumor" if i % 2 else "notumor"), ([1, 0, 0, 0, 1, 0] if i < 4 else [0, 1, 0, 0, 0, -1])
        folder = sample / cls / f"P{i}"
        folder.mkdir(parents=True)
        study, series = generate_uid(), generate_uid()
        for k in range(2):
            ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(sample_data.synthetic_slice(i * 2 + k, 64), i,
                                                                     study, series, k + 1)))
            ds.ImageOrientationPatient = iop
            ds.save_as(str(folder / f"{k}.dcm"), enforce_file_format=True)
    out = tmp_path / "validation"
    assert validate.main(["--sample", str(sample), "--output", str(out), "--model", model_dir, "--bootstrap", "50",
                          "--min-patients", "2", "--force"]) in (0, 3)
    result = json.load(open(out / "validation.json"))
    assert {k: (m["n"], m["n_positive_groups"], m["n_negative_groups"]) for k, m in result["by_plane"].items()} == {
        "axial": (8, 2, 2), "sagittal": (8, 2, 2)}
    profile = json.load(open(out / "site_profile.json"))
    assert profile["validated_planes"] == result["validated_planes"] and isinstance(profile["validated_planes"], list)
    assert 'id="by-plane"' in open(out / "validation.html").read()


def test_patients_from_a_pattern_or_their_folder():
    import re
    rx = re.compile(r"^(.+)_\d+\.png$")
    assert validate.patient_of("tumor/case07_12.png", rx) == validate.patient_of("notumor/case07_80.png", rx)
    assert validate.patient_of("tumor/P7/1.png") == validate.patient_of("notumor/P7/9.png") == "folder:P7"
    assert validate.patient_of("flair/tumor/1.png") is None  # held by a class folder: its own group
    names = ["tumor/case07_12.png", "notumor/case07_80.png", "tumor/dm_case_3.jpg", "notumor/x/scan.png"]
    assert validate.unmatched_names(names, rx) == 2  # a pattern that fits some names only is counted


def _sample(root, n=16):
    for i in range(n):
        cls = "tumor" if i % 2 else "notumor"
        seq = "flair" if i % 4 < 2 else "t1"
        path = root / seq / cls / f"MRN{1000 + i}_slice.png"  # patient identifiers in names
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synth.encode(synth.brain_slice(i, 32, lesion=bool(i % 2))))


def test_validate_a_sample_folder_then_apply_the_site_profile(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    sample = tmp_path / "local_sample"
    _sample(sample)
    out = tmp_path / "validation"
    code = validate.main(["--sample", str(sample), "--output", str(out), "--model", model_dir, "--bootstrap", "100"])
    assert code == 3  # 16 images, each its own patient: never "meets"
    assert not (out / "site_profile.json").exists()
    assert "every image is its own group" in capsys.readouterr().err
    code = validate.main(["--sample", str(sample), "--output", str(out), "--model", model_dir, "--bootstrap", "100",
                          "--force"])
    assert code == 3
    result = json.load(open(out / "validation.json"))
    assert result["status"] == "insufficient sample" and result["n_positive_groups"] == 8
    assert result["n_images"] == 16 and result["n_positive"] == 8 and result["unmatched_labels"] == 0
    assert set(result["by_subgroup"]) == {"flair", "t1"}
    assert set(result["by_look"]) == {"flair", "t1"} and result["validated_looks"] == []  # from the sample's folders
    assert result["by_plane"] == {} and result["validated_planes"] is None  # PNG has no plane: no claim either way
    # Known answer: the AUC of the scored rows against the folder labels, computed here independently.
    summary = run.read_summary(str(out / "scores"))
    rows = pq.read_table(summary["result"]["output_files"]).to_pylist()
    assert len(rows) == 16
    ps = pseudonym.Pseudonymiser(pseudonym.load_or_create_key(os.environ["BRAIN_SCREENING_PSEUDONYM_KEY"]))
    label_of = {ps.uri(os.path.join(d, f)): int(os.path.basename(d) == "tumor")
                for d, _, files in os.walk(sample) for f in files}
    assert not any("MRN" in r["source_uri"] for r in rows)  # pseudonymised as in every run
    y = [label_of[r["source_uri"]] for r in rows]
    assert abs(result["roc_auc"] - metrics.roc_auc(y, [r["tumor_probability"] for r in rows])) < 1e-9
    page = open(out / "validation.html").read()
    assert 'id="verdict"' in page and 'id="calibration"' in page and "MRN" not in page
    assert 'id="roc"' in page and 'id="confusion"' in page
    cases = result["cases"]  # at the site threshold, recomputed here from the rows
    p_of = {r["source_uri"]: r["tumor_probability"] for r in rows}
    missed = sorted(p for k, p in p_of.items() if label_of[k] == 1 and p < result["site_threshold"])
    false_pos = sorted((p for k, p in p_of.items() if label_of[k] == 0 and p >= result["site_threshold"]),
                       reverse=True)
    assert [c["probability"] for c in cases["missed_tumors"]] == pytest.approx(missed[:validate.MAX_CASES])
    assert [c["probability"] for c in cases["worst_false_positives"]] == pytest.approx(false_pos[:validate.MAX_CASES])
    shown = len(cases["missed_tumors"]) + len(cases["worst_false_positives"])
    assert shown and page.count('alt="model input"') == shown  # each with the image it was scored on
    profile = json.load(open(out / "site_profile.json"))
    assert profile["threshold"] == result["site_threshold"] and profile["model_sha256"] in open(
        os.path.join(model_dir, "metadata.json")).read()
    assert profile["forced"] and not profile["meets"] and profile["validated_looks"] == []
    assert profile["validated_planes"] is None

    # brain-score --site-profile refuses a profile that did not meet its checks, unless forced (recorded)
    img = tmp_path / "night.png"
    img.write_bytes(synth.encode(synth.brain_slice(99, 32)))
    night = tmp_path / "night"
    argv = ["--input", str(img), "--output", str(night), "--model", model_dir,
            "--site-profile", str(out / "site_profile.json")]
    assert run.main(argv) == 2
    assert "did not meet its checks" in capsys.readouterr().err
    assert run.main(argv + ["--force-site-profile"]) == 0
    (row,) = rows_mod.images(night)
    assert abs(row["threshold"] - profile["threshold"]) < 1e-6
    assert row["threshold_source"].startswith("site_profile:") and row["threshold_source"].endswith(":forced")
    # An edited profile (a friendlier threshold, a verdict changed to "meets") is refused outright.
    edited = dict(profile, threshold=0.9, meets=True, forced=False)
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    assert run.main(["--input", str(img), "--output", str(tmp_path / "e"), "--model", model_dir,
                     "--site-profile", str(tmp_path / "edited.json"), "--force-site-profile"]) == 2
    assert "was edited" in capsys.readouterr().err
    argv = argv + ["--force-site-profile"]
    assert run.main(argv + ["--threshold", "0.5"]) == 2
    assert "both set a threshold" in capsys.readouterr().err
    other = tiny_model.write_tiny_artifact(tmp_path / "other", seed=7)
    assert run.main(["--input", str(img), "--output", str(tmp_path / "night2"), "--model", other,
                     "--site-profile", str(out / "site_profile.json"), "--force-site-profile"]) == 2
    assert "not for this model" in capsys.readouterr().err


def test_the_verdict_counts_images_without_a_patient_and_labelled_images_it_could_not_score(tmp_path):
    """Flat class folders name no patient: the sample is insufficient, whatever its size, unless the site states
    that every image is another patient; a labelled image the pipeline skips (blank) is named in the verdict."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    sample = tmp_path / "local_sample"
    _sample(sample)
    (sample / "flair" / "tumor" / "MRN9999_blank.png").write_bytes(synth.encode(np.zeros((32, 32), np.uint8)))
    out = tmp_path / "validation"
    args = ["--sample", str(sample), "--output", str(out), "--model", model_dir, "--bootstrap", "50"]
    assert validate.main(args) == 3
    result = json.load(open(out / "validation.json"))
    assert result["images_without_known_patient"] == 16 and result["status"] == "insufficient sample"
    assert "16 of 16 images have no known patient" in result["verdict"]
    assert result["unmatched_labels"] == 1 and "1 labelled image was not scored" in result["verdict"]
    assert "MRN" not in result["verdict"]
    assert validate.main([*args, "--one-image-per-patient"]) == 3  # 8 + 8 patients: still too few
    result = json.load(open(out / "validation.json"))
    assert result["images_without_known_patient"] == 0 and "no known patient" not in result["verdict"]
    assert result["n_positive_groups"] == 8 and result["one_image_per_patient_stated"]
    assert "as --one-image-per-patient stated" in result["verdict"]  # the reader sees what the counts rest on


def test_validate_scores_of_an_earlier_run_with_a_labels_csv(tmp_path):
    """Labels made from the scores themselves: the answer (AUC 1, the site threshold) is known."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    for i in range(30):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.png").write_bytes(synth.encode(synth.brain_slice(i, 32, lesion=bool(i % 3))))
    scores = tmp_path / "scores"
    assert run.main(["--input", str(tmp_path / "in"), "--output", str(scores), "--model", model_dir]) == 0
    rows = rows_mod.images(scores)
    median = float(np.median([r["tumor_probability"] for r in rows]))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source_uri", "label"])
        for r in rows:
            w.writerow([r["source_uri"], "tumor" if r["tumor_probability"] > median else "no_tumor"])
    out = tmp_path / "v"
    validate.main(["--scores", str(scores), "--labels", str(labels), "--output", str(out), "--model", model_dir,
                   "--bootstrap", "100"])
    result = json.load(open(out / "validation.json"))
    y = np.array([r["tumor_probability"] > median for r in rows])
    p = np.array([r["tumor_probability"] for r in rows])
    assert result["roc_auc"] == 1.0 and result["n_images"] == 30
    assert result["site_threshold"] == metrics.choose_threshold(y, p, 0.95)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx,1\n")
    assert validate.main(["--scores", str(scores), "--labels", str(bad), "--output", str(out),
                          "--model", model_dir]) == 2


def test_the_report_says_whether_this_site_validated_the_model(tmp_path):
    from beam_pipeline import model_store, site_profile
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(3, 32)))

    def page(*extra):
        out = tmp_path / f"o{len(os.listdir(tmp_path))}"
        assert run.main(["--input", str(img), "--output", str(out), "--model", model_dir, *extra]) == 0
        return open(rows_mod.result_file(out, "report.html")).read()

    unvalidated = page()
    assert 'id="validation" class="drift-warning"' in unvalidated and "Not validated at this site" in unvalidated
    metadata = model_store.metadata(model_dir)
    for meets, name in ((True, "good.json"), (False, "failed.json")):
        profile = site_profile.build(metadata, 0.4, 0.95, {"n_images": 200, "n_positive": 100, "meets": meets,
                                                            "forced": not meets})
        site_profile.write(profile, str(tmp_path / name))
    good = page("--site-profile", str(tmp_path / "good.json"))
    assert 'class="validated"' in good and "Not validated" not in good
    assert "Looks validated" not in good  # a profile written before profiles listed their looks: no claim
    profile = site_profile.build(metadata, 0.01, 0.95, {"n_images": 200, "n_positive": 100, "meets": True,
                                                        "forced": False, "validated_looks": ["flair"]})
    site_profile.write(profile, str(tmp_path / "flair_only.json"))
    t2 = tmp_path / "t2" / "tumor"
    t2.mkdir(parents=True)
    (t2 / "x.png").write_bytes(synth.encode(synth.brain_slice(3, 32)))
    out = tmp_path / "looks"
    assert run.main(["--input", str(tmp_path / "t2"), "--output", str(out), "--model", model_dir,
                     "--site-profile", str(tmp_path / "flair_only.json"), "--keep-paths"]) == 0
    looks_page = open(rows_mod.result_file(out, "report.html")).read()
    assert "Looks validated: FLAIR; flagged series of other looks are marked." in looks_page
    assert "(T2: not validated at this site)" in looks_page  # beside the flagged T2 series
    # Without --keep-paths the folder is a pseudonym, but the look was read from its name first: rows, series and
    # the worklist carry it, and the caveat stands beside the flag as before.
    hidden = tmp_path / "looks_hidden"
    assert run.main(["--input", str(tmp_path / "t2"), "--output", str(hidden), "--model", model_dir,
                     "--site-profile", str(tmp_path / "flair_only.json")]) == 0
    assert [r["look"] for r in rows_mod.images(hidden)] == ["t2"]
    assert [s["look"] for s in rows_mod.images(hidden, "series-*.parquet")] == ["t2"]
    (study,) = rows_mod.images(hidden, "studies-*.parquet")
    assert len(study["flagged_series"]) == 1 and study["flagged_series"][0].endswith(" [T2]")
    assert "t2" not in study["flagged_series"][0].lower().replace("[t2]", "")  # the folder name itself stays hidden
    hidden_page = open(rows_mod.result_file(hidden, "report.html")).read()
    assert hidden_page.count("(T2: not validated at this site)") == 2  # worklist and flagged series
    forced = page("--site-profile", str(tmp_path / "failed.json"), "--force-site-profile")
    assert "Not validated at this site" in forced and "forced onto this run" in forced
    # A validation that met only after its checks were lowered says so wherever its profile is applied.
    profile = site_profile.build(metadata, 0.4, 0.95, {"n_images": 200, "n_positive": 100, "meets": True,
                                                       "forced": False, "relaxed_checks": [
                                                           "sensitivity lower bound 0.8 (default 0.9)"]})
    site_profile.write(profile, str(tmp_path / "relaxed.json"))
    relaxed = page("--site-profile", str(tmp_path / "relaxed.json"))
    assert 'class="validated"' in relaxed
    assert "<b>Its checks were relaxed:</b> sensitivity lower bound 0.8 (default 0.9)." in relaxed
    assert "relaxed" not in good


def test_lowered_checks_are_named_in_the_verdict_and_the_profile_and_a_chance_auc_floor_is_refused(tmp_path):
    import argparse
    args = argparse.Namespace(target_sensitivity=0.95, required_lower_bound=0.8, specificity_floor=0.5,
                              auc_floor=0.85, min_patients=10)
    assert validate.relaxed_checks(args) == ["sensitivity lower bound 0.8 (default 0.9)",
                                             "patients of each class 10 (default 20)"]  # stricter AUC floor: not named
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    sample = tmp_path / "local_sample"
    _sample(sample)
    out = tmp_path / "validation"
    base = ["--sample", str(sample), "--output", str(out), "--model", model_dir, "--bootstrap", "50"]
    assert validate.main([*base, "--auc-floor", "0.5"]) == 2  # a coin meets a floor at chance
    assert validate.main([*base, "--min-patients", "5", "--force"]) == 3
    result = json.load(open(out / "validation.json"))
    assert result["relaxed_checks"] == ["patients of each class 5 (default 20)"]
    assert "NOTE: checks relaxed below their defaults: patients of each class 5 (default 20)." in result["verdict"]
    assert json.load(open(out / "site_profile.json"))["relaxed_checks"] == result["relaxed_checks"]


def test_an_ensembles_member_is_not_validated_unless_allowed(tmp_path, capsys):
    """A site profile for a member would let a site screen with it; the page says what it is when allowed."""
    from screening_core import artifact
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    artifact.mark_member(model_dir, ["brain-tumor-cnn/29"], "scored only beside the maps")
    sample = tmp_path / "local_sample"
    _sample(sample)
    out = tmp_path / "validation"
    base = ["--sample", str(sample), "--output", str(out), "--model", model_dir, "--bootstrap", "50"]
    assert validate.main(base) == 2
    assert "not a screening model alone: scored only beside the maps" in capsys.readouterr().err
    assert not (out / "validation.json").exists()
    assert validate.main([*base, "--allow-member-model"]) == 3  # 16 images, each its own patient
    assert 'id="member-model"' in open(out / "validation.html").read()
    # A --model that is no artifact is the same kind of answer, not a traceback
    assert validate.main(["--sample", str(sample), "--output", str(out), "--model", str(tmp_path / "nothing")]) == 2
    assert f"error: model: model artifact {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err

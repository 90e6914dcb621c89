"""Model v9's graph: the lesion model's map and a classifier's probability, combined as independent evidence."""
import os

import numpy as np
import pytest

from tests import synth, tiny_model


def _logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log(1 - p)


def _write_ensemble(model, tmp_path):
    """The ensemble graph as a sealed lesion-head artifact (what the pipeline and the exporter read)."""
    from screening_core import artifact, preprocessing
    version_dir = str(tmp_path / "models" / "ens" / "1")
    artifact.write_artifact(model, version_dir, dict(
        name="ens", version="1", input_spec=preprocessing.InputSpec(32, 32), class_names=["no_tumor", "tumor"],
        threshold=0.01, target_sensitivity=0.98, validation_metrics={}, data_fingerprint="none",
        training_config={}, extra={"head": "lesion_map"}))
    return version_dir


def _saves_loads_and_exports(model, x, tmp_path):
    """The graph saves, loads in safe mode (as the scoring worker loads it) and exports to ONNX with parity."""
    import keras

    from trainer import export
    path = str(tmp_path / "e.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
    version_dir = _write_ensemble(model, tmp_path)
    entry = export.export(version_dir)
    assert entry["max_abs_probability_difference"] <= export.PARITY_TOLERANCE
    return version_dir, entry


def test_the_ensemble_adds_log_odds_and_keeps_the_lesion_map(tmp_path):
    import keras

    from screening_core import artifact, gradcam, preprocessing
    from trainer import ensemble
    lesion_dir = tiny_model.write_tiny_artifact(tmp_path / "l", lesion_bias=-1.0)
    classifier_dir = tiny_model.write_tiny_artifact(tmp_path / "c", seed=3)
    model, info = ensemble.build(lesion_dir, classifier_dir)
    assert set(info["members"]) == {"lesion_map", "classifier"}
    x = np.stack([preprocessing.prepare(synth.brain_slice(s, 48, lesion=bool(s % 2)).astype(np.float32),
                                        preprocessing.InputSpec(32, 32)) for s in range(6)])
    lesion, _ = artifact.load(lesion_dir)
    classifier, _ = artifact.load(classifier_dir)
    p_l = lesion.predict_on_batch(x).ravel()
    p_c = classifier.predict_on_batch(x).ravel()
    expected = 1 / (1 + np.exp(-(_logit(p_l) + _logit(p_c))))
    got = model.predict_on_batch(x)
    assert got.shape == (6, 1) and tuple(model.output.shape) == (None, 1)  # one probability per slice
    np.testing.assert_allclose(got.ravel(), expected, atol=1e-5)
    assert not np.allclose(expected, p_l) and not np.allclose(expected, p_c)  # both members count
    # the map, the OOD layers and the lesion head are the lesion model's, under the names scorers look up
    assert gradcam.is_lesion_model(model)
    for name in ("lesion_map", "enc1_pool", "last_conv"):
        model.get_layer(name)
    from screening_core import ood
    assert {"enc1_pool", "cls_block1_pool", "last_conv"} <= set(ood.layer_names(model))  # both members' features
    maps = keras.Model(model.inputs, model.get_layer("lesion_map").output).predict_on_batch(x)
    np.testing.assert_allclose(maps, keras.Model(lesion.inputs, lesion.get_layer("lesion_map").output)
                               .predict_on_batch(x), atol=1e-6)
    # saved and loaded in safe mode, as the scoring worker loads it
    path = str(tmp_path / "e.keras")
    model.save(path)
    from screening_core import evidence  # noqa: F401
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)


def test_members_must_share_one_input_size_and_may_come_from_other_preprocessing_versions(tmp_path, capsys):
    """Row BOX2 put a classifier trained on prepare() v3 beside members trained on v1: the ensemble is scored on the version
    its evaluation names, so only the input size must match."""
    from screening_core import artifact, preprocessing
    from trainer import ensemble
    lesion_dir = tiny_model.write_tiny_artifact(tmp_path / "l", size=32, lesion_bias=-1.0)
    classifier_dir = tiny_model.write_tiny_artifact(tmp_path / "c", size=48)
    with pytest.raises(SystemExit, match="different inputs"):
        ensemble.build(lesion_dir, classifier_dir)
    older = tiny_model.write_tiny_artifact(tmp_path / "v1", size=32)
    artifact.update_metadata(older, lambda m: m["input_spec"].__setitem__("preprocessing", "gray-headcrop-pnorm-v1"))
    model, info = ensemble.build(lesion_dir, older)
    assert model.input_shape == (None, 32, 32, 1)
    out = capsys.readouterr().out
    assert "was trained on" in out and "gray-headcrop-pnorm-v1" in out and preprocessing.PREPROCESSING_ID in out
    with pytest.raises(SystemExit, match="not a lesion-map model"):
        ensemble.build(classifier_dir, classifier_dir)


def test_an_ensemble_artifact_scores_in_the_pipeline_with_lesion_overlays(tmp_path):
    from beam_pipeline import run
    from tests import rows as rows_mod
    from trainer import ensemble
    model, _ = ensemble.build(tiny_model.write_tiny_artifact(tmp_path / "l", lesion_bias=2.0),
                              tiny_model.write_tiny_artifact(tmp_path / "c", seed=3))
    version_dir = _write_ensemble(model, tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for s in range(3):
        (inputs / f"s{s}.png").write_bytes(synth.encode(synth.brain_slice(s, 48)))
    run.run(["--input", str(inputs), "--output", str(tmp_path / "out"), "--model", version_dir])
    got = rows_mod.images(str(tmp_path / "out"))
    assert len(got) == 3 and all(r["status"] == "ok" for r in got)
    assert all(r["lesion_area_px"] is not None for r in got)  # the lesion head's review columns are filled


def test_the_classifier_can_be_moved_part_way_to_its_fine_tune(tmp_path):
    """--fine-tuned/--alpha (WiSE-FT): alpha 0 is the base classifier, 1 the fine-tune, and in between
    every weight (batch-norm statistics too) lies that share of the way; a foreign architecture is refused."""
    from screening_core import artifact
    from trainer import ensemble
    lesion_dir = tiny_model.write_tiny_artifact(tmp_path / "l", lesion_bias=-1.0)
    base_dir = tiny_model.write_tiny_artifact(tmp_path / "c", seed=3)
    tuned_dir = tiny_model.write_tiny_artifact(tmp_path / "t", seed=5)
    base, _ = artifact.load(base_dir)
    tuned, _ = artifact.load(tuned_dir)
    wa, wb = base.get_weights(), tuned.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(wa, wb, strict=True))

    def classifier_weights(alpha):
        model, info = ensemble.build(lesion_dir, base_dir, tuned_dir, alpha)
        assert info["members"]["classifier"]["moved_towards"]["alpha"] == alpha
        return [w for layer in base.layers if layer.weights
                for w in model.get_layer(ensemble.CLASSIFIER_PREFIX + layer.name).get_weights()]

    assert len([w for layer in base.layers for w in layer.get_weights()]) == len(wa)
    for alpha in (0.0, 0.3, 1.0):
        got = classifier_weights(alpha)
        for g, a, b in zip(got, wa, wb, strict=True):
            np.testing.assert_allclose(g, (1 - alpha) * a + alpha * b, rtol=1e-5, atol=1e-6)
    lesion_as_classifier = tiny_model.write_tiny_artifact(tmp_path / "x", lesion_bias=-1.0)
    with pytest.raises(SystemExit, match="not the base classifier's architecture"):
        ensemble.build(lesion_dir, base_dir, lesion_as_classifier, 0.3)
    with pytest.raises(SystemExit, match=r"in \[0, 1\]"):
        ensemble.build(lesion_dir, base_dir, tuned_dir, 1.5)


def _image_dependent_lesion(tmp_path, name, seed):
    """A tiny lesion-map artifact whose map depends on the image (the tiny one's is flat)."""
    from screening_core import artifact, preprocessing
    lesion, _ = artifact.load(tiny_model.write_tiny_artifact(tmp_path / f"{name}_tiny", lesion_bias=-1.0, seed=seed))
    head = lesion.get_layer("lesion_logits")
    kernel, bias = head.get_weights()
    head.set_weights([np.random.default_rng(seed).normal(0, 2.0, kernel.shape).astype(np.float32), bias])
    lesion_dir = str(tmp_path / name / "1")
    artifact.write_artifact(lesion, lesion_dir, dict(
        name=name, version="1", input_spec=preprocessing.InputSpec(32, 32), class_names=["no_tumor", "tumor"],
        threshold=0.5, target_sensitivity=0.98, validation_metrics={}, data_fingerprint="none",
        training_config={}, extra={"head": "lesion_map"}))
    return lesion_dir


def test_mirrored_members_average_the_image_and_its_mirror_and_export_to_onnx(tmp_path):
    """--mirror: each mirrored member's log-odds are the mean of its two passes (the image as given and
    mirrored left to right), so with both members mirrored an image and its mirror get one score; the
    overlays' map and the OOD layers stay the first pass's; the graph saves, loads and exports with parity."""
    import keras

    from screening_core import artifact, ood, preprocessing
    from trainer import ensemble, export
    lesion_dir = _image_dependent_lesion(tmp_path, "lesion", seed=7)
    lesion, _ = artifact.load(lesion_dir)
    classifier_dir = tiny_model.write_tiny_artifact(tmp_path / "c", seed=3)
    classifier, _ = artifact.load(classifier_dir)
    x = np.stack([preprocessing.prepare(synth.brain_slice(s, 48, lesion=bool(s % 2)).astype(np.float32),
                                        preprocessing.InputSpec(32, 32)) for s in range(6)])
    x[:, :, :10] *= 0.5  # a lopsided image: its mirror is another image
    mirror = x[:, :, ::-1]

    def logits(model, images):
        return _logit(model.predict_on_batch(images).ravel())

    l_plain, l_mirror = logits(lesion, x), logits(lesion, mirror)
    c_plain, c_mirror = logits(classifier, x), logits(classifier, mirror)
    assert np.abs(l_plain - l_mirror).max() > 1e-3 and np.abs(c_plain - c_mirror).max() > 1e-3
    expected = {"none": c_plain + l_plain, "lesion": c_plain + (l_plain + l_mirror) / 2,
                "classifier": (c_plain + c_mirror) / 2 + l_plain, "both": (c_plain + c_mirror + l_plain + l_mirror) / 2}
    for mode, z in expected.items():
        model, info = ensemble.build(lesion_dir, classifier_dir, mirror=mode)
        got = model.predict_on_batch(x)
        assert got.shape == (6, 1) and tuple(model.output.shape) == (None, 1), mode  # one probability per slice
        got = got.ravel()
        np.testing.assert_allclose(got, 1 / (1 + np.exp(-z)), atol=1e-5, err_msg=mode)
        assert info["members"]["lesion_map"]["mirrored"] == (mode in ("lesion", "both"))
    np.testing.assert_allclose(model.predict_on_batch(mirror).ravel(), got, atol=1e-5)  # "both": one score
    maps = keras.Model(model.inputs, model.get_layer("lesion_map").output).predict_on_batch(x)
    np.testing.assert_allclose(maps, keras.Model(lesion.inputs, lesion.get_layer("lesion_map").output)
                               .predict_on_batch(x), atol=1e-6)  # the map of the image as given
    assert not [n for n in ood.layer_names(model) if n.startswith(ensemble.MIRROR_PREFIX)]
    version_dir = _write_ensemble(model, tmp_path)
    again, _ = artifact.load(version_dir)
    np.testing.assert_allclose(again.predict_on_batch(x).ravel(), got, atol=1e-6)
    assert export.export(version_dir)["max_abs_probability_difference"] <= export.PARITY_TOLERANCE
    with pytest.raises(SystemExit, match="--mirror is one of"):
        ensemble.build(lesion_dir, classifier_dir, mirror="lesions")


def test_a_second_lesion_map_joins_with_the_maps_log_odds_averaged(tmp_path):
    import keras

    from screening_core import artifact, preprocessing
    from trainer import ensemble
    first = tiny_model.write_tiny_artifact(tmp_path / "l", lesion_bias=-1.0)
    second = tiny_model.write_tiny_artifact(tmp_path / "m", lesion_bias=1.5)
    classifier_dir = tiny_model.write_tiny_artifact(tmp_path / "c", seed=3)
    model, info = ensemble.build(first, classifier_dir, more_lesions=[second])
    assert set(info["members"]) == {"lesion_map", "lesion_map_2", "classifier"}
    x = np.stack([preprocessing.prepare(synth.brain_slice(s, 48, lesion=bool(s % 2)).astype(np.float32),
                                        preprocessing.InputSpec(32, 32)) for s in range(4)])
    p = {d: artifact.load(d)[0].predict_on_batch(x).ravel() for d in (first, second, classifier_dir)}
    expected = 1 / (1 + np.exp(-(_logit(p[classifier_dir]) + 0.5 * (_logit(p[first]) + _logit(p[second])))))
    np.testing.assert_allclose(model.predict_on_batch(x).ravel(), expected, atol=1e-5)
    # the overlays' map is the first member's, under its own name; the second's layers carry a prefix
    lesion = artifact.load(first)[0]
    np.testing.assert_allclose(keras.Model(model.inputs, model.get_layer("lesion_map").output).predict_on_batch(x),
                               keras.Model(lesion.inputs, lesion.get_layer("lesion_map").output).predict_on_batch(x),
                               atol=1e-6)
    model.get_layer("les2_lesion_map")
    path = str(tmp_path / "e.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)
    with pytest.raises(SystemExit, match="not a lesion-map model"):
        ensemble.build(first, classifier_dir, more_lesions=[classifier_dir])


def test_mirror_both_with_two_maps_mirrors_every_member_and_exports_to_onnx(tmp_path):
    """v21's shape (two maps and the classifier) with --mirror both: each member's log-odds are the mean of
    its two passes, the maps' means averaged, so an image and its mirror get one score; ONNX keeps parity."""
    from screening_core import artifact, preprocessing
    from trainer import ensemble, export
    first, second = _image_dependent_lesion(tmp_path, "a", seed=7), _image_dependent_lesion(tmp_path, "b", seed=11)
    classifier_dir = tiny_model.write_tiny_artifact(tmp_path / "c", seed=3)
    x = np.stack([preprocessing.prepare(synth.brain_slice(s, 48, lesion=bool(s % 2)).astype(np.float32),
                                        preprocessing.InputSpec(32, 32)) for s in range(6)])
    x[:, :, :10] *= 0.5  # lopsided: its mirror is another image
    mirror = x[:, :, ::-1]
    z = {d: [_logit(artifact.load(d)[0].predict_on_batch(im).ravel()) for im in (x, mirror)]
         for d in (first, second, classifier_dir)}
    for d in (first, second):
        assert np.abs(z[d][0] - z[d][1]).max() > 1e-3
    mean = {d: (a + b) / 2 for d, (a, b) in z.items()}
    model, info = ensemble.build(first, classifier_dir, mirror="both", more_lesions=[second])
    expected = 1 / (1 + np.exp(-(mean[classifier_dir] + (mean[first] + mean[second]) / 2)))
    np.testing.assert_allclose(model.predict_on_batch(x).ravel(), expected, atol=1e-5)
    np.testing.assert_allclose(model.predict_on_batch(mirror).ravel(), expected, atol=1e-5)
    assert all(m["mirrored"] for m in info["members"].values())
    lesion_only, info = ensemble.build(first, classifier_dir, mirror="lesion", more_lesions=[second])
    expected = 1 / (1 + np.exp(-(z[classifier_dir][0] + (mean[first] + mean[second]) / 2)))
    np.testing.assert_allclose(lesion_only.predict_on_batch(x).ravel(), expected, atol=1e-5)
    assert {n: m["mirrored"] for n, m in info["members"].items()} == {
        "lesion_map": True, "lesion_map_2": True, "classifier": False}
    version_dir = _write_ensemble(model, tmp_path)
    assert export.export(version_dir)["max_abs_probability_difference"] <= export.PARITY_TOLERANCE


def test_a_second_classifier_joins_with_the_classifiers_log_odds_averaged(tmp_path):
    """Two classifiers of different lineage and one map: z = (c1 + c2) / 2 + map; the second classifier is
    used as it is (never moved towards --fine-tuned), its layers under cls2_; a map given as a classifier, or a
    classifier of another input size, is refused."""
    import json

    from screening_core import artifact, preprocessing
    from trainer import ensemble
    lesion = _image_dependent_lesion(tmp_path, "a", seed=7)
    first = tiny_model.write_tiny_artifact(tmp_path / "c", seed=3)
    second = tiny_model.write_tiny_artifact(tmp_path / "d", seed=5)
    x = np.stack([preprocessing.prepare(synth.brain_slice(s, 48, lesion=bool(s % 2)).astype(np.float32),
                                        preprocessing.InputSpec(32, 32)) for s in range(6)])
    z = {d: _logit(artifact.load(d)[0].predict_on_batch(x).ravel()) for d in (lesion, first, second)}
    assert np.abs(z[first] - z[second]).max() > 1e-3
    model, info = ensemble.build(lesion, first, more_classifiers=[second])
    expected = 1 / (1 + np.exp(-((z[first] + z[second]) / 2 + z[lesion])))
    np.testing.assert_allclose(model.predict_on_batch(x).ravel(), expected, atol=1e-5)
    assert info["members"]["classifier_2"]["layer_prefix"] == "cls2_"
    model.get_layer("cls2_" + artifact.load(second)[0].layers[-1].name)
    with pytest.raises(SystemExit, match="not a slice classifier"):
        ensemble.build(lesion, first, more_classifiers=[lesion])
    with pytest.raises(SystemExit, match="different inputs"):
        ensemble.build(lesion, first, more_classifiers=[tiny_model.write_tiny_artifact(tmp_path / "e", size=48)])
    out = tmp_path / "out"
    ensemble.main(["--lesion", lesion, "--classifier", first, "--classifier", second, "--out", str(out)])
    assert set(json.loads((out / "fit.json").read_text())["members"]) == {"lesion_map", "classifier", "classifier_2"}


def test_a_classifier_fine_tuned_with_transplanted_tumors_is_recorded_and_its_t2_tumors_named_in_the_card(tmp_path):
    """Issue 24 asks the card how many T2 tumor slices the model saw: v44's said only the maps' 50 brats-ped slices,
    though its first classifier (v43) had real FLAIR/T2 tumors set into T2 and brain-mri slices in its fine-tune."""
    from screening_core import artifact
    from trainer import ensemble, model_card
    lesion = _image_dependent_lesion(tmp_path, "a", seed=7)
    plain = tiny_model.write_tiny_artifact(tmp_path / "c", seed=3)
    tuned = tiny_model.write_tiny_artifact(tmp_path / "d", seed=5)

    def recipe(md):
        md["training_config"].update(transplant_tumors=0.5, transplant_axial_only=True)
    artifact.update_metadata(tuned, recipe)
    _, info = ensemble.build(lesion, plain, more_classifiers=[tuned])
    assert "transplant_tumors" not in info["members"]["classifier"]
    assert info["members"]["classifier_2"]["transplant_tumors"] == 0.5
    assert info["members"]["classifier_2"]["transplant_axial_only"] is True
    coverage = {"lesion": {"t2_coverage": {"tumor_slices": 50, "patients": 2, "collections": ["brats-ped"]}},
                "threshold": 0.1}
    text = model_card._lesion_section({**coverage, "training": {"members": info["members"]}})
    assert "Training saw 50 T2 slices with a tumor from 2 patients (brats-ped)" in text
    assert "except in the fine-tune of its classifier v1" in text and "each of its axial tumor-free" in text
    assert "probability 0.5" in text
    text = model_card._lesion_section({**coverage, "training": {"members": {"classifier": {"artifact": plain}}}})
    assert "contrast augmentation.\n" in text and "transplant" not in text


def _shifted_classifier(tmp_path, name, seed, images, centre):
    """A tiny classifier whose log-odds on `images` spread around `centre` (its last layer's bias moved)."""
    from screening_core import artifact, preprocessing
    model, _ = artifact.load(tiny_model.write_tiny_artifact(tmp_path / f"{name}_tiny", seed=seed))
    z = _logit(model.predict_on_batch(images).ravel())
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    scale = 4.0 / max(float(np.ptp(z)), 1e-3)  # spread them over about 4 log-odds
    last.set_weights([kernel * scale, (bias - np.median(z)) * scale + centre])
    out = str(tmp_path / name / "1")
    artifact.write_artifact(model, out, dict(
        name=name, version="1", input_spec=preprocessing.InputSpec(32, 32), class_names=["no_tumor", "tumor"],
        threshold=0.5, target_sensitivity=0.98, validation_metrics={}, data_fingerprint="none",
        training_config={}, extra={}))
    return out


def test_a_classifier_floor_caps_each_classifiers_veto_and_exports_to_onnx(tmp_path):
    """--classifier-floor F: each classifier pass contributes max(its log-odds, F), the maps unbounded, so a
    classifier cannot outvote what the maps find beyond F (v30); mirrored passes carry the same floor; the
    graph saves, loads in safe mode and exports with parity; a floor outside (-16, 0) is refused."""
    import json

    from screening_core import artifact, preprocessing
    from trainer import ensemble
    x = np.stack([preprocessing.prepare(synth.brain_slice(s, 48, lesion=bool(s % 2)).astype(np.float32),
                                        preprocessing.InputSpec(32, 32)) for s in range(8)])
    lesion = _image_dependent_lesion(tmp_path, "a", seed=7)
    first = _shifted_classifier(tmp_path, "c", 3, x, centre=-4.0)
    second = _shifted_classifier(tmp_path, "d", 5, x, centre=-4.0)
    z = {d: _logit(artifact.load(d)[0].predict_on_batch(x).ravel()) for d in (lesion, first, second)}
    floor = -4.0
    for d in (first, second):  # the floor cuts some slices of each classifier, not all
        assert 0 < (z[d] < floor).sum() < len(x)
    model, info = ensemble.build(lesion, first, more_classifiers=[second], classifier_floor=floor)
    expected = (np.maximum(z[first], floor) + np.maximum(z[second], floor)) / 2 + z[lesion]
    unbounded = (z[first] + z[second]) / 2 + z[lesion]
    assert np.abs(expected - unbounded).max() > 0.1
    np.testing.assert_allclose(model.predict_on_batch(x).ravel(), 1 / (1 + np.exp(-expected)), atol=1e-5)
    assert info["members"]["classifier"]["log_odds_floor"] == floor
    plain, info = ensemble.build(lesion, first, more_classifiers=[second])
    np.testing.assert_allclose(plain.predict_on_batch(x).ravel(), 1 / (1 + np.exp(-unbounded)), atol=1e-5)
    assert "log_odds_floor" not in info["members"]["classifier"]
    assert "floors" not in plain.get_layer("combined_probability").get_config()  # saved as v29 and before were
    # mirrored classifiers: each of a classifier's two passes is floored before they are averaged
    mirror = x[:, :, ::-1]
    zm = {d: _logit(artifact.load(d)[0].predict_on_batch(mirror).ravel()) for d in (first, second)}
    mirrored, _ = ensemble.build(lesion, first, more_classifiers=[second], mirror="classifier", classifier_floor=floor)
    want = sum((np.maximum(z[d], floor) + np.maximum(zm[d], floor)) / 4 for d in (first, second)) + z[lesion]
    np.testing.assert_allclose(mirrored.predict_on_batch(x).ravel(), 1 / (1 + np.exp(-want)), atol=1e-5)
    _saves_loads_and_exports(model, x, tmp_path)
    for bad in (0.0, 2.0, -16.0):
        with pytest.raises(SystemExit, match="--classifier-floor is log-odds between -16 and 0"):
            ensemble.build(lesion, first, classifier_floor=bad)
    out = tmp_path / "out"
    ensemble.main(["--lesion", lesion, "--classifier", first, "--classifier-floor", "-4", "--out", str(out)])
    assert json.loads((out / "fit.json").read_text())["members"]["classifier"]["log_odds_floor"] == -4.0


def test_the_card_names_an_ensembles_members_and_its_floor_not_the_first_maps_recipe():
    """v9-v29's cards described the first map alone ("the slice probability is the highest mean of that map"),
    though the score was several members' combined evidence."""
    from trainer import model_card
    members = {"lesion_map": {"artifact": "models/brain-tumor-cnn/14", "mirrored": False},
               "lesion_map_2": {"artifact": "models/brain-tumor-cnn/16", "mirrored": False},
               "classifier": {"artifact": "models/brain-tumor-cnn/22", "mirrored": False, "log_odds_floor": -5.5},
               "classifier_2": {"artifact": "models/brain-tumor-cnn/24", "mirrored": False}}
    text = model_card._architecture({"head": "lesion_map", "training": {"members": members}})
    assert "maps v14, v16 and slice classifiers v22, v24" in text
    assert "each classifier's log-odds floored at -5.5" in text and "overlays show v14's map" in text
    assert "highest mean of that map" not in text
    members = {"lesion_map": {"artifact": "models/brain-tumor-cnn/10", "mirrored": True},
               "classifier": {"artifact": "models/brain-tumor-cnn/3", "mirrored": False,
                              "moved_towards": {"artifact": "models/brain-tumor-cnn/12", "alpha": 0.3}}}
    text = model_card._architecture({"head": "lesion_map", "training": {"members": members}})
    assert "map v10 and slice classifier v3 (its weights moved 0.3 of the way to v12's)" in text
    assert "floored" not in text and "mirrored left to right" in text
    assert "highest mean of that map" in model_card._architecture({"head": "lesion_map", "training": {}})


def test_the_floor_chooser_keeps_every_validation_operating_point_and_scores_as_the_graph_does(tmp_path, capsys):
    """trainer.classifier_floor: the members' log-odds it combines are the ensemble graph's (unfloored and
    floored); the floor it names leaves every validation source's counts where the unfloored ensemble had them,
    the next candidate up does not; an artifact that is no ensemble, or whose images are gone, is refused."""
    import csv

    from screening_core import artifact, preprocessing
    from trainer import artifact_data, classifier_floor, ensemble
    spec = preprocessing.InputSpec(32, 32)
    paths, labels = [], []
    for s in range(40):
        p = tmp_path / "img" / f"s{s}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(synth.encode(synth.brain_slice(s, 48, lesion=bool(s % 2))))
        paths.append(str(p))
        labels.append(s % 2)
    x = np.stack(artifact_data.read_inputs(paths, spec))
    lesion = _image_dependent_lesion(tmp_path, "a", seed=7)
    first = _shifted_classifier(tmp_path, "c", 3, x, centre=-3.0)
    second = _shifted_classifier(tmp_path, "d", 5, x, centre=-3.0)
    model, info = ensemble.build(lesion, first, more_classifiers=[second])
    version_dir = _write_ensemble(model, tmp_path)

    def stamp(md):
        md["training"] = {"members": info["members"]}
        md["threshold_target_sensitivity"] = 0.9
        md["training_config"] = {"threshold_sources": "^a$"}
    artifact.update_metadata(version_dir, stamp)
    with open(f"{version_dir}/validation_predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "class_name", "label", "group", "score", "split", "source", "level"])
        w.writeheader()
        for i, (p, y) in enumerate(zip(paths, labels, strict=True)):
            w.writerow({"path": p, "class_name": "tumor" if y else "notumor", "label": y, "group": i // 2,
                        "score": 0.5, "split": "validation", "source": "a" if i < 24 else "b", "level": 0.5})
    classifiers, maps = classifier_floor.members_of(artifact.read_metadata(version_dir))
    assert classifiers == [first, second] and maps == [lesion]
    scores = classifier_floor.member_scores({d: artifact.load(d) for d in classifiers + maps}, paths)
    np.testing.assert_allclose(classifier_floor.combine(scores, classifiers, maps),
                               _logit(model.predict_on_batch(x).ravel()), atol=1e-4)
    floored, _ = ensemble.build(lesion, first, more_classifiers=[second], classifier_floor=-3.0)
    np.testing.assert_allclose(classifier_floor.combine(scores, classifiers, maps, -3.0),
                               _logit(floored.predict_on_batch(x).ravel()), atol=1e-4)
    rows = artifact_data.split_rows(version_dir)
    candidates = [-8.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0]
    chosen, table = classifier_floor.choose(rows, scores, classifiers, maps, 0.9, "^a$", candidates)
    _, base = classifier_floor.operating_points(rows, classifier_floor.combine(scores, classifiers, maps), 0.9, "^a$")
    assert table[0][3]  # below every classifier's log-odds the floor changes nothing
    assert chosen is not None and not all(same for *_, same in table)  # the candidates reach a floor that moves one
    k = candidates.index(chosen)
    assert all(same for *_, same in table[:k + 1]) and not table[k + 1][3]
    assert table[k][2] == base and table[k + 1][2] != base
    assert classifier_floor.main([version_dir, "--floors=" + ",".join(f"{c:g}" for c in candidates)]) == 0
    assert f"the highest floor that moves no validation operating point: {chosen:g}" in capsys.readouterr().out
    for argv, said in (([first], "not an ensemble"), ([str(tmp_path / "none")], "none"),
                       ([version_dir, "--floors=-5,x"], "--floors takes numbers")):
        with pytest.raises(SystemExit) as stop:
            classifier_floor.main(argv)
        assert stop.value.code == 2 and said in capsys.readouterr().err
    os.remove(paths[3])
    with pytest.raises(SystemExit) as stop:
        classifier_floor.main([version_dir])
    assert stop.value.code == 2 and "1 of the artifact's 40 validation images are not here" in capsys.readouterr().err


def test_an_overlay_map_is_what_the_overlays_show_and_weighs_nothing_in_the_score(tmp_path):
    """--overlay (v31): a map trained only to outline takes the unprefixed names (the scorer's overlays, lesion
    areas and OOD guard read it) and adds 0 x its log-odds, so the score is the scoring members' (here to the bit); the
    first map joins under les1_; the graph saves, loads in safe mode and exports with parity."""
    import keras

    from screening_core import artifact, ood, preprocessing
    from trainer import ensemble, model_card
    x = np.stack([preprocessing.prepare(synth.brain_slice(s, 48, lesion=bool(s % 2)).astype(np.float32),
                                        preprocessing.InputSpec(32, 32)) for s in range(6)])
    first = _image_dependent_lesion(tmp_path, "a", seed=7)
    outline = _image_dependent_lesion(tmp_path, "o", seed=11)
    classifier_dir = tiny_model.write_tiny_artifact(tmp_path / "c", seed=3)
    plain, _ = ensemble.build(first, classifier_dir)
    model, info = ensemble.build(first, classifier_dir, overlay=outline)
    assert np.array_equal(model.predict_on_batch(x), plain.predict_on_batch(x))

    def map_of(m, name="lesion_map"):
        return keras.Model(m.inputs, m.get_layer(name).output).predict_on_batch(x)
    shown, first_map = map_of(artifact.load(outline)[0]), map_of(artifact.load(first)[0])
    assert not np.allclose(shown, first_map, atol=1e-3)  # two different maps, so the check below can fail
    np.testing.assert_allclose(map_of(model), shown, atol=1e-6)
    np.testing.assert_allclose(map_of(model, "les1_lesion_map"), first_map, atol=1e-6)
    assert {"enc1_pool", "les1_enc1_pool", "cls_block1_pool"} <= set(ood.layer_names(model))
    members = info["members"]
    assert members["overlay_map"]["weight"] == 0.0 and members["lesion_map"]["layer_prefix"] == "les1_"
    assert ensemble.member_artifacts(members, "lesion_map") == [first]  # the maps that score
    text = model_card._architecture({"head": "lesion_map", "training": {"members": members}})
    assert "overlays show the map of v1, a U-Net trained only to outline the lesion, which weighs 0" in text
    _saves_loads_and_exports(model, x, tmp_path)
    with pytest.raises(SystemExit, match="not a lesion-map model"):
        ensemble.build(first, classifier_dir, overlay=classifier_dir)


def test_the_members_trained_on_the_ensembles_validation_slices_are_named_with_their_share(tmp_path):
    """Row SPL: v24 and v26 had trained on most of v30's validation slices, unseen for five versions. A slice an
    artifact was not trained on is in its validation_predictions.csv; a member without one is left out."""
    from trainer import ensemble

    def artifact_with_rows(name, rows):
        d = tmp_path / name
        d.mkdir()
        lines = ["path,class_name,label,group,score,split,source,level"]
        lines += [f"{p},tumor,1,0,0.5,{split},lgg/flair,0.5" for p, split in rows]
        (d / "validation_predictions.csv").write_text("\n".join(lines) + "\n")
        return str(d)
    validation = [f"img{i}.png" for i in range(8)]
    same = artifact_with_rows("same", [(p, "validation") for p in validation])
    other = artifact_with_rows("other", [(p, "validation") for p in validation[:2]]
                               + [(p, "external") for p in validation[2:4]] + [("img9.png", "validation")])
    (tmp_path / "none").mkdir()
    members = {"lesion_map": {"artifact": same}, "classifier": {"artifact": other},
               "classifier_2": {"artifact": str(tmp_path / "none")}}
    assert ensemble.trained_on_validation(members, validation) == {other: 0.5}  # img4-img7: its training data
    assert ensemble.trained_on_validation({"lesion_map": {"artifact": same}}, validation) == {}


def _orientation_artifact(tmp_path, turn_logits):
    """An orientation artifact (trainer.orientation's network at 32 px) whose softmax is `turn_logits`' whatever the
    image: the last layer's kernel zeroed, its bias set, so the test knows which turn the graph undoes."""
    from screening_core import artifact, preprocessing
    from trainer import orientation
    model = orientation.make_model(32)
    last = model.get_layer("orient_turn")
    kernel, _ = last.get_weights()
    last.set_weights([np.zeros_like(kernel), np.asarray(turn_logits, np.float32)])
    out = str(tmp_path / "orientation" / "1")
    artifact.write_artifact(model, out, dict(
        name="slice-orientation", version="1", input_spec=preprocessing.InputSpec(32, 32),
        class_names=[str(t) for t in orientation.TURNS], threshold=0.9, target_sensitivity=0.0,
        validation_metrics={}, data_fingerprint="", training_config={},
        extra={"head": "orientation", "orientation": {"fit_seconds": 12.5}}))
    return out


def test_upright_turns_a_sideways_slice_back_only_where_the_turn_is_sure():
    from screening_core import upright
    x = np.random.default_rng(0).random((3, 8, 8, 2)).astype(np.float32)
    for k in range(4):
        turned = np.rot90(x, k, axes=(1, 2)).copy()
        sure = np.full((3, 4), 0.001, np.float32)
        sure[:, k] = 0.997
        undone = np.asarray(upright.Upright(0.99)([turned, sure]))
        # sideways (90, 270) is turned back; upright and upside down are left as they came
        np.testing.assert_array_equal(undone, x if k % 2 else turned)
        np.testing.assert_array_equal(np.asarray(upright.AsGiven(0.99)([undone, sure])), turned)
        # the row's turned_back_degrees: the quarter turn Upright undid
        np.testing.assert_array_equal(np.asarray(upright.TurnUndone(0.99)(sure)), [90.0 * k if k % 2 else 0.0] * 3)
        unsure = np.full((3, 4), 0.05, np.float32)
        unsure[:, k] = 0.85
        np.testing.assert_array_equal(np.asarray(upright.Upright(0.99)([turned, unsure])), turned)
        np.testing.assert_array_equal(np.asarray(upright.TurnUndone(0.99)(unsure)), [0.0] * 3)
    split = np.array([[0.0, 0.6, 0.0, 0.395]], np.float32)  # sure it is sideways, not of which way: the likelier
    np.testing.assert_array_equal(np.asarray(upright.Upright(0.99)([np.rot90(x[:1], 1, axes=(1, 2)), split])), x[:1])
    np.testing.assert_array_equal(np.asarray(upright.TurnUndone(0.99)(split)), [90.0])
    with pytest.raises(ValueError, match="confidence"):
        upright.Upright(1.0)


def test_a_half_turn_is_undone_only_where_asked_and_above_its_own_confidence():
    """--half-turn-confidence (row HALF): an upside-down slice the network is all but certain of is turned back (180 in the
    row), one it is merely sure of is left; an artifact built before the option loads and behaves as it did."""
    from screening_core import upright
    x = np.random.default_rng(1).random((2, 8, 8, 1)).astype(np.float32)
    upside_down = np.rot90(x, 2, axes=(1, 2)).copy()
    certain = np.array([[0.00002, 0.00002, 0.99995, 0.00001]] * 2, np.float32)
    sure = np.array([[0.001, 0.001, 0.997, 0.001]] * 2, np.float32)
    half = upright.Upright(0.99, 0.9999)
    np.testing.assert_array_equal(np.asarray(half([upside_down, certain])), x)
    np.testing.assert_array_equal(np.asarray(upright.AsGiven(0.99, 0.9999)([x, certain])), upside_down)
    np.testing.assert_array_equal(np.asarray(upright.TurnUndone(0.99, 0.9999)(certain)), [180.0, 180.0])
    np.testing.assert_array_equal(np.asarray(half([upside_down, sure])), upside_down)
    np.testing.assert_array_equal(np.asarray(upright.Upright(0.99)([upside_down, certain])), upside_down)
    np.testing.assert_array_equal(np.asarray(upright.TurnUndone(0.99)(certain)), [0.0, 0.0])
    sideways = np.array([[0.0, 0.99995, 0.00005, 0.0]], np.float32)  # sideways wins where both could apply
    np.testing.assert_array_equal(np.asarray(upright.TurnUndone(0.99, 0.9999)(sideways)), [90.0])
    assert half.get_config()["half_turn_confidence"] == 0.9999
    assert "half_turn_confidence" not in upright.Upright(0.99).get_config()  # v38's and v39's saved configs
    assert upright.Upright.from_config(upright.Upright(0.99).get_config()).half_turn_confidence is None
    with pytest.raises(ValueError, match="half_turn_confidence"):
        upright.Upright(0.99, 0.5)


def test_an_orientation_network_puts_every_member_on_the_upright_slice_and_the_map_back_on_the_given_one(tmp_path):
    """--orientation: where the orientation network is sure of a quarter turn, the ensemble scores the slice turned
    back (every member, the OOD features too) and its lesion map lies on the slice as given; where it is unsure the
    ensemble is the plain one; the graph saves, loads in safe mode and exports to ONNX with parity."""
    import keras

    from screening_core import ood, preprocessing
    from trainer import ensemble
    x = np.stack([preprocessing.prepare(synth.brain_slice(s, 48, lesion=bool(s % 2)).astype(np.float32),
                                        preprocessing.InputSpec(32, 32)) for s in range(6)])
    first = _image_dependent_lesion(tmp_path, "a", seed=7)
    outline = _image_dependent_lesion(tmp_path, "o", seed=11)
    classifier_dir = tiny_model.write_tiny_artifact(tmp_path / "c", seed=3)
    plain, _ = ensemble.build(first, classifier_dir, overlay=outline)

    def outputs(m, images, name="lesion_map"):
        return keras.Model(m.inputs, [m.output, m.get_layer(name).output]).predict_on_batch(images)
    turned_90 = _orientation_artifact(tmp_path / "t", [0.0, 6.0, 0.0, 0.0])  # sure: turned 90 degrees
    model, info = ensemble.build(first, classifier_dir, overlay=outline, orientation=turned_90)
    assert info["members"]["orientation"]["confidence"] == 0.9
    _, plain_info = ensemble.build(first, classifier_dir, overlay=outline)
    assert info["fit_seconds"] == plain_info["fit_seconds"] + 12.5  # the orientation network's fit counts too
    from trainer import model_card
    text = model_card._architecture({"head": "lesion_map", "training": {"members": info["members"]}})
    assert "the orientation network orientation/1 (trainer/orientation.py) calls turned sideways with probability above 0.9" in text
    back = np.rot90(x, -1, axes=(1, 2)).copy()  # what the members must see: the slice turned back
    p_plain, map_plain = outputs(plain, back)
    p, lesion_map = outputs(model, x)
    assert not np.allclose(p_plain, plain.predict_on_batch(x), atol=1e-4)  # a turn changes the score, so this can fail
    np.testing.assert_allclose(p, p_plain, atol=1e-6)
    np.testing.assert_allclose(lesion_map, np.rot90(map_plain, 1, axes=(1, 2)), atol=1e-6)
    feats = ood.layer_names(model)
    assert not [n for n in feats if n.startswith("orient_")] and set(feats) == set(ood.layer_names(plain))
    version_dir, entry = _saves_loads_and_exports(model, x, tmp_path)
    # every engine tells the row which turn it undid (turned_back_degrees); a model without the network, none
    from beam_pipeline import inference
    assert entry["turn_output"] is True and entry["cam_output"] is True
    onnx = inference._OnnxScorer(os.path.join(version_dir, entry["file"]), None, [], has_cam=True, has_turn=True)
    for scorer in (inference._Scorer(model, None), onnx):
        probs, _, maps, turns = scorer(x)
        np.testing.assert_allclose(probs, p.reshape(-1), atol=1e-4)
        np.testing.assert_allclose(maps, lesion_map, atol=1e-4)
        np.testing.assert_array_equal(turns, [90.0] * len(x))
    assert inference._Scorer(plain, None)(x)[3] is None
    from apache_beam.ml.inference.base import PredictionResult

    from beam_pipeline.stages import score
    for scored, want in ((model, 90), (plain, None)):
        templates = [{"input_scale": 1.0, "pixel_area_mm2": None}] * len(x)
        to_rows = score._ToRows(0.5, heatmaps=False, lesion_map=True)
        rows = list(to_rows.process((templates, PredictionResult(x, inference._Scorer(scored, None)(x)))))
        assert [r["turned_back_degrees"] for r in rows] == [want] * len(x)
    unsure = _orientation_artifact(tmp_path / "u", [0.0, 1.0, 0.0, 0.0])  # 0.48: below the confidence
    model, _ = ensemble.build(first, classifier_dir, overlay=outline, orientation=unsure)
    np.testing.assert_allclose(model.predict_on_batch(x), plain.predict_on_batch(x), atol=1e-6)
    np.testing.assert_array_equal(inference._Scorer(model, None)(x)[3], [0.0] * len(x))
    with pytest.raises(SystemExit, match="not an orientation model"):
        ensemble.build(first, classifier_dir, orientation=classifier_dir)
    upside_down = _orientation_artifact(tmp_path / "h", [0.0, 0.0, 12.0, 0.0])  # 0.99982 upside down
    model, info = ensemble.build(first, classifier_dir, overlay=outline, orientation=upside_down,
                                 half_turn_confidence=0.9995)
    assert info["members"]["orientation"]["half_turn_confidence"] == 0.9995
    flipped = plain.predict_on_batch(np.rot90(x, 2, axes=(1, 2)).copy())
    assert not np.allclose(flipped, plain.predict_on_batch(x), atol=1e-4)  # so the next line can fail
    np.testing.assert_allclose(model.predict_on_batch(x), flipped, atol=1e-6)
    np.testing.assert_array_equal(inference._Scorer(model, None)(x)[3], [180.0] * len(x))
    model, _ = ensemble.build(first, classifier_dir, overlay=outline, orientation=upside_down)
    np.testing.assert_allclose(model.predict_on_batch(x), plain.predict_on_batch(x), atol=1e-6)
    with pytest.raises(SystemExit, match="at least the orientation network's own confidence"):
        ensemble.build(first, classifier_dir, orientation=upside_down, half_turn_confidence=0.5)
    with pytest.raises(SystemExit):
        ensemble.main(["--lesion", first, "--classifier", classifier_dir, "--half-turn-confidence", "0.9999",
                       "--out", str(tmp_path / "x")])

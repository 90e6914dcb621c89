"""The lesion-first model (v4): its score comes from its map, the map is what reviewers see, areas add up."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

from beam_pipeline import report, run, sample_data
from screening_core import gradcam, preprocessing
from tests import rows as rows_mod
from tests import synth, tiny_model
from trainer import lesion_data, lesion_eval


def test_slice_score_is_the_highest_window_mean_of_the_lesion_map():
    import keras

    from trainer import unet
    keras.utils.set_random_seed(3)
    model = unet.make_unet((32, 32, 1), filters=(4, 8, 8, 16))
    x = np.random.default_rng(0).random((5, 32, 32, 1)).astype(np.float32)
    score, lesion = keras.Model(model.inputs, [model.output, model.get_layer("lesion_map").output]).predict(
        x, verbose=0)
    assert lesion.shape == (5, 16, 16, 1) and score.shape == (5, 1)
    w = unet.POOL_WINDOW
    m = lesion[..., 0]
    windows = np.stack([m[:, i:i + 16 - w + 1, j:j + 16 - w + 1] for i in range(w) for j in range(w)]).mean(0)
    np.testing.assert_allclose(score[:, 0], windows.reshape(5, -1).max(1), rtol=1e-5, atol=1e-6)
    assert gradcam.is_lesion_model(model) and gradcam.cam_head(model) is None and gradcam.has_review_map(model)


def _inputs(root):
    """Two loose PNG slices and a two-slice DICOM series with PixelSpacing 0.5 x 0.8 mm, in a zip."""
    import pydicom
    pngs = []
    for s in range(2):
        p = root / f"slice{s}.png"
        p.write_bytes(synth.encode(synth.brain_slice(s, 48, lesion=True)))
        pngs.append(p)
    with zipfile.ZipFile(root / "series.zip", "w") as zf:
        for i in range(2):
            arr = synth.brain_slice(10 + i, 40, lesion=True)
            ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(arr, 0, "1.2.3", "1.2.3.4", i + 1)))
            ds.PixelSpacing = [0.5, 0.8]
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            zf.writestr(f"im{i}.dcm", buf.getvalue())
    return pngs, root / "series.zip"


def _expected_area(gray, size=32):
    """A map at 1 in every cell covers the whole model input: (input side x scale)² source pixels."""
    _, scale, _ = preprocessing.prepare_for_scoring(gray.astype(np.float32), preprocessing.InputSpec(size, size))
    return (size * scale) ** 2


def test_rows_carry_the_lesion_area_and_series_the_largest_lesion(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path, lesion_bias=5.0)  # map ~1 everywhere
    pngs, zipped = _inputs(tmp_path)
    out = tmp_path / "out"
    assert run.main(["--input", str(pngs[0]), "--input", str(pngs[1]), "--input", str(zipped), "--keep-paths",
                     "--output", str(out), "--model", model_dir, "--engine", "tensorflow"]) == 0
    rows = {os.path.basename(r["member_path"] or r["source_uri"]): r for r in rows_mod.images(out)}
    assert set(rows) == {"slice0.png", "slice1.png", "im0.dcm", "im1.dcm"}
    for s in range(2):
        r = rows[f"slice{s}.png"]
        assert r["tumor_probability"] > 0.99 and r["predicted_label"] == "tumor"
        assert r["lesion_area_px"] == pytest.approx(_expected_area(synth.brain_slice(s, 48, lesion=True)), rel=1e-4)
        assert r["lesion_area_mm2"] is None and r["pixel_area_mm2"] is None
        assert r["heatmap_path"] and os.path.exists(rows_mod.result_file(out, "heatmaps/" +
                                                                         os.path.basename(r["heatmap_path"])))
    for i in range(2):
        r = rows[f"im{i}.dcm"]
        assert r["pixel_area_mm2"] == pytest.approx(0.4)
        assert r["lesion_area_mm2"] == pytest.approx(r["lesion_area_px"] * 0.4, rel=1e-5)
    series = rows_mod.images(out, "series-*.parquet")
    dicom = next(s for s in series if s["series_instance_uid"] == "1.2.3.4")
    largest = max((rows["im0.dcm"], rows["im1.dcm"]), key=lambda r: r["lesion_area_px"])
    assert dicom["max_lesion_area_px"] == pytest.approx(largest["lesion_area_px"])
    assert dicom["max_lesion_area_mm2"] == pytest.approx(largest["lesion_area_mm2"])
    # named as the viewer numbers it: the reader finds "image N" in the series named beside it
    assert dicom["largest_lesion_member"] == f"image {largest['instance_number']}"
    study = next(s for s in rows_mod.images(out, "studies-*.parquet") if s["study_instance_uid"] == "1.2.3")
    assert study["max_lesion_area_mm2"] == pytest.approx(largest["lesion_area_mm2"])
    assert study["largest_lesion_member"] == f"image {largest['instance_number']}"
    png = next(s for s in series if not s["series_instance_uid"])
    assert png["largest_lesion_member"] in ("slice0.png", "slice1.png")  # a file keeps its member name


def test_an_empty_lesion_map_flags_nothing_and_measures_no_area(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path, lesion_bias=-5.0)
    pngs, _ = _inputs(tmp_path)
    out = tmp_path / "out"
    assert run.main(["--input", str(pngs[0]), "--output", str(out), "--model", model_dir,
                     "--engine", "tensorflow"]) == 0
    (row,) = rows_mod.images(out)
    assert row["tumor_probability"] < 0.01 and row["predicted_label"] == "no_tumor"
    assert row["lesion_area_px"] == 0.0 and row["heatmap_path"] is None
    (series,) = rows_mod.images(out, "series-*.parquet")
    assert series["max_lesion_area_px"] == 0.0 and series["largest_lesion_member"] is None  # nothing to point at
    (study,) = rows_mod.images(out, "studies-*.parquet")
    assert study["largest_lesion_series"] is None and study["largest_lesion_member"] is None
    assert "no lesion outlined" in report._lesion_note(study)


def test_an_unflagged_study_s_outline_is_not_worded_as_a_lesion():
    row = {"flagged": False, "max_lesion_area_px": 924.0, "max_lesion_area_mm2": None,
           "largest_lesion_series": "T2 AX", "largest_lesion_member": "image 14"}
    assert report._lesion_note(row) == ", largest map outline 924 px (below the threshold)"
    assert report._lesion_note({**row, "flagged": True}) == ", largest lesion 924 px (T2 AX, image 14)"


def test_a_flagged_study_without_an_outline_is_not_worded_as_an_all_clear():
    row = {"flagged": True, "max_lesion_area_px": 0.0, "max_lesion_area_mm2": None,
           "largest_lesion_series": None, "largest_lesion_member": None}
    assert report._lesion_note(row) == ", flagged but no lesion outlined: read every image"
    assert report._lesion_note({**row, "flagged": False}) == ", no lesion outlined"


def test_onnx_runtime_returns_the_same_lesion_map(tmp_path):
    from trainer import export
    model_dir = tiny_model.write_tiny_artifact(tmp_path, lesion_bias=5.0, seed=1)
    entry = export.export(model_dir)
    assert entry["cam_output"] and entry["max_abs_probability_difference"] <= export.PARITY_TOLERANCE
    pngs, zipped = _inputs(tmp_path)
    got = {}
    for engine in ("tensorflow", "onnxruntime"):
        out = tmp_path / engine
        assert run.main(["--input", str(zipped), "--keep-paths", "--output", str(out), "--model", model_dir,
                         "--engine", engine]) == 0
        got[engine] = {r["member_path"]: r for r in rows_mod.images(out)}
    for k, r in got["tensorflow"].items():
        assert got["onnxruntime"][k]["lesion_area_px"] == pytest.approx(r["lesion_area_px"])


def test_lesion_overlay_outlines_and_fills_the_map():
    from PIL import Image
    image = np.full((32, 32, 1), 0.5, np.float32)
    lesion = np.zeros((32, 32), np.float32)
    lesion[8:20, 10:22] = 0.9
    lesion[0:4, 0:4] = 0.3  # weak evidence: a faint wash, no outline
    png = Image.open(io.BytesIO(gradcam.lesion_overlay_png(image, lesion, None, scale=1))).convert("RGB")
    right = np.asarray(png)[:, 36:]  # the overlay half (input | 4 px gap | overlay)
    assert tuple(right[8, 15]) == (255, 255, 0)  # outline at the lesion's edge
    r, g, b = right[14, 15].astype(int)
    assert r > 180 and g < 110 and b < 110  # filled red inside
    assert tuple(right[30, 30]) == (127, 127, 127)  # anatomy untouched outside
    r, g, b = right[1, 1].astype(int)
    assert r > g > b and r < 200  # a faint orange wash


def test_heatmaps_of_lesion_maps_keep_their_probabilities():
    maps = np.full((2, 4, 4, 1), 0.1, np.float32)
    maps[0, 1:3, 1:3] = 0.8
    rel = gradcam.heatmaps_from_cam(maps, (8, 8))
    absolute = gradcam.heatmaps_from_cam(maps, (8, 8), relative=False)
    assert rel[1].max() == pytest.approx(1.0)  # Grad-CAM's rule would paint a flat 0.1 map at full strength
    assert absolute[1].max() == pytest.approx(0.1) and absolute[0].max() == pytest.approx(0.8)


def test_sampling_balances_class_within_each_level_bin():
    cols = np.array(["a"] * 10 + ["b"] * 4)
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0])
    level = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5])
    w = lesion_data.sampling_weights(cols, labels, level, {"a": 0.5, "b": 0.5})
    low = level < 0.2
    a = cols == "a"
    assert w[a].sum() == pytest.approx(0.5) and w[~a].sum() == pytest.approx(0.5)
    assert w[a & low & (labels == 1)].sum() == pytest.approx(w[a & low & (labels == 0)].sum())  # 4 vs 1 slices
    assert w[a & ~low].sum() == pytest.approx(w[a & low].sum())  # a one-class bin keeps its level's share


def test_hard_negatives_are_drawn_more_often_and_nothing_else_moves():
    probs = np.full(6, 1 / 6)
    labels = np.array([0, 0, 0, 1, 1, 0])
    scores = np.array([0.9, 0.05, 0.5, 0.99, 0.01, 0.2])  # slice 3 is a tumor: never a "hard negative"
    w = lesion_data.boost_hard_negatives(probs, labels, scores, threshold=0.5, factor=4)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(4 * w[1]) and w[2] == pytest.approx(4 * w[1])  # at the threshold counts as flagged
    assert w[3] == pytest.approx(w[1]) and w[5] == pytest.approx(w[1])
    with pytest.raises(ValueError, match=">= 1"):
        lesion_data.boost_hard_negatives(probs, labels, scores, 0.5, 0.5)
    with pytest.raises(ValueError, match="aligned"):
        lesion_data.boost_hard_negatives(probs, labels[:3], scores, 0.5, 2)


def test_hard_positives_are_missed_masked_tumors_drawn_more_often():
    probs = np.full(5, 1 / 5)
    eligible = np.array([True, True, False, True, False])  # slice 2: a tumor without its own mask
    scores = np.array([0.1, 0.9, 0.1, 0.5, 0.1])
    w = lesion_data.boost_hard_positives(probs, eligible, scores, threshold=0.5, factor=3)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(3 * w[1])  # missed -> 3x
    assert w[3] == pytest.approx(w[1])  # at the threshold counts as found
    assert w[2] == pytest.approx(w[1]) and w[4] == pytest.approx(w[1])  # not eligible: unchanged
    with pytest.raises(ValueError, match=">= 1"):
        lesion_data.boost_hard_positives(probs, eligible, scores, 0.5, 0.9)


def test_the_negative_margin_pushes_only_tumor_free_slices_that_score_above_it():
    from trainer import lesion_train
    y_true = np.array([[0, 1], [0, 1], [1, 1], [0, 0.5]], np.float32)
    y_pred = np.array([[0.2], [0.01], [0.2], [0.2]], np.float32)
    plain = np.asarray(lesion_train.slice_loss()(y_true, y_pred))
    hinge = np.asarray(lesion_train.slice_loss(0.05)(y_true, y_pred))
    np.testing.assert_allclose(plain, [-np.log(0.8), -np.log(0.99), -np.log(0.2), -0.5 * np.log(0.8)], rtol=1e-5)
    excess = np.log(0.2 / 0.8) - np.log(0.05 / 0.95)
    np.testing.assert_allclose(hinge - plain, [excess ** 2, 0, 0, 0.5 * excess ** 2], rtol=1e-4, atol=1e-6)


def test_slices_with_a_non_tumor_lesion_are_drawn_more_often():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    w = lesion_data.boost_marked(probs, np.array([False, True, False, True]), 3)
    assert w.sum() == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(3 * 0.2 / 0.1) and w[2] / w[0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match=">= 1"):
        lesion_data.boost_marked(probs, np.ones(4, bool), 0)


def test_hard_negative_mining_needs_an_artifact_to_mine_with(tmp_path, capsys):
    from trainer import lesion_train
    refused = [(("--hard-negatives", "4"), "need --init-from"),
               (("--hard-negatives", "0.5"), ">= 1"),
               (("--hard-positives", "2"), "need --init-from"),
               (("--fluid-bright", "1.5"), "probability in [0, 1]"),
               (("--transplant-tumors", "-0.2"), "--transplant-tumors is a probability in [0, 1]"),
               (("--transplant-axial-only",), "--transplant-axial-only says where --transplant-tumors"),
               (("--synth-kinds", "bright,glowing"), "--synth-kinds: a comma-separated subset of"),
               (("--synth-contrast", "0.5"), "--synth-contrast is a multiple"),
               (("--mimic-weight", "0.5"), "--mimic-weight is a pixel weight"),
               (("--mimic-boost", "0"), "--mimic-boost must be >= 1"),
               (("--negative-margin", "1.5"), "--negative-margin is a slice score")]
    for flags, message in refused:
        with pytest.raises(SystemExit):
            lesion_train._parse(["--data-dir", str(tmp_path), *flags])
        assert message in capsys.readouterr().err, flags
    args = lesion_train._parse(["--data-dir", str(tmp_path), "--synth-kinds", " bright, enhancing"])
    assert args.synth_kinds == ("bright", "enhancing") and args.synth_contrast == 1.35
    args = lesion_train._parse(["--data-dir", str(tmp_path), "--transplant-tumors", "0.5", "--transplant-axial-only"])
    assert args.transplant_axial_only and not lesion_train._parse(["--data-dir", str(tmp_path)]).transplant_axial_only


def test_pseudo_masks_are_the_init_models_map_where_it_is_confident(tmp_path):
    import argparse

    import keras

    from trainer import lesion_train, unet
    keras.utils.set_random_seed(3)
    model = unet.make_unet((32, 32, 1), filters=(4, 8, 8, 16))
    path = str(tmp_path / "model.keras")
    model.save(path)
    rng = np.random.default_rng(1)
    arrays = {"x": rng.random((4, 32, 32)).astype(np.float16), "mask": np.zeros((4, 32, 32), np.uint8),
              "pixel_weight": np.array([0, 0, 1, 0], np.float32)}
    labels = np.array([1, 1, 1, 0])
    is_train = np.array([True, False, True, True])  # slice 1 is validation: never touched
    scores, maps = lesion_eval.predict(model, arrays["x"])
    args = argparse.Namespace(init_from=path, pseudo_masks=float(scores[0]) - 1e-6)
    lesion_train._pseudo_masks(args, model, arrays, labels, is_train)
    # slice 0: an unmasked training tumor slice scored at the bar -> its map (cells >= half the peak) at 0.5
    expected = np.kron(maps[0].astype(np.float32) >= 0.5 * maps[0].astype(np.float32).max(), np.ones((2, 2)))
    np.testing.assert_array_equal(arrays["mask"][0] > 0, expected)
    assert arrays["pixel_weight"][0] == lesion_train.PSEUDO_MASK_WEIGHT and arrays["mask"][0].max() == 255
    # validation, an already masked slice and a tumor-free slice keep what they had
    assert arrays["mask"][1:].max() == 0 and list(arrays["pixel_weight"][1:]) == [0, 1, 0]
    args.pseudo_masks = float(scores[0]) + 1e-3  # below the bar: left as it was (and then skipped)
    arrays["pixel_weight"][0], arrays["mask"][0] = 0, 0
    lesion_train._pseudo_masks(args, model, arrays, labels, is_train)
    assert arrays["pixel_weight"][0] == 0 and arrays["mask"][0].max() == 0


def test_levels_follow_the_patient_stack_and_the_head_share():
    from trainer.discovery import Example
    ex = [Example(f"/d/lgg/flair/tumor/TCGA_AA_0001_20010101_{z}.png", 1, "tumor", "", "lgg", "flair")
          for z in (3, 5, 11)] + [Example(f"/d/m/no/{i}.png", 0, "no", "", "mri") for i in range(3)]
    lv = lesion_data.levels(ex, [0, 0, 0, 0.2, 0.6, 0.4])
    np.testing.assert_allclose(lv, [0.0, 0.25, 1.0, 0.0, 1.0, 0.5])


def test_lesion_figures_of_a_perfect_and_a_misplaced_map():
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[:, 2:4, 2:4] = 255
    perfect = (masks[:, ::2, ::2] > 0).astype(np.float32)  # a 4x4 map of the 8x8 masks
    f = lesion_eval.lesion_figures(perfect, masks)
    assert f == {"n": 2, "dice_mean": 1.0, "dice_median": 1.0, "map_level": 0.5, "dice_mean_at_map_level": 1.0,
                 "dice_median_at_map_level": 1.0, "pointing_game": 1.0, "mass_inside_mask": 1.0}
    low = perfect * 0.3  # calibrated low: nothing at 0.5, all of it at the level chosen on validation
    level = lesion_eval.choose_map_level(low, masks)
    assert level == 0.3 and lesion_eval.lesion_figures(low, masks, level)["dice_mean_at_map_level"] == 1.0
    assert lesion_eval.lesion_figures(low, masks, level)["dice_mean"] == 0.0
    wrong = np.zeros_like(perfect)
    wrong[:, 3, 3] = 1.0
    lesion_eval.DILATE_CELLS, saved = 0, lesion_eval.DILATE_CELLS
    try:
        g = lesion_eval.lesion_figures(wrong, masks)
    finally:
        lesion_eval.DILATE_CELLS = saved
    assert g["dice_mean"] == 0.0 and g["pointing_game"] == 0.0 and g["mass_inside_mask"] == 0.0


def test_sequence_folders_win_over_a_manifest_csv_beside_them(tmp_path):
    from trainer import discovery
    synth.write_sequence_collection(str(tmp_path / "ped"), patients=2, per_patient=2, size=32,
                                    sequences=("t2", "flair"))
    (tmp_path / "ped" / "manifest.csv").write_text("collection,seq,label,file\nped,t2,tumor,x.png\n")
    ex, notes = discovery.discover(str(tmp_path / "ped"))
    assert notes["layout"] == "sequence_folders" and {e.sequence for e in ex} == {"t2", "flair"}


def test_lesion_training_writes_a_lesion_map_artifact(tmp_path):
    """The whole recipe, tiny: masks where a collection has them, labels only elsewhere, one artifact."""
    from screening_core import artifact
    from trainer import lesion_train
    synth.write_sequence_collection(str(tmp_path / "lgg"), patients=6, per_patient=6, size=48,
                                    sequences=("flair", "t1-pre"))
    synth.write_class_folders(str(tmp_path / "mri"), {"yes": True, "no": False}, 24, size=48)
    lesion_train.main(["--data-dir", str(tmp_path / "lgg"), "--data-dir", str(tmp_path / "mri"),
                       "--shares", "lgg=0.5,mri=0.5", "--image-size", "32", "--filters", "4,8,8,16",
                       "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "8", "--bootstrap", "10",
                       "--fluid-bright", "0.5", "--spots", "0.5", "--synth-tumors", "0.5", "--transplant-tumors", "0.5",
                       "--transplant-axial-only",
                       "--select-on", "last", "--preprocessing", "gray-headcrop-pnorm-v2",  # as train-v36 rebuilds v36
                       "--threshold-sources", "", "--model-dir", str(tmp_path / "models"), "--version", "1",
                       "--cache-dir", str(tmp_path / "cache")])
    version_dir = tmp_path / "models" / "brain-tumor-cnn" / "1"
    model, md = artifact.load(str(version_dir))
    assert md["head"] == "lesion_map" and gradcam.is_lesion_model(model)
    assert md["input_spec"]["preprocessing"] == md["training_config"]["preprocessing"] == "gray-headcrop-pnorm-v2"
    assert 0.0 <= md["threshold"] <= 1.0
    lesion = json.loads((version_dir / "lesion.json").read_text())
    assert any(k.startswith("validation/lgg/flair") for k in lesion["map_figures"])
    assert "validation" in lesion["level_bins"]
    assert md["training_config"]["filters"] == [4, 8, 8, 16] and md["training_config"]["fluid_bright"] == 0.5
    assert md["training_config"]["synth_tumors"] == 0.5 and md["training"]["kept_epoch"] == 2  # --select-on last
    assert md["training_config"]["transplant_tumors"] == 0.5 and md["training_config"]["transplant_axial_only"]
    assert md["lesion"]["map_level"] in lesion_eval.MAP_LEVELS  # chosen on validation masks
    assert (version_dir / "roc.png").stat().st_size > 0 and (version_dir / "calibration.png").exists()  # the card names them
    # For artifacts trained before the level existed: chosen again from their rows, stored and re-sealed.
    again = lesion_eval.map_level_of_artifact(str(version_dir), write=True)
    assert again["map_level"] == md["lesion"]["map_level"]
    assert artifact.verify(str(version_dir))["lesion"]["map_level"] == again["map_level"]



def test_the_artifacts_map_level_sets_outline_and_area():
    from beam_pipeline.stages.score import lesion_area
    from screening_core import gradcam
    assert gradcam.map_level({"lesion": {"map_level": 0.25}}) == 0.25
    assert gradcam.map_level({}) == gradcam.map_level({"lesion": {"map_level": float("nan")}}) == 0.5
    cam = np.full((4, 4, 1), 0.3, np.float32)
    assert lesion_area(cam, 8, 1.0, None)["lesion_area_px"] == 0
    assert lesion_area(cam, 8, 1.0, None, level=0.25)["lesion_area_px"] == 64.0
    image = np.full((4, 4), 0.5, np.float32)
    assert gradcam.lesion_overlay_png(image, cam[..., 0]) != gradcam.lesion_overlay_png(image, cam[..., 0], level=0.25)


def test_mining_scores_with_the_init_model_and_boosts_both_kinds(tmp_path, capsys):
    import argparse

    import keras

    from trainer import lesion_train, unet
    keras.utils.set_random_seed(4)
    model = unet.make_unet((32, 32, 1), filters=(4, 8, 8, 16))
    os.makedirs(tmp_path / "a")
    path = str(tmp_path / "a" / "model.keras")
    model.save(path)
    x = np.random.default_rng(2).random((6, 32, 32)).astype(np.float16)
    scores, _ = lesion_eval.predict(model, x)
    threshold = float(np.median(scores))
    (tmp_path / "a" / "metadata.json").write_text(json.dumps({"threshold": threshold}))
    labels = np.array([0, 0, 0, 1, 1, 1])
    masked = np.array([False, False, False, True, True, False])
    probs = np.full(6, 1 / 6)
    args = argparse.Namespace(init_from=path, hard_negatives=4.0, hard_positives=2.0)
    w = lesion_train._mine_hard_examples(args, model, x, labels, masked, probs)
    expected = lesion_data.boost_hard_positives(
        lesion_data.boost_hard_negatives(probs, labels, scores, threshold, 4.0), masked, scores, threshold, 2.0)
    np.testing.assert_allclose(w, expected)
    out = capsys.readouterr().out
    assert "Hard negatives:" in out and "Hard positives:" in out
    args.hard_negatives = 1.0  # off: only positives are scored and boosted
    w = lesion_train._mine_hard_examples(args, model, x, labels, masked, probs)
    np.testing.assert_allclose(w, lesion_data.boost_hard_positives(probs, masked, scores, threshold, 2.0))
    assert "Hard negatives:" not in capsys.readouterr().out


def test_group_norms_export_as_instance_normalization_with_their_scale_and_shift(tmp_path):
    """trainer.onnx_groupnorm: each GroupNormalization becomes one InstanceNormalization, same numbers."""
    import keras
    import onnx
    import onnxruntime as ort

    from trainer import export, unet
    model = unet.make_unet((32, 32, 1), filters=(8, 16, 16, 16))
    rng = np.random.default_rng(3)
    n_gn = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.GroupNormalization):  # trained-looking scale and shift
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.normal(0, 0.3, layer.beta.shape))
            n_gn += 1
    path = str(tmp_path / "m.onnx")
    export.convert(model, path, with_features=False)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("InstanceNormalization") == n_gn > 0 and "ReduceMean" not in ops
    x = rng.uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(np.asarray(got).reshape(-1), model.predict(x, verbose=0).reshape(-1), atol=1e-5)



def test_series_rules_count_patient_stack_parts_and_whole_tumor_free_volumes_but_not_loose_images():
    """lesion_eval.series_table: an LGG patient's stack gives a tumor part and a tumor-free part; a healthy
    head cut into `<volume>_z<slice>` files is one tumor-free series; brain-mri's loose JPEGs are no series."""
    from trainer import lesion_eval

    def row(path, source, label, score, split="validation"):
        return {"path": path, "source": source, "label": label, "score": score, "split": split}
    rows = [row(f"lgg/flair/tumor/TCGA_DU_1_2000_{i}.jpg", "lgg/flair", 1, s) for i, s in ((10, .9), (11, .8), (12, .1))]
    rows += [row(f"lgg/flair/notumor/TCGA_DU_1_2000_{i}.jpg", "lgg/flair", 0, s) for i, s in ((1, .7), (2, .1), (3, .6))]
    rows += [row(f"hh/flair/notumor/vol_subj1_z{i:03d}.png", "healthy-heads-test/flair", 0, s, "external")
             for i, s in enumerate((.1, .6, .1, .1))]
    rows += [row("brain-mri/notumor/Tr-no_0344.jpg", "brain-mri", 0, .9), row("brain-mri/notumor/Tr-no_0345.jpg",
                                                                             "brain-mri", 0, .9)]
    table = lesion_eval.series_table(rows, 0.5)
    assert set(table) == {"validation/lgg/flair", "external/healthy-heads-test/flair"}
    lgg, healthy = table["validation/lgg/flair"], table["external/healthy-heads-test/flair"]
    assert (lgg["any slice"]["sensitivity"], lgg["any slice"]["specificity"]) == (1.0, 0.0)
    assert (lgg["2 neighbouring slices"]["sensitivity"], lgg["2 neighbouring slices"]["specificity"]) == (1.0, 1.0)
    assert healthy["any slice"] == {"sensitivity": None, "specificity": 0.0, "positive_parts": 0, "negative_parts": 1}
    assert healthy["2 neighbouring slices"]["specificity"] == 1.0
    assert lesion_eval.tumor_free_series_max(rows) == {"flair": [0.6]}, "one whole tumor-free series: its highest slice"


def test_skip_tumor_free_leaves_out_one_collections_tumor_free_slices_and_refuses_a_name_it_does_not_know():
    from trainer import lesion_train
    collections = np.array(["brain-mri", "brain-mri", "lgg", "lgg", "brain-mri"])
    labels = np.array([0, 1, 0, 1, 0])
    is_train = np.array([True, True, True, True, False])
    kept = lesion_train.drop_tumor_free(is_train, collections, labels, ["brain-mri"])
    assert kept.tolist() == [False, True, True, True, False]
    assert lesion_train.drop_tumor_free(is_train, collections, labels, []).tolist() == is_train.tolist()
    with pytest.raises(SystemExit, match="brain_mri: not a training collection"):
        lesion_train.drop_tumor_free(is_train, collections, labels, ["brain_mri"])


def test_tumor_share_rescales_the_draws_and_keeps_each_slices_place_within_its_group():
    from trainer import lesion_data
    probs = np.array([0.1, 0.3, 0.2, 0.2, 0.2])
    marked = np.array([True, True, False, False, False])
    out = lesion_data.with_share(probs, marked, 0.6)
    assert out[marked].sum() == pytest.approx(0.6) and out.sum() == pytest.approx(1.0)
    assert out[1] / out[0] == pytest.approx(3.0) and out[2] == pytest.approx(out[3])
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="a share of the draws is in"):
            lesion_data.with_share(probs, marked, bad)
    with pytest.raises(ValueError, match="needs both marked and unmarked"):
        lesion_data.with_share(probs, np.ones(5, bool), 0.5)
    from trainer import lesion_train
    with pytest.raises(SystemExit):
        lesion_train._parse(["--data-dir", "x", "--tumor-share", "1.5"])


def test_train_sources_keeps_the_matching_training_slices_and_refuses_a_pattern_that_keeps_none():
    """--train-sources (v31's outline map): only some looks train; the validation side is left alone."""
    from trainer import lesion_train
    sources = np.array(["lgg/flair", "lgg/t1-pre", "brats-ped/t2", "brain-mri", "lgg/flair"])
    is_train = np.array([True, True, True, True, False])
    kept = lesion_train.keep_sources(is_train, sources, r"^(lgg/flair|brats-ped/(flair|t2))$")
    assert kept.tolist() == [True, False, True, False, False]
    assert lesion_train.keep_sources(is_train, sources, "").tolist() == is_train.tolist()
    with pytest.raises(SystemExit, match=r"matches no training slice \(the sources are: brain-mri, brats-ped/t2, "
                                         r"lgg/flair, lgg/t1-pre\)"):
        lesion_train.keep_sources(is_train, sources, "^lgg/t2$")
    with pytest.raises(SystemExit):  # argparse: a pattern that does not compile
        lesion_train._parse(["--data-dir", "x", "--train-sources", "lgg/(flair"])


def test_a_threshold_source_that_chooses_nothing_stops_the_map_trainer_before_it_fits(tmp_path, capsys):
    """Found after a 12-epoch run (session 26: BraTS-PEDs' validation FLAIR is all tumor slices); the one-class
    case itself is test_multi_source's."""
    from trainer import lesion_train
    synth.write_sequence_collection(str(tmp_path / "lgg"), patients=6, per_patient=6, size=48, sequences=("flair",))
    with pytest.raises(SystemExit) as e:
        lesion_train.main(["--data-dir", str(tmp_path / "lgg"), "--shares", "lgg=1", "--image-size", "32",
                           "--threshold-sources", "^lgg/t2$", "--model-dir", str(tmp_path / "models"),
                           "--cache-dir", str(tmp_path / "cache"), "--group-pattern", r"^((?:TCGA_).+)_\d+\.\w+$"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--threshold-sources '^lgg/t2$' matches no validation source (['lgg/flair'])" in err
    assert not (tmp_path / "models").exists()


def test_the_slice_cache_is_kept_apart_per_preprocessing(tmp_path):
    """v36 (v35 on preprocessing v2) was first evaluated on the v1 arrays a v35 run had cached under the same
    file list: a framed slice must come out of the cache as the preprocessing asked for prepares it."""
    import numpy as np

    from screening_core import preprocessing
    from tests import synth
    from trainer import discovery, lesion_data
    folder = tmp_path / "c" / "notumor"
    folder.mkdir(parents=True)
    framed = np.pad(synth.brain_slice(3, 200).astype(np.uint8), 24, constant_values=255)
    (folder / "framed.png").write_bytes(synth.encode(framed))
    ex = [discovery.Example(path=str(folder / "framed.png"), label=0, class_name="notumor", source="", collection="c")]
    cache = str(tmp_path / "cache")
    v1, v2 = preprocessing.PREPROCESSING_IDS[0], "gray-headcrop-pnorm-v2"
    got = {pid: lesion_data.build(ex, [str(tmp_path / "c")], 64, cache, processes=1, preprocessing_id=pid)["x"][0]
           for pid in (v1, v2, v1)}  # v1 cached first, then v2 must not be served v1's array
    want = {pid: preprocessing.prepare(framed.astype(np.float32), preprocessing.InputSpec(64, 64, preprocessing=pid))[..., 0]
            for pid in (v1, v2)}
    for pid in (v1, v2):
        assert np.abs(got[pid].astype(np.float32) - want[pid]).max() < 2e-3, pid
    assert np.abs(want[v1] - want[v2]).mean() > 0.05

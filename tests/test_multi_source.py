"""Several collections, patient-level splits, a held-out site and per-source metrics."""
import json
import os

import numpy as np
import pytest

from screening_core import metrics
from tests import synth
from trainer import dedup, discovery, evaluation
from trainer.config import TrainConfig

GROUP = r"^((?:TCGA_|.*brats).+)_\d+\.\w+$"


def test_sequence_folders_record_collection_and_sequence(tmp_path):
    root = tmp_path / "lgg"
    synth.write_sequence_collection(root, patients=2, per_patient=2)
    examples, notes = discovery.discover(str(root))
    assert notes["layout"] == "sequence_folders"
    assert notes["ignored"] == ["masks"]
    assert {(e.collection, e.sequence) for e in examples} == {("lgg", "flair"), ("lgg", "t1-pre")}
    assert len(examples) == 2 * 2 * 2
    assert {evaluation.source_key(e) for e in examples} == {"lgg/flair", "lgg/t1-pre"}


def test_two_collections_need_distinct_names(tmp_path):
    for parent in ("a/data", "b/data"):
        synth.write_class_folders(tmp_path / parent, {"yes": True, "no": False}, 1)
    with pytest.raises(discovery.DiscoveryError, match="share a folder name"):
        discovery.discover_all([str(tmp_path / "a/data"), str(tmp_path / "b/data")])


def test_patient_keys_define_groups_so_no_patient_crosses_the_split():
    near_dup = np.array([0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 9])  # slices 3-4 of two patients look alike
    keys = ["p1"] * 4 + ["p2"] * 4 + [None] * 4
    ids = dedup.merge_with_keys(near_dup, keys)
    assert len(set(ids[:4])) == 1 and len(set(ids[4:8])) == 1 and ids[0] != ids[4]
    assert len(set(ids[8:])) == 3 and ids[10] == ids[11]  # near-duplicates still join without keys
    labels = np.array([0, 1] * 6)
    for seed in range(5):
        is_val = dedup.split_groups(ids, labels, 0.3, seed)
        assert len(set(is_val[:4])) == 1 and len(set(is_val[4:8])) == 1


def test_metrics_at_a_fixed_threshold_handle_one_class_subsets():
    m = metrics.evaluate_at([1, 1, 1], [0.9, 0.2, 0.8], 0.5, groups=[0, 0, 1], bootstrap=10)
    assert m["roc_auc"] is None and m["specificity"] is None
    assert m["sensitivity"] == pytest.approx(2 / 3)
    m = metrics.evaluate_at([0, 1, 0, 1], [0.1, 0.9, 0.6, 0.4], 0.5, bootstrap=10)
    assert m["roc_auc"] == 0.75 and "ci95" in m


def test_threshold_sources_of_one_class_or_none_are_refused_with_the_counts():
    sources, labels = ["brats-ped/flair"] * 3 + ["healthy-heads/t1"] * 2, [1, 1, 1, 0, 0]
    assert evaluation.threshold_rows(sources, labels, r"^(brats-ped|healthy-heads)/").all()
    assert evaluation.threshold_rows(sources, labels, "").all()
    with pytest.raises(ValueError, match=r"one class only \(3 tumor, 0 tumor-free, sources \['brats-ped/flair'\]\)"):
        evaluation.threshold_rows(sources, labels, r"^brats-ped/flair$")
    with pytest.raises(ValueError, match="matches no validation source"):
        evaluation.threshold_rows(sources, labels, r"^lgg/flair$")


def test_a_one_class_threshold_source_stops_the_trainer_before_it_fits(tmp_path):
    """The mistake surfaced after a whole training run (a 12-epoch map, session 26); now the split refuses it."""
    from trainer.train import train
    lgg = tmp_path / "lgg"
    synth.write_sequence_collection(lgg, patients=4, per_patient=4, site="DU")
    cfg = TrainConfig(data_dir=[str(lgg)], group_pattern=GROUP, model_dir=str(tmp_path / "m"), image_size=32,
                      epochs=1, batch_size=8, base_filters=8, bootstrap=10, seed=1, val_fraction=0.5,
                      threshold_sources="^nothing$")
    with pytest.raises(ValueError, match="matches no validation source"):
        train(cfg)
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """One training run with every part of `make train`'s recipe: two collections, a held-out site,
    an external collection, and the lesion head trained from masks. Returns (data root, version, metadata)."""
    from trainer.train import train
    tmp_path = tmp_path_factory.mktemp("recipe")
    mri = tmp_path / "brain-mri"
    synth.write_class_folders(mri, {"glioma": True, "notumor": False}, 12, size=64)
    lgg = tmp_path / "lgg"
    synth.write_sequence_collection(lgg, patients=6, per_patient=4, site="DU")
    synth.write_sequence_collection(lgg, patients=2, per_patient=4, site="FG", seed=5000)
    ext = tmp_path / "brats-sample" / "flair"
    for cls, lesion in (("tumor", True), ("notumor", False)):
        os.makedirs(ext / cls)
        for i in range(3):
            (ext / cls / f"brats2012_HG00{i}_0{i}{int(lesion)}.png").write_bytes(
                synth.encode(synth.brain_slice(900 + i, 64, lesion=lesion)))
    cfg = TrainConfig(data_dir=[str(mri), str(lgg)], eval_data_dir=[str(tmp_path / "brats-sample")],
                      group_pattern=GROUP, holdout_pattern="^TCGA_FG_", model_dir=str(tmp_path / "m"),
                      image_size=32, epochs=1, batch_size=8, base_filters=8, bootstrap=10, seed=1,
                      val_fraction=0.3, lesion_weight=1.0)
    version_dir, md = train(cfg)
    return tmp_path, version_dir, md


def test_training_on_two_collections_reports_every_source(recipe_run):
    _, version_dir, md = recipe_run
    by = md["validation_metrics"]["by_source"]
    assert set(by["held_out_site"]) == {"lgg/flair", "lgg/t1-pre", "all"}
    assert by["held_out_site"]["all"]["n"] == 2 * 4 * 2
    assert set(by["external"]) == {"brats-sample/flair"}
    assert by["external"]["brats-sample/flair"]["n_groups"] == 3
    assert md["training"]["balanced_sources"] is True
    eda = json.load(open(os.path.join(version_dir, "eda", "eda.json")))
    assert eda["groups_crossing_split"] == 0
    assert eda["split"]["held_out_site"] == 16
    rows = open(os.path.join(version_dir, "validation_predictions.csv")).read().splitlines()
    assert rows[0].split(",")[-2:] == ["split", "source"]
    held = [r for r in rows[1:] if ",held_out_site," in r]
    assert len(held) == 16 and all("TCGA_FG_" in r for r in held)
    train_val = [r for r in rows[1:] if ",validation," in r]
    assert not any("TCGA_FG_" in r for r in train_val)
    card = open(os.path.join(version_dir, "model_card.md")).read()
    assert "lgg/flair" in card and "held-out site" in card.lower()

    # Threshold chosen again on brain-mri alone, and this run attached as its own check.
    from trainer import generalisation
    assert generalisation.main([version_dir, "--threshold-sources", "^brain-mri$", "--check", version_dir]) == 0
    md2 = json.load(open(os.path.join(version_dir, "metadata.json")))
    import csv
    val = [r for r in csv.DictReader(open(os.path.join(version_dir, "validation_predictions.csv")))
           if r["split"] == "validation" and r["source"] == "brain-mri"]
    want = metrics.choose_threshold([int(r["label"]) for r in val], [float(r["score"]) for r in val],
                                    md["threshold_target_sensitivity"])
    assert md2["threshold"] == want and md2["validation_metrics"]["n"] == len(val)
    assert md2["validation_metrics"]["threshold_sources"] == "^brain-mri$"
    assert md2["generalisation"][0]["by_source"].keys() == {"brats-sample/flair"}
    card = open(os.path.join(version_dir, "model_card.md")).read()
    assert "Generalisation checks" in card and "Trained on brain-mri, lgg only" in card

    # A lesion-first model's acceptance targets are read again with the checks (trainer.targets)
    from screening_core import artifact
    artifact.update_metadata(version_dir, lambda m: m.update(lesion={"map_figures": {}, "level_bins": {}}))
    assert generalisation.main([version_dir, "--check", version_dir]) == 0
    md3 = json.load(open(os.path.join(version_dir, "metadata.json")))
    rows = {r["what"]: r for r in md3["targets"]["rows"]}
    assert md3["targets"]["threshold"] == md3["threshold"] and rows["validation brain-mri: auc"]["value"] is not None
    assert "Acceptance targets" in open(os.path.join(version_dir, "model_card.md")).read()


def test_lesion_supervised_training_exports_the_plain_model(recipe_run):
    """Masks train a second head; the artifact is the one-output CNN the scorer expects."""
    import tensorflow as tf

    from screening_core import artifact
    from trainer import augment
    from trainer.train import _mask_specs
    root, version_dir, md = recipe_run
    mri, lgg = root / "brain-mri", root / "lgg"
    examples, _ = discovery.discover_all([str(mri), str(lgg)])
    specs = dict(zip((e.path for e in examples), _mask_specs(examples, [str(mri), str(lgg)], "flair")[0], strict=True))
    for e in examples:
        s = specs[e.path]
        if e.collection == "brain-mri" or (e.label == 1 and e.sequence != "flair"):
            assert s == ""
        elif e.label == 0:
            assert s == "-"
        else:
            assert s.endswith(os.path.basename(e.path))
    # the mask follows the image through flips, rotations and zooms
    x = tf.constant(synth.brain_slice(4, 64, lesion=True, quadrant="tl")[..., None] / 255.0, tf.float32)
    m = tf.cast(x >= 245 / 255.0, tf.float32)
    for i in range(5):
        xa, ma = augment.augment_with_mask(x, m, tf.constant([3, i], tf.int64))
        bright = xa.numpy()[..., 0] > 0.7
        assert ma.numpy()[..., 0][bright].mean() > ma.numpy().mean()
    model, _ = artifact.load(version_dir)
    assert len(model.outputs) == 1 and model.output_shape == (None, 1)
    assert md["training_config"]["lesion_weight"] == 1.0

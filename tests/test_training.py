"""Short real training runs on generated images."""
import csv
import json
import os

import keras
import numpy as np
import pytest

from screening_core import artifact, preprocessing
from tests import synth
from trainer.config import TrainConfig
from trainer.train import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synth.write_class_folders(root, {"yes": True, "no": False}, 24, size=64)
    (root / "no" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return str(root)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(data_dir, model_dir, **kw):
    base = dict(data_dir=data_dir, model_dir=str(model_dir), image_size=32, epochs=2, batch_size=4,
                base_filters=8, cpu_replicas=0, bootstrap=20, early_stopping_patience=5, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def cli_artifact(data_dir, tmp_path_factory):
    """One real `python -m trainer.task` run with MirroredStrategy over two logical CPUs, in a fresh
    process: the entry point must split the CPU itself, before TensorFlow initialises its devices."""
    import subprocess
    import sys
    model_dir = tmp_path_factory.mktemp("cli-model")
    out = subprocess.run(
        [sys.executable, "-m", "trainer.task", "--data-dir", data_dir, "--model-dir", str(model_dir),
         "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--base-filters", "8",
         "--cpu-replicas", "2", "--bootstrap", "20", "--early-stopping-patience", "5", "--seed", "3",
         "--preprocessing", "gray-headcrop-pnorm-v1"],  # an older prepare(), as the Makefile rebuilds v3-v35
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return str(model_dir), out.stdout + out.stderr


def test_mirrored_training_from_the_cli_writes_a_reloadable_artifact(cli_artifact):
    model_dir, console = cli_artifact
    version_dir = os.path.join(model_dir, "brain-tumor-cnn", "1")
    assert f"Artifact written to {version_dir}" in console
    metadata = json.load(open(os.path.join(version_dir, "metadata.json")))
    t = metadata["training"]
    assert t["strategy"] == "MirroredStrategy" and t["replicas"] == 2
    assert t["global_batch_size"] == 8
    for name in ("model.keras", "metadata.json", "model_card.md", "roc.png", "calibration.png",
                 "eda/eda.json", "eda/eda.png", "validation_predictions.csv"):
        assert os.path.exists(os.path.join(version_dir, name)), name
    eda = json.load(open(os.path.join(version_dir, "eda", "eda.json")))
    assert eda["groups_crossing_split"] == 0
    assert [s["path"].endswith("broken.png") for s in eda["skipped_files"]] == [True]
    assert eda["n_images"] == 48

    model, md = artifact.load(version_dir)  # verifies sha256, safe_mode=True
    assert md == metadata
    assert md["input_spec"]["height"] == 32 and md["input_spec"]["preprocessing"] == "gray-headcrop-pnorm-v1"
    spec = preprocessing.InputSpec.from_dict(md["input_spec"])
    rows = list(csv.DictReader(open(os.path.join(version_dir, "validation_predictions.csv"))))
    x = np.stack([preprocessing.image_bytes_to_input(open(r["path"], "rb").read(), spec) for r in rows])
    scores = model.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(scores, [float(r["score"]) for r in rows], rtol=1e-4, atol=1e-5)
    assert 0.0 <= md["threshold"] <= 1.0
    assert md["validation_metrics"]["sensitivity"] >= md["threshold_target_sensitivity"]


def test_tampered_model_is_refused(cli_artifact, tmp_path):
    import shutil
    version_dir = shutil.copytree(os.path.join(cli_artifact[0], "brain-tumor-cnn", "1"), tmp_path / "1")
    artifact.load(str(version_dir))  # the copy itself is intact
    with open(version_dir / "model.keras", "ab") as f:
        f.write(b"x")
    with pytest.raises(artifact.ArtifactError, match="sha256"):
        artifact.load(str(version_dir))


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated preemption")


class _EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_interrupted_run_resumes_from_backup(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path, epochs=4)
    first = _EpochRecorder()
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[first, _Interrupt()])
    assert first.epochs == [0, 1]
    second = _EpochRecorder()
    train(cfg, extra_callbacks=[second])
    assert second.epochs == [2, 3]  # continued from the backup, not from epoch 0


def test_published_version_is_never_overwritten(data_dir, tmp_path):
    (tmp_path / "brain-tumor-cnn" / "7").mkdir(parents=True)
    (tmp_path / "brain-tumor-cnn" / "7" / "metadata.json").write_text("{}")
    calls = []

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            calls.append(1)
    with pytest.raises(FileExistsError, match="never overwritten"):
        train(_cfg(data_dir, tmp_path, version="7"), extra_callbacks=[Spy()])
    assert not calls  # refused before training, not after

"""One Keras model per process: the launcher's check, an in-process scorer and Grad-CAM share it."""
import json
import os

import pytest

from beam_pipeline import model_store
from screening_core import artifact
from tests import tiny_model


def test_load_shares_one_model_and_rereads_metadata(tmp_path):
    version_dir = tiny_model.write_tiny_artifact(tmp_path)
    model, md = model_store.load(version_dir)
    assert model_store.load(version_dir)[0] is model
    # A re-chosen threshold (metadata re-sealed) is the same model with new metadata.
    path = os.path.join(version_dir, artifact.METADATA_FILE)
    changed = dict(md, threshold=0.25)
    with open(path, "w") as f:
        json.dump(changed, f)
    artifact.seal(version_dir)
    again, md2 = model_store.load(version_dir)
    assert again is model and md2["threshold"] == 0.25
    # Another model replaces it; a tampered file is refused even though a model is held.
    other = tiny_model.write_tiny_artifact(tmp_path / "other", seed=7)
    assert model_store.load(other)[0] is not model
    with open(os.path.join(other, artifact.MODEL_FILE), "ab") as f:
        f.write(b"x")
    with pytest.raises(artifact.ArtifactError):
        model_store.load(other)

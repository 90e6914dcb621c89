"""A tiny, untrained model in the real artifact format, for pipeline tests."""
import keras

from trainer import artifact, preprocessing
from trainer.model import make_model


def write_tiny_artifact(root, size=32, threshold=0.5, seed=0):
    keras.utils.set_random_seed(seed)
    spec = preprocessing.InputSpec(height=size, width=size)
    model = make_model((size, size, 1), base_filters=4, dropout=0.0)
    version_dir = str(root / "tiny" / "1")
    artifact.write_artifact(model, version_dir, dict(
        name="tiny", version="1", input_spec=spec, class_names=["no_tumor", "tumor"],
        threshold=threshold, target_sensitivity=0.95, validation_metrics={},
        data_fingerprint="none", training_config={}))
    return version_dir

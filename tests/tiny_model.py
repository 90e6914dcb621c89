"""A tiny, untrained model in the real artifact format, for pipeline tests."""
import os
import shutil
import tempfile

import keras

from screening_core import artifact, preprocessing
from trainer.model import make_model

_built = {}  # (size, threshold, seed, ood) -> a version folder this process wrote; copies are handed out


def write_tiny_artifact(root, size=32, threshold=0.5, seed=0, ood=False, lesion_bias=None):
    """root/tiny/1: the same seeded artifact for the same arguments, built once per test process and
    copied (0.2-1.3 s each otherwise, over forty times a suite); every caller owns its copy.

    `lesion_bias`: a lesion-first U-Net (trainer/unet.py) instead of the CNN, its lesion map's logit
    fixed to this value everywhere (5.0: the map says "lesion" in every cell, -5.0: nowhere)."""
    key = (size, threshold, seed, ood, lesion_bias)
    if key not in _built:
        _built[key] = _write(tempfile.mkdtemp(prefix="tiny-model-"), size, threshold, seed, ood, lesion_bias)
    version_dir = os.path.join(str(root), "tiny", "1")
    shutil.copytree(_built[key], version_dir)
    return version_dir


def _write(root, size, threshold, seed, ood, lesion_bias=None):
    keras.utils.set_random_seed(seed)
    spec = preprocessing.InputSpec(height=size, width=size)
    extra = {}
    if lesion_bias is None:
        model = make_model((size, size, 1), base_filters=4, dropout=0.0)
    else:
        import numpy as np

        from trainer import unet
        model = unet.make_unet((size, size, 1), filters=(4, 8, 8, 16))
        logits = model.get_layer("lesion_logits")
        kernel, _ = logits.get_weights()
        logits.set_weights([np.zeros_like(kernel), np.full((1,), lesion_bias, np.float32)])
        extra = {"head": "lesion_map"}
    version_dir = os.path.join(root, "tiny", "1")
    artifact.write_artifact(model, version_dir, dict(
        name="tiny", version="1", input_spec=spec, class_names=["no_tumor", "tumor"],
        threshold=threshold, target_sensitivity=0.95, validation_metrics={},
        data_fingerprint="none", training_config={}, extra=extra))
    if ood:
        attach_ood_reference(version_dir, model, spec)
    return version_dir


def attach_ood_reference(version_dir, model, spec, n=240):
    """An OOD reference fitted on generated brain slices (the tiny model's 'training data')."""
    import numpy as np

    from tests import synth
    from trainer import ood
    xs = [preprocessing.prepare(synth.brain_slice(s, 64, lesion=bool(s % 2)).astype(np.float32), spec)
          for s in range(n)]
    labels = np.array([s % 2 for s in range(n)])
    train, val = slice(0, n // 2), slice(n // 2, n)
    _, train_f = ood.features_of(xs[train], model)
    val_p, val_f = ood.features_of(xs[val], model)
    ref = ood.fit(train_f, labels[train], val_f, list(range(n - n // 2)))
    ood.attach(version_dir, ref, val_p)


def rethreshold_on_new_predictions(version_dir, metadata):
    """Choose the artifact's threshold again (trainer.generalisation.rethreshold) from 40 new validation rows whose
    threshold differs from the tiny model's: figures measured at the old one must go."""
    from trainer import generalisation
    with open(os.path.join(version_dir, "validation_predictions.csv"), "w") as f:
        f.write("path,class_name,label,score,split,source,group\n" + "".join(
            f"x{i}.png,{'tumor' if i % 2 else 'notumor'},{i % 2},{0.1 + 0.8 * (i % 2) + 0.001 * i},validation,s,g{i}\n"
            for i in range(40)))
    metadata["threshold_target_sensitivity"] = 0.95
    metadata.setdefault("training_config", {})["bootstrap"] = 10
    generalisation.rethreshold(version_dir, metadata, "")

"""Export an artifact's model to ONNX for the faster CPU engine (ONNX Runtime).

  python -m trainer.export models/brain-tumor-cnn/3

Writes `model.onnx` beside `model.keras`: the same weights, with the OOD
guard's pooled activations as extra outputs when the artifact has an OOD
reference, the class-activation map that equals Grad-CAM for this head
(screening_core/gradcam.py: cam_head) and, behind an orientation network, the
quarter turn it undid (screening_core/upright.py: turn_output), so one forward
pass gives probability, features, heatmap and turn, as on TensorFlow. The export is refused unless ONNX Runtime reproduces
TensorFlow's probabilities within PARITY_TOLERANCE on the artifact's own
validation images (or generated inputs when those are not on this machine);
the measured difference, the opset and the output names go into
metadata.json["engines"], and SHA256SUMS is re-sealed. TensorFlow stays the
engine for training, GPUs and Grad-CAM of models whose head has no CAM.
"""
import argparse
import json
import os

import numpy as np

from trainer import HelpFormatter

ONNX_FILE = "model.onnx"
OPSET = 17
PARITY_TOLERANCE = 1e-4


def _scoring_model(model, with_features):
    """Probability, the OOD features when the artifact has a reference, the CAM map where the head allows, and the
    quarter turn an orientation network undid where the model has one."""
    from screening_core import gradcam, ood, upright
    return ood.feature_model(model, None if with_features else [], cam=gradcam.has_review_map(model),
                             turn=upright.has_orientation(model))


def convert(model, path, with_features):
    """Write the ONNX graph of the scoring model; returns its output names in order."""
    import tensorflow as tf
    import tf2onnx
    scoring = _scoring_model(model, with_features)
    h, w, c = model.input_shape[1:]
    spec = (tf.TensorSpec((None, h, w, c), tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def forward(x):
        return scoring(x, training=False)

    import onnx

    from trainer import onnx_groupnorm
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET)
    onnx_groupnorm.fuse(proto, model)
    onnx.save(proto, path)
    return [o.name for o in proto.graph.output]


def parity_inputs(version_dir, spec, n=256):
    """Up to n of the artifact's validation images, else generated head-like inputs."""
    from screening_core import preprocessing
    from trainer import artifact_data
    try:
        paths = [r["path"] for r in artifact_data.split_rows(version_dir) if r["split"] == "validation"]
        paths = [p for p in paths if os.path.exists(p)][:n]
    except OSError:
        paths = []
    if paths:
        return np.stack(artifact_data.read_inputs(paths, spec)), "validation images"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:spec.height, 0:spec.width] / spec.height - 0.5
    imgs = [((xx / rng.uniform(0.3, 0.45)) ** 2 + (yy / rng.uniform(0.3, 0.45)) ** 2 < 1)
            * rng.uniform(0.2, 1.0, (spec.height, spec.width)) for _ in range(64)]
    return np.stack([preprocessing.prepare(i.astype(np.float32), spec) for i in imgs]), "generated inputs"


def export(version_dir):
    """Convert, check parity, record and seal; returns the metadata["engines"] entry."""
    import onnxruntime as ort

    from screening_core import artifact, gradcam, ood, preprocessing, upright
    model, metadata = artifact.load(version_dir)
    spec = preprocessing.InputSpec.from_dict(metadata["input_spec"])
    with_features = bool(metadata.get("ood"))
    path = os.path.join(version_dir, ONNX_FILE)
    tmp = path + ".tmp"
    outputs = convert(model, tmp, with_features)
    x, what = parity_inputs(version_dir, spec)
    sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    want = _scoring_model(model, with_features).predict(x, batch_size=64, verbose=0)
    want = want if isinstance(want, list) else [want]
    dp = float(np.max(np.abs(np.asarray(got[0]).reshape(-1) - np.asarray(want[0]).reshape(-1))))
    turn = upright.has_orientation(model)
    turns_differ = 0
    if turn:  # the last output; a turn is a decision, so ONNX Runtime must take every one TensorFlow takes
        turns_differ = int(np.sum(np.asarray(got.pop()).reshape(-1) != np.asarray(want.pop()).reshape(-1)))
    dcam = None
    if gradcam.has_review_map(model):  # the heatmap maps, relative to their peak
        peak = max(float(np.max(want[-1])), 1e-6)
        dcam = float(np.max(np.abs(np.asarray(got[-1]) - np.asarray(want[-1])))) / peak
    if dp > PARITY_TOLERANCE or (dcam is not None and dcam > PARITY_TOLERANCE) or turns_differ:
        os.remove(tmp)
        raise artifact.ArtifactError(f"ONNX Runtime differs from TensorFlow by {dp:.2e} (probability), "
                                     f"{dcam} (heatmap map, relative) > {PARITY_TOLERANCE}, or turns back "
                                     f"{turns_differ} slices otherwise; not exported")
    os.replace(tmp, path)
    entry = {"file": ONNX_FILE, "opset": OPSET, "outputs": outputs,
             "sha256": artifact.sha256_file(path), "keras_sha256": metadata["model_sha256"],
             "feature_outputs": ood.layer_names(model) if with_features else [],
             "cam_output": dcam is not None, "max_relative_cam_difference": dcam, "turn_output": turn,
             "max_abs_probability_difference": dp, "parity_checked_on": f"{len(x)} {what}"}
    artifact.update_metadata(version_dir, lambda md: md.setdefault("engines", {}).update(onnxruntime=entry))
    return entry


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("artifact")
    args = parser.parse_args(argv)
    print(json.dumps(export(args.artifact), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

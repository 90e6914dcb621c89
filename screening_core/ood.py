"""Out-of-distribution guard at scoring time: the features, the reference and its score.

Fitting the reference (and measuring the method) is training work and lives in
`trainer.ood`; the scorer needs only what is here. See trainer/ood.py for why
the guard is built as it is.
"""
import json
import os

import numpy as np

REFERENCE_FILE = "ood_reference.npz"
HISTOGRAM = "input_histogram"
HIST_BINS = 16


def layer_names(model):
    """The layers whose pooled activations describe an image: every block's output and the last conv."""
    return [layer.name for layer in model.layers if layer.name.endswith("_pool")] + ["last_conv"]


def input_histogram(x):
    """(n, 17): histogram of each model input's foreground intensities + foreground share.

    The network's features miss what it never had to tell apart (a flat CT brain
    window looks like a dark MRI to it); the intensity profile of the normalised
    input does not. Equal to np.histogram(v[v > 0.05], 16, (0, 1)) per image, in
    one bincount for the batch (16 equal bins of [0, 1]: v * 16 is exact, so no edge is ambiguous).
    """
    x = np.asarray(x)[..., 0]
    n, pixels = len(x), int(np.prod(x.shape[1:]))
    where = np.flatnonzero(x.reshape(-1) > 0.05)
    bins = np.minimum((x.reshape(-1)[where] * np.float32(HIST_BINS)).astype(np.int64), HIST_BINS - 1)
    counts = np.bincount(where // pixels * HIST_BINS + bins, minlength=n * HIST_BINS).reshape(n, HIST_BINS)
    share = counts.sum(axis=1)
    return np.c_[counts / np.maximum(share, 1)[:, None], share / max(pixels, 1)].astype(np.float32)


class Component:
    """Mahalanobis distance to the nearer class mean, shared covariance, for one feature set."""

    def __init__(self, name, means, precision, scale=1.0):
        self.name = name
        self.means = np.asarray(means, np.float64)
        self.precision = np.asarray(precision, np.float64)
        self.scale = float(scale)

    def distance(self, features):
        f = np.asarray(features, np.float64)
        d = f[:, None, :] - self.means[None, :, :]
        return np.einsum("nkd,de,nke->nk", d, self.precision, d).min(axis=1)


class Reference:
    """Sum over feature sets of their Mahalanobis distances, each divided by its validation scale."""

    def __init__(self, components, threshold, score_histogram=None, info=None):
        self.components = list(components)
        self.threshold = float(threshold)
        self.score_histogram = None if score_histogram is None else np.asarray(score_histogram, np.float64)
        self.info = dict(info or {})

    @property
    def names(self):
        return [c.name for c in self.components]

    def score(self, features):
        """OOD score per image; `features` maps component name -> (n, d) array."""
        return np.sum([c.distance(features[c.name]) / c.scale for c in self.components], axis=0).astype(np.float32)

    def save(self, path):
        arrays = {"threshold": self.threshold, "info": json.dumps(self.info), "names": json.dumps(self.names),
                  "score_histogram": np.zeros(0) if self.score_histogram is None else self.score_histogram}
        for i, c in enumerate(self.components):
            arrays.update({f"means_{i}": c.means, f"precision_{i}": c.precision, f"scale_{i}": c.scale})
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as z:
            names = json.loads(str(z["names"]))
            comps = [Component(n, z[f"means_{i}"], z[f"precision_{i}"], float(z[f"scale_{i}"]))
                     for i, n in enumerate(names)]
            hist = z["score_histogram"]
            return cls(comps, float(z["threshold"]), hist if hist.size else None, json.loads(str(z["info"])))


def feature_model(model, names=None, cam=False, turn=False):
    """One call: [tumor probability, pooled activations of `names` (default: layer_names()), CAM map if `cam`,
    turn undone if `turn`].

    With `cam`, the review map follows the features (gradcam.review_output): a lesion-first model's
    own lesion map, or relu(A . w) on the last conv's map where that equals Grad-CAM
    (gradcam.cam_head), so the scoring pass also yields heatmaps. With `turn`, the last output is the
    quarter turn (degrees) an orientation network undid before scoring (upright.turn_output), where the
    model has one."""
    import keras

    from screening_core import gradcam, upright
    names = layer_names(model) if names is None else names
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"ood_pool_{n}")(model.get_layer(n).output)
              for n in names]
    extra = [gradcam.review_output(model)] if cam else []
    extra += [upright.turn_output(model)] if turn else []
    return keras.Model(model.inputs, [model.output, *pooled, *[e for e in extra if e is not None]])


def split_outputs(model_names, outputs, x):
    """(probabilities, {component: features}) from a feature_model call on inputs `x`."""
    probs = np.asarray(outputs[0], np.float32).reshape(-1)
    feats = {n: np.asarray(o) for n, o in zip(model_names, outputs[1:], strict=True)}
    feats[HISTOGRAM] = input_histogram(x)
    return probs, feats


def reference_path(version_dir):
    return os.path.join(version_dir, REFERENCE_FILE)


SCORE_BINS = 10  # the drift reference's probability bins; beam_pipeline.summary tallies with it

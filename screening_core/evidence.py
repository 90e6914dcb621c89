"""Two slice probabilities combined as independent evidence: sigmoid(logit(p_a) + logit(p_b)).

Why (model v9, docs/model_v4_notes.md): the lesion-first map (v8) and the slice classifier (v3) fail in
different places. v3 knows brain-mri's collection (AUC 0.989) but reads level and sequence elsewhere
(held-out LGG site 0.863, brats-sample FLAIR 0.576); v8 finds lesions at sites it never saw (0.954, 0.883)
but flags tumor-free brain-mri slices v3 clears. Adding their log-odds (multiplying their odds) keeps a
slice high only when neither model has strong evidence against a tumor, and kept both strengths on the
validation split, the held-out site and brats-sample.

A Keras layer registered under this package, so an artifact that uses it loads in safe mode wherever
screening_core is imported (artifact.load imports this module); ONNX export turns it into plain ops.
"""
import keras

EPS = 1e-7  # float32 probabilities saturate at 0 and 1; their log-odds are clipped to +-16


@keras.saving.register_keras_serializable(package="screening_core")
class OddsProduct(keras.layers.Layer):
    """[p_a, p_b, ...] (each (n, 1)) -> sigmoid(w_a logit(p_a) + w_b logit(p_b) + ...), (n, 1) float32.

    `weights` default to 1 each (v9-v13: the plain sum); 0.5 for a member's two passes (the image and
    its mirror, `MirrorImage`) averages that member's log-odds instead of counting its evidence twice.

    `floors` (one per input, None for none): the lowest log-odds an input may contribute. Why (v30,
    docs/model_v4_notes.md row VF): the slice classifiers learnt a look ("axial T2 like brain-mri's
    tumor-free collection = no tumor") and veto a real tumor on such a slice with log-odds of -6 to -10
    each, far below anything they gave a validation tumor (lowest -3.3 to -4.3); a floor caps how much a
    member's confidence can outvote a lesion the maps find, chosen where no validation operating point
    moves."""

    def __init__(self, weights=None, floors=None, **kwargs):
        super().__init__(**kwargs)
        self.member_weights = None if weights is None else [float(w) for w in weights]
        self.floors = None if floors is None else [None if f is None else float(f) for f in floors]

    def call(self, inputs):
        from keras import ops
        if self.member_weights is not None and len(self.member_weights) != len(inputs):
            raise ValueError(f"{len(inputs)} probabilities for {len(self.member_weights)} weights")
        if self.floors is not None and len(self.floors) != len(inputs):
            raise ValueError(f"{len(inputs)} probabilities for {len(self.floors)} floors")
        total = 0.0
        for i, p in enumerate(inputs):
            p = ops.clip(ops.cast(p, "float32"), EPS, 1.0 - EPS)
            w = 1.0 if self.member_weights is None else self.member_weights[i]
            odds = ops.log(p) - ops.log(1.0 - p)
            if self.floors is not None and self.floors[i] is not None:
                odds = ops.maximum(odds, self.floors[i])
            total = total + w * odds
        return ops.sigmoid(total)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        if self.member_weights is not None:  # absent in v9-v13's saved graphs: they load as the plain sum
            config["weights"] = self.member_weights
        if self.floors is not None:  # absent before v30: those graphs load without floors
            config["floors"] = self.floors
        return config


@keras.saving.register_keras_serializable(package="screening_core")
class MirrorImage(keras.layers.Layer):
    """(n, H, W, C) -> the same images mirrored left to right.

    Why: a head is close to mirror-symmetric and a tumor may sit in either hemisphere, yet a network
    trained with random flips still scores an image and its mirror differently (its stride-2 "same"
    padding is one-sided, and it learnt from finitely many draws). Scoring both and averaging their
    log-odds (`OddsProduct` weights 0.5) is flip test-time augmentation inside the graph, so every
    engine (Keras, ONNX) and every consumer of the artifact gets the same score; the averaged score is
    the same for an image and its mirror."""

    def call(self, x):
        from keras import ops
        return ops.flip(x, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape

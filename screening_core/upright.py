"""A slice turned by a quarter, turned back inside the model's graph, and its map turned with it.

Why in the graph: every engine (Keras, ONNX Runtime, RunInference on Dataflow) and every consumer of an
artifact then scores a turned copy as its upright original, with nothing to keep in step outside the model.
The turn is told by a small network (`trainer.orientation`) whose softmax over the four quarter turns is the
second input of both layers here; a sideways turn is undone only where that network gives it more than
`confidence`, a half turn (where asked) only above a far higher `half_turn_confidence`, so a slice it is unsure
of reaches the members as it came (`chosen_turn`).

The members then see the upright slice, so the review map comes out upright too: `AsGiven` turns it back
onto the image as the user gave it, where the overlays, lesion areas and write-back draw it. The scorer also
reads which turn was undone (`turn_output`, `TurnUndone`): a reader of a row should know that the slice was
scored turned upright, since the turn was the orientation network's call, not the scanner's.

Registered under this package, so an artifact that uses them loads in safe mode wherever `screening_core`
is importable (`screening_core.artifact.load` imports this module).
"""
import keras

QUARTERS = 4


def quarter_turn(x):
    """(n, H, W, C) with H == W -> each image turned 90 degrees counter-clockwise (np.rot90 on the H, W axes)."""
    from keras import ops
    return ops.flip(ops.transpose(x, (0, 2, 1, 3)), axis=1)


def chosen_turn(probabilities, confidence, half_turn_confidence=None):
    """(n, 4) one-hot of the turn to undo: 90 or 270 degrees, whichever is the more probable, where the two together
    are above `confidence`; else 180 where `half_turn_confidence` is given and the half turn's probability is above
    it; else 0 (leave the slice as it came).

    Why only sideways: a slice turned by 90 or 270 degrees is what loses tumors (two fifths of brain-mri's
    validation tumors against 8 % upside down, `trainer.copy_check` on v37), and sideways is what the network
    tells best: the head's long axis and the neck are cues at every level. Upside down it tells from upright by
    the face and the posterior fossa, absent on skull-stripped slices near the vertex, where it was sure of a
    wrong half turn on 11-17 % of brats-sample's upright slices (docs/model_v4_notes.md row ORI). Which of
    90 and 270 (the head's front) is the weaker cue, so the two are summed to decide whether to turn at all;
    a wrong choice between them leaves the slice upside down, the cheaper error.

    Upside down still costs tumors (v39 92 % found, 99 % upright), and a vertical flip, what a NIfTI volume saved
    as images without its orientation often brings, reads as one to members trained with mirroring. The network is
    sure of a half turn far less often than of a sideways one, and wrongly so on skull-stripped vertex slices at
    0.9. At `half_turn_confidence` 0.9999 it turned one skull-stripped skull-base fragment of 13,500 upright slices
    upside down and set 40 % of brain-mri's upside-down validation slices upright, but few skull-stripped ones
    (brats-sample upside down: FLAIR AUC 0.822 -> 0.846, T1ce 0.620 -> 0.659): too little to publish
    (docs/model_v4_notes.md row HALF), so no default uses it."""
    from keras import ops
    sideways = probabilities[:, 1:2] + probabilities[:, 3:4]
    k = ops.where(probabilities[:, 1] >= probabilities[:, 3], 1, 3)
    k = ops.where(sideways[:, 0] > confidence, k, 0)
    if half_turn_confidence is not None:
        k = ops.where((k == 0) & (probabilities[:, 2] > half_turn_confidence), 2, k)
    return ops.one_hot(k, QUARTERS, dtype=probabilities.dtype)


def _select(x, onehot, turns_of_k):
    """sum over k of onehot[:, k] * (x turned `turns_of_k(k)` quarters): exact, since onehot is 0 or 1."""
    turned, out = x, None
    by_quarters = [x]
    for _ in range(QUARTERS - 1):
        turned = quarter_turn(turned)
        by_quarters.append(turned)
    for k in range(QUARTERS):
        term = onehot[:, k, None, None, None] * by_quarters[turns_of_k(k) % QUARTERS]
        out = term if out is None else out + term
    return out


class _Turn(keras.layers.Layer):
    def __init__(self, confidence=0.9, half_turn_confidence=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.25 <= float(confidence) < 1.0:
            raise ValueError(f"confidence is a probability in [0.25, 1), got {confidence}")
        if half_turn_confidence is not None and not float(confidence) <= float(half_turn_confidence) < 1.0:
            raise ValueError(f"half_turn_confidence is a probability in [confidence, 1), got {half_turn_confidence}")
        self.confidence = float(confidence)
        self.half_turn_confidence = None if half_turn_confidence is None else float(half_turn_confidence)

    def _choice(self, probabilities):
        return chosen_turn(probabilities, self.confidence, self.half_turn_confidence)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = {**super().get_config(), "confidence": self.confidence}
        if self.half_turn_confidence is not None:  # absent: an artifact from before the option loads as it was
            config["half_turn_confidence"] = self.half_turn_confidence
        return config


@keras.saving.register_keras_serializable(package="screening_core")
class Upright(_Turn):
    """[images (n, H, W, C), turn probabilities (n, 4)] -> the images turned back to upright where the turn is
    sure (a slice turned k quarters counter-clockwise is turned 4 - k more), else as they came."""

    def call(self, inputs):
        x, probabilities = inputs
        return _select(x, self._choice(probabilities), lambda k: QUARTERS - k)


@keras.saving.register_keras_serializable(package="screening_core")
class AsGiven(_Turn):
    """[maps of the upright slices (n, h, w, C), the same turn probabilities] -> the maps turned as the slices
    came (k quarters counter-clockwise), so that they lie on the image the user gave. `confidence` must be
    the `Upright` layer's."""

    def call(self, inputs):
        x, probabilities = inputs
        return _select(x, self._choice(probabilities), lambda k: k)


UPRIGHT_LAYER = "upright_image"  # the `Upright` layer of an ensemble built with an orientation network


@keras.saving.register_keras_serializable(package="screening_core")
class TurnUndone(_Turn):
    """Turn probabilities (n, 4) -> the turn `Upright` undid, in degrees counter-clockwise (n,): 90, 180 or 270,
    or 0 where the slice was scored as it came. The confidences must be the `Upright` layer's."""

    def call(self, probabilities):
        from keras import ops
        degrees = ops.convert_to_tensor([0.0, 90.0, 180.0, 270.0], dtype=probabilities.dtype)
        return ops.sum(self._choice(probabilities) * degrees, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)


def has_orientation(model):
    """Whether `model` turns slices upright first (an ensemble built with `trainer.ensemble --orientation`)."""
    return any(layer.name == UPRIGHT_LAYER for layer in model.layers)


def turn_output(model):
    """The degrees a slice was turned back before scoring, as a tensor of `model`'s graph (`TurnUndone` on the
    probabilities its `Upright` layer acted on, at that layer's confidence), or None for a model without one."""
    if not has_orientation(model):
        return None
    layer = model.get_layer(UPRIGHT_LAYER)
    return TurnUndone(layer.confidence, layer.half_turn_confidence, name="turned_back")(layer.input[1])

"""Model v4: a lesion-first detector, a small U-Net whose slice score is read from its lesion map.

A slice classifier (v1-v3) learns whatever separates tumor from tumor-free
slices in its training collections: anatomical level, sequence, source. Here
the network predicts, per pixel, the probability of tumor, and the slice
probability is the highest mean of that map over a small window
(AveragePooling -> GlobalMaxPooling: a smooth top-k of about 36 input pixels).
A slice can therefore only score high where the map finds a lesion, and every
pixel outside a tumor mask is a negative at the tumor's own level.

Group normalisation, not batch normalisation: with BatchNorm the first runs scored every slice
alike at inference (the moving statistics lagged weights that moved fast, and tumor and
tumor-free validation slices averaged 0.91/0.91, then 0.35/0.36 a few steps later); group
norm computes the same thing in training and scoring, and does not depend on what else is
in a batch, which also suits slices from unseen scanners. Built from stock Keras layers only, so the artifact loads in safe mode, needs
no custom objects in the scoring worker and exports to ONNX unchanged. The
stem works at half the input resolution (as v3 does): the map is 64x64 for a
128x128 input, which keeps the network near 0.35 GFLOPs per slice.
"""
import keras
from keras import layers

from screening_core import gradcam

POOL_WINDOW = 3  # cells of the 64x64 map averaged before the max (~6x6 input pixels)
HEAD_LEVEL = 0.05  # prepare() puts the head in [0.1, 1] and the background at 0
HEAD_WINDOW = 5  # map cells (10 input pixels): specks smaller than half of it (burned-in text) are not head
LESION_MAP = gradcam.LESION_MAP  # how scorers recognise the head
OUTPUT = "tumor_probability"


def _norm(x, name, norm):
    if norm == "group":
        return layers.GroupNormalization(groups=min(8, x.shape[-1] // 2), name=f"{name}_gn")(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def _conv(x, filters, name, norm="group"):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = _norm(x, name, norm)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _step(x, level, sharpness, name):
    """sigmoid(sharpness * (x - level)) from stock layers: a frozen 1x1 convolution and a sigmoid."""
    x = layers.Conv2D(1, 1, kernel_initializer=keras.initializers.Constant(sharpness),
                      bias_initializer=keras.initializers.Constant(-sharpness * level), trainable=False,
                      name=f"{name}_step")(x)
    return layers.Activation("sigmoid", name=name)(x)


def head_mask(inputs, map_downsample=2):
    """Soft head mask on the map's grid, computed from the input itself (no weights to learn).

    Why: a slice loss on label-only slices (brain-mri) let the map write a
    slice classifier's answer into the zero-padded corner, a place no mask
    supervises strongly (run F, docs/model_v4_notes.md). Multiplying the map by
    the head before pooling means a slice can only score where there is head.
    """
    x = layers.AveragePooling2D(map_downsample, name="head_downsample")(inputs)
    x = _step(x, HEAD_LEVEL, 200.0, "head_foreground")
    x = layers.AveragePooling2D(HEAD_WINDOW, strides=1, padding="same", name="head_window")(x)
    return _step(x, 0.5, 20.0, "head_mask")


def make_unet(input_shape=(128, 128, 1), filters=(16, 32, 64, 128), pool_window=POOL_WINDOW, norm="group",
              head_masked=False, inputs=None):
    """Single-output Keras model (slice probability); the lesion map is the layer `lesion_map`.

    Encoder blocks end in `enc{i}_pool` and the bottleneck in `last_conv`, the
    layers the OOD guard pools (trainer/ood.py: layer_names). With
    `head_masked`, `lesion_map` is the network's map times `head_mask`. `inputs`: an existing input
    tensor to build on (trainer/ensemble.py), else a new one.
    """
    inputs = keras.Input(shape=input_shape, name="image") if inputs is None else inputs
    x = layers.Conv2D(filters[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _norm(x, "stem", norm)
    x = layers.Activation("relu", name="stem_relu")(x)
    skips = []
    for i, f in enumerate(filters[:-1]):
        x = _conv(x, f, f"enc{i + 1}a", norm)
        x = _conv(x, f, f"enc{i + 1}b", norm)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{i + 1}_pool")(x)
    x = _conv(x, filters[-1], "bottleneck", norm)
    x = layers.Conv2D(filters[-1], 3, padding="same", activation="relu", name="last_conv")(x)
    for i in reversed(range(len(skips))):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{i + 1}_up")(x)
        x = layers.Concatenate(name=f"dec{i + 1}_cat")([x, skips[i]])
        x = _conv(x, filters[i], f"dec{i + 1}", norm)
    logits = layers.Conv2D(1, 1, dtype="float32", name="lesion_logits")(x)
    if head_masked:
        raw = layers.Activation("sigmoid", dtype="float32", name="lesion_raw")(logits)
        lesion = layers.Multiply(dtype="float32", name=LESION_MAP)([raw, head_mask(inputs)])
    else:
        lesion = layers.Activation("sigmoid", dtype="float32", name=LESION_MAP)(logits)
    pooled = layers.AveragePooling2D(pool_window, strides=1, name="lesion_window")(lesion)
    score = layers.GlobalMaxPooling2D(name=OUTPUT, dtype="float32")(pooled)
    return keras.Model(inputs, score, name="brain_tumor_unet")


def training_model(model):
    """Twin of `model` with both outputs, for the pixel and the slice loss."""
    return keras.Model(model.inputs, {OUTPUT: model.output, LESION_MAP: model.get_layer(LESION_MAP).output},
                       name="brain_tumor_unet_training")

"""A small from-scratch CNN for 2-D brain-MRI slices (no downloaded weights).

Sized for CPU scoring: a stride-2 stem, three conv blocks and global average
pooling keep it near 0.3 GFLOPs per 128x128 image and well under 20 MB.
"""
import keras
from keras import layers


def _block(x, filters, name):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def make_model(input_shape=(128, 128, 1), base_filters=32, dropout=0.3):
    """Binary tumor classifier: one float32 sigmoid output (probability of tumor).

    The output layer is float32 even under a mixed_float16 policy, so
    probabilities and the loss stay numerically stable.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(base_filters // 2, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, mult in enumerate((1, 2, 4)):
        x = _block(x, base_filters * mult, name=f"block{i + 1}")
    x = layers.Conv2D(base_filters * 4, 3, padding="same", activation="relu", name="last_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="tumor_probability")(x)
    return keras.Model(inputs, outputs, name="brain_tumor_cnn")


def flops_per_image(model):
    """Multiply-adds x 2 of the conv and dense layers for one image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += 2 * h * w * c_out * kh * kw * c_in
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def with_lesion_head(model):
    """A training-only twin of `model` that also maps the lesion on the last conv grid.

    A 1x1 convolution on the last feature map predicts, per cell, the share
    covered by tumor; trained on masks where a collection has them, it makes
    the shared features find the lesion instead of the sequence or slice level.
    The exported artifact is `model` itself (same layers, one output), so the
    scorer and Grad-CAM see the usual single-output CNN.
    """
    feats = model.get_layer("last_conv").output
    lesion = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="lesion_map")(feats)
    return keras.Model(model.inputs, {"tumor_probability": model.output, "lesion_map": lesion},
                       name="brain_tumor_cnn_with_lesion_head")

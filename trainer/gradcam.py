"""Grad-CAM heatmaps: where in the image the model's tumor evidence lies.

Computed only for flagged images, on the exact model input, from the last
convolution layer (Selvaraju et al., 2017): channel weights are the mean
gradient of the tumor logit over each feature map; the heatmap is the ReLU
of the weighted sum, upsampled to the input size.
"""
import io

import numpy as np


def last_conv_layer(model):
    import keras
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise ValueError(f"model {model.name} has no Conv2D layer for Grad-CAM")
    return convs[-1]


def make_explainer(model, layer_name=None):
    """A callable x[n, H, W, 1] -> heatmaps[n, H, W] in [0, 1] for `model`."""
    import keras
    import tensorflow as tf
    conv = model.get_layer(layer_name) if layer_name else last_conv_layer(model)
    grad_model = keras.Model(model.inputs, [conv.output, model.output])

    @tf.function(reduce_retracing=True)
    def explain(x):
        with tf.GradientTape() as tape:
            feats, prob = grad_model(x, training=False)
            prob = tf.clip_by_value(tf.cast(prob[:, 0], tf.float32), 1e-6, 1 - 1e-6)
            logit = tf.math.log(prob) - tf.math.log1p(-prob)
        grads = tape.gradient(logit, feats)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feats, axis=-1))[..., None]
        cam = tf.image.resize(cam, tf.shape(x)[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(cam, peak)

    return lambda x: explain(tf.convert_to_tensor(np.asarray(x, np.float32))).numpy()


def overlay_png(image, heat, probability=None, scale=2):
    """PNG bytes: the model input beside it with the heatmap blended in (jet colours)."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw
    gray = np.clip(np.asarray(image, np.float32).reshape(heat.shape), 0, 1)
    base = np.repeat(gray[..., None], 3, axis=-1)
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    alpha = 0.45 * np.clip(heat, 0, 1)[..., None]
    blended = base * (1 - alpha) + colour * alpha
    pair = np.concatenate([base, np.ones((gray.shape[0], 4, 3)), blended], axis=1)
    im = Image.fromarray((pair * 255).astype(np.uint8)).resize(
        (pair.shape[1] * scale, pair.shape[0] * scale), Image.Resampling.NEAREST)
    if probability is not None:
        ImageDraw.Draw(im).text((4, 4), f"p={probability:.3f}", fill=(255, 255, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()

"""Grad-CAM heatmaps: where in the image the model's tumor evidence lies.

Computed only for flagged images, on the exact model input, from the last
convolution layer (Selvaraju et al., 2017): channel weights are the mean
gradient of the tumor logit over each feature map; the heatmap is the ReLU
of the weighted sum, upsampled to the input size.

The logit is recomputed from the input of the final Dense layer rather than
from the sigmoid output: for confident slices (p > 0.999999 in float32) the
sigmoid saturates, its gradient is zero and the heatmap would be blank for
exactly the most obvious tumors.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

LESION_MAP = "lesion_map"  # the layer in which trainer/unet.py models give their per-pixel tumor probability


def last_conv_layer(model: Any) -> Any:
    import keras
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise ValueError(f"model {model.name} has no Conv2D layer for Grad-CAM")
    return convs[-1]


def output_dense_layer(model: Any) -> Any:
    """The final Dense layer with one unit (its pre-activation is the tumor logit)."""
    import keras
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense or dense[-1].units != 1:
        raise ValueError(f"model {model.name} has no one-unit output Dense layer for Grad-CAM")
    return dense[-1]


def cam_head(model: Any) -> tuple[Any, Any] | None:
    """(last conv layer, output Dense) when Grad-CAM equals CAM from the forward pass, else None.

    For last conv -> GlobalAveragePooling -> [Dropout] -> Dense(1), the gradient of
    the logit w.r.t. every position of feature map k is w_k / (H*W), so Grad-CAM's
    channel weights are the Dense kernel up to a positive factor that the
    normalisation by the peak removes: relu(A . w), upsampled, is the heatmap.
    The scoring pass can then return it, and no second model, gradient or
    TensorFlow is needed for heatmaps (bench/review_overhead.py).
    """
    import keras
    if is_lesion_model(model):  # its review map is its own lesion map (review_output)
        return None
    conv, head = last_conv_layer(model), output_dense_layer(model)
    layer = _producer(head.input)
    while isinstance(layer, keras.layers.Dropout):
        layer = _producer(layer.input)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D) and _producer(layer.input) is conv:
        return conv, head
    return None


def is_lesion_model(model: Any) -> bool:
    """A lesion-first model (trainer/unet.py): its slice score is read from a `lesion_map` layer."""
    return any(layer.name == LESION_MAP for layer in model.layers)


def has_review_map(model: Any) -> bool:
    """Whether the scoring pass can return the review map: the lesion map, or a CAM equal to Grad-CAM."""
    return is_lesion_model(model) or cam_head(model) is not None


def review_output(model: Any) -> Any:
    """The map a reviewer sees, as a layer output (n, h, w, 1): the model's own lesion map (tumor
    probability per cell) for a lesion-first model, else relu(A . w) where it equals Grad-CAM, else None."""
    if is_lesion_model(model):
        return model.get_layer(LESION_MAP).output
    return cam_output(model)


def _producer(tensor):
    return tensor._keras_history[0]


def cam_output(model: Any) -> Any:
    """A layer output relu(A . w) of shape (n, h, w, 1) on the last conv's map, or None (cam_head)."""
    import keras
    found = cam_head(model)
    if found is None:
        return None
    conv, head = found
    kernel = np.asarray(head.kernel, np.float32)  # (k, 1)
    layer = keras.layers.Conv2D(1, 1, use_bias=False, activation="relu", dtype="float32", name="cam_map")
    out = layer(conv.output)
    layer.set_weights([kernel.reshape(1, 1, -1, 1)])
    return out


def _resize_matrix(n_in, n_out):
    """Bilinear interpolation matrix (n_out, n_in) with half-pixel centres and edge clamping:
    the sampling of tf.image.resize(method='bilinear'), which make_explainer uses."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    lo = np.floor(src)
    frac = src - lo
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, np.clip(lo, 0, n_in - 1).astype(int)), 1 - frac)
    np.add.at(m, (rows, np.clip(lo + 1, 0, n_in - 1).astype(int)), frac)
    return m


def heatmaps_from_cam(cams: np.ndarray, size: tuple[int, int], relative: bool = True) -> np.ndarray:
    """(n, h, w[, 1]) relu(A . w) maps -> (n, H, W) heatmaps in [0, 1], as make_explainer returns them.

    `relative=False` for lesion maps: they are probabilities already, and dividing by the peak
    would paint the faintest map of a tumor-free slice as bright as a tumor."""
    cams = np.asarray(cams, np.float64).reshape(len(cams), *np.shape(cams)[1:3])
    ry, rx = _resize_matrix(cams.shape[1], size[0]), _resize_matrix(cams.shape[2], size[1])
    up = ry @ cams @ rx.T  # (H, h) @ (n, h, w) @ (w, W), broadcast over n
    if not relative:
        return np.clip(up, 0.0, 1.0).astype(np.float32)
    peak = up.max(axis=(1, 2), keepdims=True)
    return np.divide(up, peak, out=np.zeros_like(up), where=peak > 0).astype(np.float32)


def make_explainer(model: Any, layer_name: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A callable x[n, H, W, 1] -> heatmaps[n, H, W] in [0, 1] for `model`."""
    import keras
    import tensorflow as tf
    conv = model.get_layer(layer_name) if layer_name else last_conv_layer(model)
    head = output_dense_layer(model)
    grad_model = keras.Model(model.inputs, [conv.output, head.input])
    kernel, bias = head.kernel, head.bias

    @tf.function(reduce_retracing=True)
    def explain(x):
        with tf.GradientTape() as tape:
            feats, pre = grad_model(x, training=False)
            logit = tf.matmul(tf.cast(pre, tf.float32), tf.cast(kernel, tf.float32))[:, 0]
            if bias is not None:
                logit += tf.cast(bias[0], tf.float32)
        grads = tape.gradient(logit, feats)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feats, axis=-1))[..., None]
        cam = tf.image.resize(cam, tf.shape(x)[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return tf.math.divide_no_nan(cam, peak)

    return lambda x: explain(tf.convert_to_tensor(np.asarray(x, np.float32))).numpy()


_FONT: list[Any] = []


def _font():
    """Pillow's default font, loaded once per process (loading it took longer than drawing with it)."""
    if not _FONT:
        from PIL import ImageFont
        _FONT.append(ImageFont.load_default())
    return _FONT[0]


def head_mask(image: np.ndarray, level: float = 0.05, window: int = 5, margin: int = 2) -> np.ndarray:
    """Boolean mask of the head in a model input: the largest connected region of foreground after
    a `window`-pixel box filter (thin strokes of burned-in text fall below half of a window), grown by
    `margin` pixels so the skull's edge stays.

    Why: review overlays are embedded in reports and stored in the PACS, and a name or date burned
    into the image beside the head would travel with them; outside the head there is nothing to read."""
    from collections import deque
    img = np.asarray(image, np.float32).reshape(np.shape(image)[:2])
    fg = (img > level).astype(np.float32)
    pad = window // 2
    c = np.pad(fg, pad).cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    h, w = fg.shape
    box = (c[window:window + h, window:window + w] - c[:h, window:window + w] - c[window:window + h, :w]
           + c[:h, :w]) / (window * window)
    solid = box >= 0.5
    seen = np.zeros_like(solid)
    best: list = []
    for start in zip(*np.nonzero(solid), strict=True):
        if seen[start]:
            continue
        part, todo = [], deque([start])
        seen[start] = True
        while todo:
            r, col = todo.popleft()
            part.append((r, col))
            for nr, nc in ((r + 1, col), (r - 1, col), (r, col + 1), (r, col - 1)):
                if 0 <= nr < h and 0 <= nc < w and solid[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    todo.append((nr, nc))
        if len(part) > len(best):
            best = part
    mask = np.zeros_like(solid)
    if best:
        rows, cols = zip(*best, strict=True)
        mask[list(rows), list(cols)] = True
    return grow(mask, margin)


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` (bool, ... x H x W) grown by `pixels` steps of its four neighbours, in its last two axes
    (a batch of masks grows slice by slice)."""
    out = np.asarray(mask, bool).copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[..., 1:, :] |= out[..., :-1, :]
        grown[..., :-1, :] |= out[..., 1:, :]
        grown[..., :, 1:] |= out[..., :, :-1]
        grown[..., :, :-1] |= out[..., :, 1:]
        out = grown
    return out


def head_only(image: np.ndarray, heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, heat) blanked outside `head_mask`: what review overlays are drawn from."""
    m = head_mask(image)
    img = np.asarray(image, np.float32).reshape(m.shape)
    return img * m, np.asarray(heat, np.float32).reshape(m.shape) * m


def _side_by_side_png(base: np.ndarray, drawn: np.ndarray, probability: float | None, scale: int) -> bytes:
    """The input and its annotated copy side by side, upscaled, the probability in the corner."""
    from PIL import Image, ImageDraw
    pair = np.concatenate([base, np.ones((base.shape[0], 4, 3)), drawn], axis=1)
    im = Image.fromarray((pair * 255).astype(np.uint8)).resize(
        (pair.shape[1] * scale, pair.shape[0] * scale), Image.Resampling.NEAREST)
    if probability is not None:
        ImageDraw.Draw(im).text((4, 4), f"p={probability:.3f}", fill=(255, 255, 0), font=_font())
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def overlay_png(image: np.ndarray, heat: np.ndarray, probability: float | None = None, scale: int = 2) -> bytes:
    """PNG bytes: the model input beside it with the heatmap blended in (jet colours).

    zlib level 1: a third of the default level's encoding time for files within a few
    per cent of its size (bench/review_overhead.py); these are review thumbnails."""
    from matplotlib import colormaps
    gray = np.clip(np.asarray(image, np.float32).reshape(heat.shape), 0, 1)
    base = np.repeat(gray[..., None], 3, axis=-1)
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    alpha = 0.45 * np.clip(heat, 0, 1)[..., None]
    blended = base * (1 - alpha) + colour * alpha
    return _side_by_side_png(base, blended, probability, scale)


LESION_LEVEL = 0.5  # the lesion map's decision level (outlined, filled, measured) unless the artifact has one


def map_level(metadata: dict) -> float:
    """The artifact's lesion-map level (metadata lesion.map_level, chosen on validation masks), else 0.5."""
    level = (metadata.get("lesion") or {}).get("map_level")
    return float(level) if isinstance(level, (int, float)) and 0 < level < 1 else LESION_LEVEL


def lesion_overlay_png(image: np.ndarray, lesion: np.ndarray, probability: float | None = None,
                       scale: int = 2, level: float = LESION_LEVEL) -> bytes:
    """PNG bytes: the model input beside it with the lesion map drawn as a radiologist reads one:
    cells at or above `level` (the artifact's map level, chosen on validation masks) filled in red
    (opacity by probability) inside a yellow outline, weaker evidence (from 0.4 x level) as a faint
    orange wash, the anatomy left visible everywhere."""
    gray = np.clip(np.asarray(image, np.float32).reshape(lesion.shape), 0, 1)
    p = np.clip(np.asarray(lesion, np.float32), 0, 1)
    base = np.repeat(gray[..., None], 3, axis=-1)
    inside = p >= level
    faint = (p >= 0.4 * level) & ~inside
    out = base.copy()
    red, orange, yellow = np.array([1.0, 0.1, 0.1]), np.array([1.0, 0.55, 0.1]), np.array([1.0, 1.0, 0.0])
    a = (0.25 + 0.35 * p)[..., None]
    out = np.where(inside[..., None], base * (1 - a) + red * a, out)
    out = np.where(faint[..., None], base * 0.8 + orange * 0.2, out)
    edge = inside & ~(np.pad(inside, 1)[2:, 1:-1] & np.pad(inside, 1)[:-2, 1:-1]
                      & np.pad(inside, 1)[1:-1, 2:] & np.pad(inside, 1)[1:-1, :-2])
    out[edge] = yellow
    return _side_by_side_png(base, out, probability, scale)

"""Grad-CAM points at the lesion: a small CNN trained to find a bright lesion
in generated slices must put its heatmap mass in the lesion's quadrant."""
import numpy as np
import pytest

from screening_core import gradcam, preprocessing
from tests import synth

SIZE = 96


def _x(seed, lesion, quadrant=None):
    return preprocessing.prepare(synth.brain_slice(seed, 128, lesion=lesion, quadrant=quadrant, radius=0.05, rim=True).astype(np.float32),
                                 preprocessing.InputSpec(SIZE, SIZE))


def _small_cnn():
    """No BatchNorm: its moving statistics would not settle in a short test fit."""
    import keras
    from keras import layers
    inputs = keras.Input((SIZE, SIZE, 1))
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="last_conv")(x)
    x = layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


@pytest.fixture(scope="module")
def lesion_model():
    import keras
    keras.utils.set_random_seed(0)
    quadrants = ["tl", "tr", "bl", "br"]
    x = np.stack([_x(i, i % 2 == 0, quadrants[(i // 2) % 4]) for i in range(320)])
    y = np.array([i % 2 == 0 for i in range(320)], np.float32)
    model = _small_cnn()
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    return model


@pytest.mark.parametrize("quadrant", ["tl", "br", "tr"])
def test_heatmap_concentrates_on_the_lesion_quadrant(lesion_model, quadrant):
    x = _x(10_000 + ord(quadrant[0]), True, quadrant)[None]
    assert lesion_model.predict(x, verbose=0)[0, 0] > 0.5
    heat = gradcam.make_explainer(lesion_model)(x)[0]
    h = SIZE // 2
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    in_quadrant = ((rows < h) == (quadrant[0] == "t")) & ((cols < h) == (quadrant[1] == "l"))
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert in_quadrant[peak], peak
    img = x[0, ..., 0]
    centre_dist = np.hypot(rows - h, cols - h)
    lesion = (img > 0.9) & (centre_dist < 0.33 * SIZE)  # bright, and inside the skull rim
    head = img > 0.05
    assert lesion.sum() > 20 and in_quadrant[lesion].all()
    assert heat[lesion].mean() > 1.5 * heat[head].mean(), (heat[lesion].mean(), heat[head].mean())


def test_overlay_is_a_png():
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[5:20, 5:20] = 1
    png = gradcam.overlay_png(np.random.rand(SIZE, SIZE, 1), heat, 0.9)
    assert png.startswith(b"\x89PNG")


def test_saturated_slice_still_gets_a_heatmap(lesion_model):
    """p > 0.999999 saturates the sigmoid in float32; the heatmap comes from the logit."""
    import keras
    x = _x(20_000, True, "tl")[None]
    saturated = keras.models.clone_model(lesion_model)
    saturated.set_weights(lesion_model.get_weights())
    dense = saturated.layers[-1]
    assert float(lesion_model.predict(x, verbose=0)[0, 0]) > 0.5
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 200.0, bias * 200.0])
    p = float(saturated.predict(x, verbose=0)[0, 0])
    assert p > 0.999999, p
    heat = gradcam.make_explainer(saturated)(x)[0]
    assert heat.max() == 1.0
    h = SIZE // 2
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert peak[0] < h and peak[1] < h, peak


def test_heatmap_from_the_scoring_pass_equals_grad_cam():
    """For the product's head (last conv -> GAP -> Dropout -> Dense) the scoring pass's CAM map, upsampled,
    is Grad-CAM: the pipeline draws heatmaps without a second model or a gradient."""
    import keras

    from trainer import ood
    from trainer.model import make_model
    keras.utils.set_random_seed(4)
    model = make_model((64, 64, 1), base_filters=8)
    x = np.stack([preprocessing.prepare(synth.brain_slice(s, 96, lesion=s % 2 == 0).astype(np.float32),
                                        preprocessing.InputSpec(64, 64)) for s in range(12)])
    assert gradcam.cam_head(model) is not None
    cams = ood.feature_model(model, [], cam=True).predict_on_batch(x)[-1]
    got = gradcam.heatmaps_from_cam(cams, (64, 64))
    want = gradcam.make_explainer(model)(x)
    assert got.shape == want.shape == (12, 64, 64)
    assert (want.max(axis=(1, 2)) > 0.99).sum() >= 10  # real maps, not blank ones
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_heads_without_a_cam_keep_grad_cam(lesion_model):
    assert gradcam.cam_head(lesion_model) is None  # global max pooling: gradients are not the kernel


def test_overlays_are_drawn_from_the_head_only_so_burned_in_text_is_blanked():
    """A name burned into the image beside the head is in the model input of an artifact on preprocessing v1/v2
    (prepare crops to the head's box, which the text widens) but not in the review overlay; v3 keeps it out of
    the input altogether."""
    from PIL import Image, ImageDraw

    from screening_core import preprocessing
    from tests import synth
    img = Image.fromarray(synth.brain_slice(3, 256))
    clean = np.asarray(img, np.float32)
    ImageDraw.Draw(img).text((4, 4), "SMITH^JOHN 1961", fill=255)
    gray = np.asarray(img, np.float32)
    v3 = preprocessing.InputSpec(preprocessing="gray-headcrop-pnorm-v3")
    assert np.abs(preprocessing.prepare(gray, v3) - preprocessing.prepare(clean, v3)).max() < 0.01
    x = preprocessing.prepare(gray, preprocessing.InputSpec(preprocessing="gray-headcrop-pnorm-v2"))[..., 0]
    text_rows = slice(0, 3)  # the crop box grew to take the text in: it sits in the input's top rows
    assert x[text_rows].max() > 0.5  # the text survived preprocessing
    masked, heat = gradcam.head_only(x, np.ones_like(x))
    assert masked[text_rows].max() == 0 and heat[text_rows].max() == 0
    centre = (slice(48, 80), slice(48, 80))
    assert np.array_equal(masked[centre], x[centre])  # the head itself is untouched

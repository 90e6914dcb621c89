"""`prepare()` is pinned to its PREPROCESSING_ID, and training and scoring feed the model the same array.

A model is only valid on the preprocessing it was trained with; an
optimisation of `prepare` that changed its output by a rounding would shift
every score of every deployed artifact without anyone noticing.
"""
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from beam_pipeline import archives
from beam_pipeline.stages.decode import DecodeImages
from screening_core import preprocessing
from tests import golden_inputs, synth
from trainer import input_pipeline


def _golden(preprocessing_id):
    return os.path.join(os.path.dirname(__file__), "golden", f"prepare_{preprocessing_id}.npz")


@pytest.mark.parametrize("preprocessing_id", preprocessing.PREPROCESSING_IDS)
def test_prepare_output_is_pinned_to_its_preprocessing_id(preprocessing_id):
    # A deliberate change of prepare() bumps PREPROCESSING_ID and writes a new golden file:
    #   python -c "from tests import golden_inputs as g; g.write()"
    # Every id artifacts may record stays implemented and pinned (an artifact is scored as it was built).
    assert os.path.exists(_golden(preprocessing_id)), f"no golden outputs for {preprocessing_id}"
    golden = np.load(_golden(preprocessing_id))
    cases = golden_inputs.cases()
    assert sorted(golden.files) == sorted(cases)
    spec = preprocessing.InputSpec(preprocessing=preprocessing_id)
    for name, raw in cases.items():
        got = preprocessing.prepare(raw, spec)
        assert got.dtype == np.float32 and got.shape == golden[name].shape, name
        np.testing.assert_allclose(got, golden[name], rtol=0, atol=1e-6, err_msg=name)


def test_v2_removes_a_frame_and_changes_nothing_else():
    """A white or grey frame around a slice (web copies, screenshots): v1 shrank the head and let the frame
    into the model input; v2 gives what the unframed slice gives. A scanner's own grey background beside
    the head is not a frame, and no unframed case moves."""
    v1 = preprocessing.InputSpec(preprocessing=preprocessing.PREPROCESSING_IDS[0])
    v2 = preprocessing.InputSpec(preprocessing="gray-headcrop-pnorm-v2")
    cases = golden_inputs.cases()
    head = preprocessing.prepare(cases["head_224_float"], v2)
    for framed in ("white_frame", "grey_frame"):
        assert np.abs(preprocessing.prepare(cases[framed], v2) - head).max() < 0.01, framed
        assert np.abs(preprocessing.prepare(cases[framed], v1) - head).mean() > 0.2, framed  # what v1 did
        gray = cases[framed]
        pad = (gray.shape[0] - 224) // 2
        mask = np.zeros_like(gray)
        mask[100:140, 100:140] = 255  # a lesion inside the frame lands where it lands on the unframed slice
        plain = mask[pad:pad + 224, pad:pad + 224]
        assert pad and np.abs(preprocessing.project_mask(gray, mask, v2)
                              - preprocessing.project_mask(cases["head_224_float"], plain, v2)).max() < 0.05
    for name in set(cases) - {"white_frame", "grey_frame", "negative"}:  # a negative's background is a frame to v2
        np.testing.assert_array_equal(preprocessing.prepare(cases[name], v2), preprocessing.prepare(cases[name], v1),
                                      err_msg=name)


def test_v3_leaves_burned_in_marks_out_of_the_head_box_and_changes_nothing_else():
    """Text and a scale bar beside the head (screenshots, teaching files, brain-mri's tumor-free source): v2's
    head box took them in, so the head shrank by how much text a copy had; v3 gives what the clean copy
    gives. Pieces of the body stay: one detached inside the image (an eye, an ear at the skull base), a large
    one at the edge (a second head of a side-by-side view) and one the image's border cuts off (a shoulder)."""
    v2, v3 = (preprocessing.InputSpec(preprocessing=f"gray-headcrop-pnorm-v{n}") for n in (2, 3))
    cases = golden_inputs.cases()
    clean = np.pad(cases["head_224_float"], ((24, 24), (40, 40)))
    assert cases["annotated"].shape == clean.shape
    # the same box; the image's intensity scale (its 99.5th percentile) still sees the marks' pixels
    assert np.abs(preprocessing.prepare(cases["annotated"], v3) - preprocessing.prepare(clean, v3)).max() < 0.01
    assert np.abs(preprocessing.prepare(cases["annotated"], v2) - preprocessing.prepare(clean, v2)).mean() > 0.02
    for name in set(cases) - {"annotated"}:
        np.testing.assert_array_equal(preprocessing.prepare(cases[name], v3), preprocessing.prepare(cases[name], v2),
                                      err_msg=name)
    island = clean.copy()
    island[130:146, 64:74] = 200.0  # a piece of head detached beside it (an ear), not in the image's outer fifth
    side_by_side = np.concatenate([clean, clean[:, :120]], axis=1)  # a second head cut off at the right edge
    shoulder = clean.copy()
    shoulder[256:, 250:290] = 200.0  # a small piece cut off by the image's border (a shoulder below a sagittal head)
    for name, gray in (("island", island), ("side by side", side_by_side), ("shoulder", shoulder)):
        np.testing.assert_array_equal(preprocessing.prepare(gray, v3), preprocessing.prepare(gray, v2), err_msg=name)
    mask = np.zeros_like(clean)
    mask[120:160, 120:160] = 255  # a lesion lands where it lands on the clean copy
    np.testing.assert_array_equal(preprocessing.project_mask(cases["annotated"], mask, v3),
                                  preprocessing.project_mask(clean, mask, v3))
    assert not np.array_equal(preprocessing.project_mask(cases["annotated"], mask, v2),
                              preprocessing.project_mask(clean, mask, v2))


def test_v4_takes_a_negative_for_the_slice_it_shows_and_changes_nothing_else():
    """A negative copy (film, an inverted display saved as a screenshot, MONOCHROME1 exported as stored):
    v3 gave the models dark tissue on a bright background, which none learnt; v4 gives what the positive
    gives, framed or not. A positive whose corners are bright only in part (a neck or a tight crop filling
    one, a light frame the head touches) is not a negative, and no other case moves."""
    v3, v4 = (preprocessing.InputSpec(preprocessing=f"gray-headcrop-pnorm-v{n}") for n in (3, 4))
    cases = golden_inputs.cases()
    head = cases["head_224_float"]
    positive = preprocessing.prepare(head, v4)
    np.testing.assert_allclose(preprocessing.prepare(cases["negative"], v4), positive, atol=1e-6)
    assert np.abs(preprocessing.prepare(cases["negative"], v3) - positive).mean() > 0.1  # what v3 did
    framed_negative = np.pad(cases["negative"], 20, constant_values=255.0)
    assert np.abs(preprocessing.prepare(framed_negative, v4) - positive).max() < 0.01
    mask = np.zeros_like(head)
    mask[100:140, 100:140] = 255
    np.testing.assert_allclose(preprocessing.project_mask(cases["negative"], mask, v4),
                               preprocessing.project_mask(head, mask, v4), atol=1e-6)
    for name in set(cases) - {"negative"}:
        np.testing.assert_array_equal(preprocessing.prepare(cases[name], v4), preprocessing.prepare(cases[name], v3),
                                      err_msg=name)
    neck = head.copy()
    neck[190:, 150:] = 250.0  # one bright corner: a positive
    tight = np.pad(head, 6, constant_values=200.0)[:, 6:]  # a light frame the head touches on one side
    for name, gray in (("one bright corner", neck), ("light frame", tight)):
        np.testing.assert_array_equal(preprocessing.prepare(gray, v4), preprocessing.prepare(gray, v3), err_msg=name)
    assert not preprocessing._negative(np.zeros((3, 3), np.float32))  # too small for corners


def test_connected_pieces_of_the_mark_grid_count_diagonal_neighbours_and_nothing_across_a_gap():
    cells = np.zeros((6, 8), bool)
    cells[0, 0:2] = cells[1, 2] = True  # a run and a diagonal neighbour below it: one piece
    cells[3:6, 5] = cells[4, 4:8] = True  # a cross
    cells[5, 0] = True  # alone, two rows below the first piece
    got = sorted(preprocessing._components(cells))
    assert got == sorted([(3, 0, 2, 0, 3), (6, 3, 6, 4, 8), (1, 5, 6, 0, 1)])
    assert preprocessing._components(np.zeros((4, 4), bool)) == []


def test_percentiles_equal_numpys_bit_for_bit():
    rng = np.random.default_rng(0)
    for i in range(400):
        n = int(rng.integers(1, 300_000 if i % 10 == 0 else 20_000))
        a = (rng.random(n) * rng.integers(1, 5000)).astype(np.float32)
        if i % 3 == 0:
            a = np.round(a)  # ties, as in 8-bit images
        if i % 4 == 0:
            a[: n // 2] = 0  # a black background
        if i % 7 == 0:
            a[rng.integers(0, n, max(1, n // 50))] = 1e6  # bright outliers in the tail
        for qs in (99.5, 1.0, [1.0, 99.0], [0.0, 100.0], [99.5]):
            got, want = preprocessing._percentiles(a, qs), np.percentile(a, qs)
            got, want = np.atleast_1d(np.asarray(got)), np.atleast_1d(want)
            assert got.dtype == want.dtype and np.array_equal(got, want), (n, qs, got, want)


def _tfdata_inputs(paths, spec):
    ds = input_pipeline.make_dataset(paths, [0] * len(paths), spec, global_batch_size=len(paths),
                                     training=False, cache=False)
    return next(iter(ds))[0].numpy()


def test_training_and_scoring_paths_give_the_same_model_input(tmp_path):
    spec = preprocessing.InputSpec()
    blobs = {"a.png": synth.encode(synth.brain_slice(1, 224, lesion=True), "PNG"),
             "b.jpg": synth.encode(synth.brain_slice(2, 200), "JPEG"),
             "c.png": synth.encode((synth.brain_slice(3, 160).astype(np.uint16) * 200), "PNG"),
             "d.png": synth.encode(255 - synth.brain_slice(4, 224, lesion=True), "PNG")}  # a negative copy
    paths = []
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    trained_on = dict(zip(blobs, _tfdata_inputs(paths, spec), strict=True))

    chunks = [archives.Chunk(p, "file", 0, [archives.MemberRef("", len(blobs[os.path.basename(p)]))])
              for p in paths]

    def same_arrays(batches):
        scored, negative = {}, {}
        for templates, x in batches:
            for row, arr in zip(templates, x, strict=True):
                scored[os.path.basename(row["source_uri"])] = arr
                negative[os.path.basename(row["source_uri"])] = row["taken_for_negative"]
        assert sorted(scored) == sorted(trained_on)
        assert negative == {"a.png": False, "b.jpg": False, "c.png": False, "d.png": True}  # the row says so
        for name, arr in scored.items():
            np.testing.assert_array_equal(arr, trained_on[name], err_msg=name)

    model_info = {"model_name": "m", "model_version": "1", "model_sha256": "0" * 64}
    with TestPipeline() as p:
        decoded = (p | beam.Create(chunks)
                   | DecodeImages("parity", spec.to_dict(), model_info))
        assert_that(decoded.images, same_arrays)


def test_an_exif_orientation_is_applied_as_every_viewer_applies_it():
    """A web copy or photo of a scan stored sideways with an EXIF orientation: the model and the review
    image must see the slice the radiologist sees, not the stored pixels."""
    import io

    from PIL import Image
    stored = np.zeros((60, 90), np.uint8)
    stored[5:15, 10:30] = 255  # a bright block near the top left, as stored
    shown = {1: stored, 3: stored[::-1, ::-1], 6: np.rot90(stored, -1), 8: np.rot90(stored)}
    for orientation, want in shown.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        Image.fromarray(stored).save(buf, "PNG", exif=exif.tobytes())
        got = preprocessing.decode_raster(buf.getvalue())
        assert got.shape == want.shape and np.array_equal(got, want.astype(np.float32)), orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG")
    data = buf.getvalue()
    damaged = data[:2] + b"\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\xff" + data[2:]  # an unreadable EXIF block
    assert preprocessing.decode_raster(damaged).shape == stored.shape  # the pixels still count


def test_the_corner_test_gives_what_the_median_gives():
    """`_median_at_least` skips the median where fewer than half the values reach the level: it must answer as
    np.median would, at every size and at ties on the level (v4 is pinned to the median)."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 9, 16, 484):
        for _ in range(500):
            v = rng.choice([0.0, 0.85, 0.9, 0.95, 1.0], size=n) if rng.random() < 0.5 else rng.random(n)
            assert preprocessing._median_at_least(v, 0.9) == (float(np.median(v)) >= 0.9), v

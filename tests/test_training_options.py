"""The classifier trainer's fine-tuning options at their own level: painted tumors in the lesion-head
input pipeline, and the checks that refuse a misused flag before any training."""
import keras
import numpy as np
import pytest

from screening_core import preprocessing
from tests import synth
from trainer import input_pipeline
from trainer.config import TrainConfig
from trainer.model import make_model
from trainer.train import _start_from, train


def _batch(tmp_path, p):
    """One training batch: two tumor-free slices (one of a collection with masks, one of a collection
    without: brain-mri) that are painted with probability `p`, and two tumor slices without masks."""
    paths = []
    for i in range(4):
        path = tmp_path / f"s{i}.png"
        path.write_bytes(synth.encode(synth.brain_slice(i, 128)))
        paths.append(str(path))
    labels = np.array([0, 0, 1, 1], np.float32)
    masks = np.array([input_pipeline.MASK_EMPTY] + [input_pipeline.MASK_UNKNOWN] * 3)
    ds = input_pipeline.make_lesion_dataset(
        paths, labels, masks, ["a"] * 4, preprocessing.InputSpec(height=128, width=128), 4, True, seed=1,
        stride=16, balanced=False, synth=(np.array([p, p, 0, 0], np.float32), np.zeros(4, np.int32)))
    x, y, w = next(iter(ds))
    order = np.argsort(w["lesion_map"].numpy().reshape(4, -1).mean(1))  # unknown masks (weight 0) first
    return (y["tumor_probability"].numpy()[order, 0], y["lesion_map"].numpy()[order],
            w["lesion_map"].numpy()[order], w["tumor_probability"].numpy()[order])


def test_a_painted_tumor_makes_a_tumor_free_slice_a_masked_tumor_slice(tmp_path):
    label, target, known, weight = _batch(tmp_path, 1.0)
    assert label.tolist() == [1, 1, 1, 1]
    assert (known[2:] == 1).all() and (known[:2] == 0).all(), "both painted masks are known, brain-mri's too"
    assert all(target[i].max() > 0.2 for i in (2, 3)), "each painted slice carries its tumor's mask"
    assert all((target[i] < 0.01).mean() > 0.6 for i in (2, 3)), "and the rest of the slice stays negative"
    assert np.allclose(weight, weight[0]), "painted slices weigh as the tumor class"


def test_without_painting_tumor_free_slices_stay_all_negative(tmp_path):
    label, target, known, _ = _batch(tmp_path, 0.0)
    assert sorted(label.tolist()) == [0, 0, 1, 1]
    negatives = known.reshape(4, -1).mean(1) == 1
    assert negatives.sum() == 1 and target[negatives].max() == 0, "only the masked collection's is known"


def test_a_mirrored_tumor_slice_trains_as_tumor_free_with_an_all_negative_map_or_stays_a_tumor(tmp_path):
    """--mirror-tumors: tumor slices whose extent mask lies in one half; a mirrored-away one becomes a
    tumor-free slice whose every pixel is a known negative, weighed as the tumor-free class."""
    from PIL import Image
    paths, extents = [], []
    for i in range(4):
        img = synth.brain_slice(i, 128, lesion=i >= 2, quadrant="tr", radius=0.08)
        path = tmp_path / f"s{i}.png"
        path.write_bytes(synth.encode(img))
        paths.append(str(path))
        extent = ""
        if i >= 2:
            extent = str(tmp_path / f"m{i}.png")
            Image.fromarray(np.where(img == 245, 255, 0).astype(np.uint8)).save(extent)
        extents.append(extent)
    labels = np.array([0, 0, 1, 1], np.float32)
    masks = np.array([input_pipeline.MASK_EMPTY] * 2 + [input_pipeline.MASK_UNKNOWN] * 2)
    outcomes = set()
    for seed in range(8):
        ds = input_pipeline.make_lesion_dataset(
            paths, labels, masks, ["a"] * 4, preprocessing.InputSpec(height=128, width=128), 4, True,
            seed=seed, stride=16, balanced=False, mirror=(np.array(extents), 1.0))
        x, y, w = next(iter(ds))
        label, known = y["tumor_probability"].numpy()[:, 0], w["lesion_map"].numpy().reshape(4, -1).mean(1)
        weight, target = w["tumor_probability"].numpy(), y["lesion_map"].numpy()
        assert label.sum() <= 2 and (known[label == 0] == 1).all() and target[label == 0].max() == 0
        assert (known[label == 1] == 0).all(), "a two-sided tumor keeps its unknown map"
        assert np.allclose(weight[label == 0], weight[label == 0][0]), "weighed as the tumor-free class"
        outcomes.add(int(label.sum()))
    assert {0, 1, 2} & outcomes and len(outcomes) > 1, "both ways are drawn"


def test_a_transplanted_tumor_makes_a_tumor_free_slice_a_masked_tumor_slice_with_the_donors_mask(tmp_path):
    """--transplant-tumors: a masked FLAIR tumor slice lends its tumor, at its place, to tumor-free slices."""
    from PIL import Image
    spec = preprocessing.InputSpec(height=128, width=128)
    donor = synth.brain_slice(9, 128)
    yy, xx = np.mgrid[:128, :128]
    donor[(yy - 60) ** 2 + (xx - 66) ** 2 <= 9 ** 2] = 245  # a tumor well inside every generated brain
    (tmp_path / "d.png").write_bytes(synth.encode(donor))
    Image.fromarray(np.where(donor == 245, 255, 0).astype(np.uint8)).save(tmp_path / "dm.png")
    bank = input_pipeline.load_donors([str(tmp_path / "d.png")], [str(tmp_path / "dm.png")], spec)
    assert bank[0].shape == bank[1].shape == (1, 128, 128, 1) and bank[1].sum() >= 20
    paths = []
    for i in range(4):
        (tmp_path / f"s{i}.png").write_bytes(synth.encode(synth.brain_slice(i, 128)))
        paths.append(str(tmp_path / f"s{i}.png"))
    masks = np.array([input_pipeline.MASK_EMPTY] * 2 + [input_pipeline.MASK_UNKNOWN] * 2)
    ds = input_pipeline.make_lesion_dataset(
        paths, np.zeros(4, np.float32), masks, ["a"] * 4, spec, 4, True, seed=1, stride=16, balanced=False,
        transplant=(np.array([1.0, 1.0, 0.0, 0.0], np.float32), *bank))
    _, y, w = next(iter(ds))
    label, target = y["tumor_probability"].numpy()[:, 0], y["lesion_map"].numpy()
    known = w["lesion_map"].numpy().reshape(4, -1).mean(1)
    moved = label == 1
    assert moved.sum() == 2 and (known[moved] == 1).all(), "the two eligible slices now carry a known tumor mask"
    assert all(t.max() > 0.2 and (t < 0.01).mean() > 0.6 for t in target[moved])
    assert target[~moved].max() == 0 and (known[~moved] == 0).all(), "the others are as they were"
    with pytest.raises(ValueError, match="no masked FLAIR/T2 training tumor"):
        input_pipeline.load_donors([], [], spec)


def test_a_t2_like_flair_slice_keeps_its_label_and_mask_and_only_its_fluid_turns_bright(tmp_path):
    """--fluid-bright: FLAIR slices (their dark ventricles) made T2-like; the tumor's label and mask stay."""
    from PIL import Image
    spec = preprocessing.InputSpec(height=128, width=128)
    yy, xx = np.mgrid[:128, :128]
    paths, masks = [], []
    for i in range(4):
        img = synth.brain_slice(i, 128, lesion=i >= 2, quadrant="tr", radius=0.08)
        img[((yy - 64) / 14) ** 2 + ((xx - 60) / 7) ** 2 <= 1] = 15  # a ventricle, dark as fluid on FLAIR
        (tmp_path / f"s{i}.png").write_bytes(synth.encode(img))
        paths.append(str(tmp_path / f"s{i}.png"))
        if i >= 2:
            Image.fromarray(np.where(img == 245, 255, 0).astype(np.uint8)).save(tmp_path / f"m{i}.png")
        masks.append(str(tmp_path / f"m{i}.png") if i >= 2 else input_pipeline.MASK_EMPTY)
    labels = np.array([0, 0, 1, 1], np.float32)

    def batch(p):
        ds = input_pipeline.make_lesion_dataset(paths, labels, np.array(masks), ["a"] * 4, spec, 4, True, seed=3,
                                                stride=16, balanced=False, fluid=np.full(4, p, np.float32))
        x, y, _ = next(iter(ds))
        return x.numpy(), y["tumor_probability"].numpy()[:, 0], y["lesion_map"].numpy()
    x0, label0, target0 = batch(0.0)
    x1, label1, target1 = batch(1.0)
    assert np.array_equal(label0, label1) and np.array_equal(target0, target1), "label and mask unchanged"
    brighter = (x1 - x0 > 0.2).reshape(4, -1).sum(1)
    assert (brighter >= 50).all(), "every slice's ventricle turned bright"
    assert ((x0 - x1) > 0.2).reshape(4, -1).sum(1).max() < 20, "and almost nothing turned darker"


@pytest.mark.parametrize("kw, words", [
    (dict(transplant_tumors=0.5), "needs --lesion-weight"),
    (dict(transplant_tumors=2.0, lesion_weight=1.0), "probability in [0, 1]"),
    (dict(synth_tumors=0.5), "needs --lesion-weight"),
    (dict(synth_tumors=1.5, lesion_weight=1.0), "probability in [0, 1]"),
    (dict(mirror_tumors=0.5), "needs --lesion-weight"),
    (dict(mirror_tumors=-0.1, lesion_weight=1.0), "probability in [0, 1]"),
    (dict(fluid_bright=0.3), "needs --lesion-weight"),
    (dict(transplant_axial_only=True, lesion_weight=1.0), "needs --transplant-tumors > 0"),
    (dict(fluid_bright=1.3, lesion_weight=1.0), "probability in [0, 1]"),
])
def test_misused_synthetic_tumors_are_refused_before_any_work(tmp_path, kw, words):
    cfg = TrainConfig(data_dir=[str(tmp_path / "absent")], model_dir=str(tmp_path / "m"), **kw)
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        train(cfg)


def test_init_from_copies_the_weights_and_refuses_another_architecture(tmp_path):
    source = make_model((32, 32, 1), base_filters=8)
    source.save(tmp_path / "source.keras")
    fresh = make_model((32, 32, 1), base_filters=8)
    assert not all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), source.get_weights(), strict=True))
    _start_from(fresh, str(tmp_path / "source.keras"))
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), source.get_weights(), strict=True))
    wider = make_model((32, 32, 1), base_filters=16)
    with pytest.raises(ValueError, match="not this architecture or input size"):
        _start_from(wider, str(tmp_path / "source.keras"))
    keras.backend.clear_session()


def test_source_shares_set_each_collections_part_of_the_batches():
    """--source-shares: a collection drawn by its share (equal without it); a training collection it does
    not name and a malformed value are refused with a sentence."""
    import tensorflow as tf
    sources = np.array(["a"] * 10 + ["b"] * 10)

    def share_of_a(shares):
        ds = input_pipeline._draw_sources(
            sources, 0, lambda m, seed: tf.data.Dataset.from_tensor_slices(np.flatnonzero(m)), shares)
        return float(np.mean([int(i) < 10 for i in ds.take(2000)]))

    assert abs(share_of_a(TrainConfig(data_dir=["x"], source_shares="a=4,b=1").shares()) - 0.8) < 0.04
    assert abs(share_of_a(None) - 0.5) < 0.04
    with pytest.raises(ValueError, match=r"no share for \['b'\]"):
        share_of_a({"a": 1.0})
    with pytest.raises(ValueError, match=r"not a training collection: \['brain_mri'\]"):  # a typo
        share_of_a({"a": 1.0, "b": 1.0, "brain_mri": 1.0})
    for bad in ("a=0.5,b", "a=0", "=1", "a=x"):
        with pytest.raises(ValueError, match="COLLECTION=SHARE"):
            TrainConfig(data_dir=["x"], source_shares=bad).shares()


def test_masks_dir_is_refused_unless_it_names_a_collection_and_an_existing_folder(tmp_path, capsys):
    from trainer import task
    for bad in ("brain-mri", f"brain-mri={tmp_path / 'absent'}", f"={tmp_path}"):
        with pytest.raises(SystemExit) as e:
            task.parse_args(["--data-dir", str(tmp_path), "--masks-dir", bad])
        assert e.value.code == 2 and "--masks-dir" in capsys.readouterr().err
    cfg = task.parse_args(["--data-dir", str(tmp_path), "--masks-dir", f"brain-mri={tmp_path}"])
    assert cfg.masks_dirs() == {"brain-mri": str(tmp_path)}


def test_masks_kept_outside_a_collection_supervise_its_tumor_slices_and_make_its_negatives_known(tmp_path):
    from trainer.discovery import Example
    from trainer.train import _mask_specs
    (tmp_path / "lgg" / "masks").mkdir(parents=True)
    (tmp_path / "lgg" / "masks" / "p1_3.png").write_bytes(b"")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "Tr-gl_1.png").write_bytes(b"")
    roots = [str(tmp_path / "brain-mri"), str(tmp_path / "lgg")]
    ex = [Example("x/glioma/Tr-gl_1.jpg", 1, "glioma", "", "brain-mri"),  # a mask drawn on it: any sequence
          Example("x/glioma/Tr-gl_2.jpg", 1, "glioma", "", "brain-mri"),  # no mask: unknown
          Example("x/notumor/Tr-no_1.jpg", 0, "notumor", "", "brain-mri"),  # tumor-free: all negative
          Example("lgg/t1-post/tumor/p1_3.jpg", 1, "tumor", "", "lgg", "t1-post"),  # FLAIR-drawn: not on T1
          Example("lgg/flair/tumor/p1_3.jpg", 1, "tumor", "", "lgg", "flair")]
    empty, unknown = input_pipeline.MASK_EMPTY, input_pipeline.MASK_UNKNOWN
    assert _mask_specs(ex, roots, "flair")[0][:3] == [unknown, unknown, unknown]  # without --masks-dir: as before
    got, extents = _mask_specs(ex, roots, "flair", {"brain-mri": str(tmp_path / "outside")})
    assert got[0].endswith("Tr-gl_1.png") and got[1:4] == [unknown, empty, unknown] and got[4].endswith("p1_3.png")
    # where the tumor is (--mirror-tumors): every tumor slice with a mask, the FLAIR-drawn one on T1 too
    assert extents[0] == got[0] and extents[1:3] == ["", ""] and extents[3] == extents[4] == got[4]
    with pytest.raises(ValueError, match="would shadow it"):
        _mask_specs(ex, roots, "flair", {"lgg": str(tmp_path / "outside")})


def test_hard_negatives_are_the_tumor_free_training_images_a_published_model_flags(tmp_path):
    """--hard-negatives mines with a real artifact and its own threshold: a model whose lesion map says
    "lesion" everywhere flags every candidate (and nothing else), one that says "nowhere" flags none; the
    flagged ones come back `factor` times in the training index, the others once, validation never."""
    from tests.tiny_model import write_tiny_artifact
    from trainer import hard_negatives
    paths = []
    for i in range(5):
        path = tmp_path / f"s{i}.png"
        path.write_bytes(synth.encode(synth.brain_slice(i, 64)))
        paths.append(str(path))
    paths = np.array(paths)
    candidates = np.array([True, True, False, True, False])
    everywhere = write_tiny_artifact(tmp_path / "a", size=32, threshold=0.5, lesion_bias=5.0)
    nowhere = write_tiny_artifact(tmp_path / "b", size=32, threshold=0.5, lesion_bias=-5.0)
    flagged, threshold = hard_negatives.mine(everywhere, paths, candidates)
    assert threshold == 0.5 and flagged.tolist() == candidates.tolist()
    assert not hard_negatives.mine(nowhere, paths, candidates)[0].any()
    is_train = np.array([True, True, True, True, False])
    hard = np.array([True, False, False, True, True])  # the last is a validation image: never drawn
    assert hard_negatives.repeated_index(is_train, hard, 3).tolist() == [0, 0, 0, 1, 2, 3, 3, 3]
    assert hard_negatives.repeated_index(is_train, hard, 1).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="whole number"):
        hard_negatives.repeated_index(is_train, hard, 2.5)
    keras.backend.clear_session()


def test_hard_negatives_are_refused_without_an_artifact_to_mine_with(tmp_path, capsys):
    from trainer import task
    artifact_dir = tmp_path / "model"
    artifact_dir.mkdir()
    (artifact_dir / "metadata.json").write_text("{}")
    for bad, words in ((["--hard-negatives", "3"], "needs --hard-negatives-from"),
                       (["--hard-negatives", "3", "--hard-negatives-from", str(tmp_path / "absent")],
                        "needs --hard-negatives-from"),
                       (["--hard-negatives", "0"], "draws >= 1"),
                       (["--hard-negatives-from", str(artifact_dir)], "changes nothing"),
                       (["--hard-negatives-in", "brain-mri"], "changes nothing")):
        with pytest.raises(SystemExit) as e:
            task.parse_args(["--data-dir", str(tmp_path), *bad])
        assert e.value.code == 2 and words in capsys.readouterr().err
    cfg = task.parse_args(["--data-dir", str(tmp_path), "--hard-negatives", "3",
                           "--hard-negatives-from", str(artifact_dir)])
    assert (cfg.hard_negatives, cfg.hard_negatives_from) == (3, str(artifact_dir))


def test_hard_negatives_in_a_collection_that_is_not_trained_on_is_refused(tmp_path):
    """--hard-negatives-in names training collections; a typo stops the run before any mining or training."""
    from tests.tiny_model import write_tiny_artifact
    from trainer.train import _training_index
    artifact_dir = write_tiny_artifact(tmp_path / "a", size=32, threshold=0.5, lesion_bias=5.0)
    cfg = TrainConfig(data_dir=["x"], hard_negatives=2, hard_negatives_from=artifact_dir, hard_negatives_in="brain_mri")
    paths, labels = np.array(["a.png", "b.png"]), np.array([0, 1])
    with pytest.raises(ValueError, match=r"not a training collection: \['brain_mri'\]"):
        _training_index(cfg, paths, labels, np.array(["brain-mri", "brain-mri"]), np.array([True, True]))
    cfg = TrainConfig(data_dir=["x"])
    assert _training_index(cfg, paths, labels, np.array(["a", "a"]), np.array([True, False])).tolist() == [0]


def test_skip_tumor_slices_leaves_out_only_the_named_folders_tumor_slices_and_refuses_a_typo(tmp_path):
    """--skip-tumor-slices lgg/t1-post: LGG's T1 'tumor' labels come from a FLAIR mask; its tumor-free T1
    slices and every other folder's slices still train, and a folder no training image is in is refused."""
    from trainer import task
    from trainer.discovery import Example
    from trainer.train import _skipped_tumor_slices
    ex = [Example(f"{c}/{s}/{y}.png", y, "", "", collection=c, sequence=s)
          for c, s in (("lgg", "t1-post"), ("lgg", "flair"), ("brats-ped", "t1-post")) for y in (0, 1)]
    labels = np.array([e.label for e in ex])
    skip = _skipped_tumor_slices("lgg/t1-post", ex, labels)
    assert [e.path for e, s in zip(ex, skip, strict=True) if s] == ["lgg/t1-post/1.png"]
    assert not _skipped_tumor_slices("", ex, labels).any()
    with pytest.raises(ValueError, match=r"no training folder \['lgg/t1post'\]"):
        _skipped_tumor_slices("lgg/t1post", ex, labels)
    cfg = task.parse_args(["--data-dir", str(tmp_path), "--skip-tumor-slices", "lgg/t1-pre,lgg/t1-post"])
    assert cfg.skip_tumor_slices == "lgg/t1-pre,lgg/t1-post"


def test_a_painted_slice_of_a_collection_without_tumor_slices_weighs_one_example(tmp_path):
    """A tumor painted into a collection of tumor-free heads (one class only) trains as one tumor example;
    weighed as that collection's whole missing class it carried n/2 times a slice's weight and the
    classifier diverged."""
    paths = []
    for i in range(6):
        path = tmp_path / f"h{i}.png"
        path.write_bytes(synth.encode(synth.brain_slice(i, 128)))
        paths.append(str(path))
    labels = np.zeros(6, np.float32)
    ds = input_pipeline.make_lesion_dataset(
        paths, labels, np.array([input_pipeline.MASK_EMPTY] * 6), ["healthy"] * 6,
        preprocessing.InputSpec(height=128, width=128), 6, True, seed=1, stride=16, balanced=False,
        synth=(np.array([1.0, 1.0, 1.0, 0, 0, 0], np.float32), np.zeros(6, np.int32)))
    _, y, w = next(iter(ds))
    label, weight = y["tumor_probability"].numpy()[:, 0], w["tumor_probability"].numpy()
    assert label.sum() >= 1, "at least one slice was painted"
    assert np.allclose(weight[label == 1], 1.0), weight
    assert np.allclose(weight[label == 0], 0.5), "its own slices keep theirs (half the class's share, as before)"
    assert input_pipeline.class_weights([0, 0, 1, 1, 1, 1]) == {0: 1.5, 1: 0.75}


def test_a_split_seed_keeps_one_validation_split_across_draws_of_a_recipe(tmp_path):
    """v24 and v26 (seeds 43 and 44) split with their own seeds and trained on most of v30's validation slices;
    --split-seed keeps the split of another draw while the initialisation and the draws change."""
    from trainer.train import prepare_data
    synth.write_sequence_collection(str(tmp_path / "lgg"), patients=20, per_patient=4, size=48, sequences=("flair",))

    def split(**kw):
        cfg = TrainConfig(data_dir=[str(tmp_path / "lgg")], group_pattern=r"^((?:TCGA_).+)_\d+\.\w+$", **kw)
        data = prepare_data(cfg)
        return sorted(e.path for e, v in zip(data["examples"], data["is_val"], strict=True) if v)
    first = split(seed=42)
    assert first and split(seed=43, split_seed=42) == first
    assert split(seed=43) != first  # the old behaviour, still what -1 gives: the seed splits too
    assert TrainConfig(seed=44).split_seed_used() == 44 and TrainConfig(seed=44, split_seed=42).split_seed_used() == 42


def test_each_recipe_is_rebuilt_on_the_preprocessing_its_model_was_made_on(tmp_path):
    """v36 was v35 on prepare() v2, v37 v36 on v3: without a pin, `make train-v35` would silently rebuild v35 on
    the newest prepare(). The trainers take --preprocessing (any id still implemented, nothing else), and every
    trainer command of the Makefile names the one of its recipe."""
    import os
    import subprocess

    from trainer import lesion_train, task
    assert task.parse_args(["--data-dir", str(tmp_path)]).preprocessing == preprocessing.PREPROCESSING_ID
    assert task.parse_args(["--data-dir", str(tmp_path), "--preprocessing", "gray-headcrop-pnorm-v1"]).preprocessing \
        == "gray-headcrop-pnorm-v1"
    with pytest.raises(SystemExit):
        task.parse_args(["--data-dir", str(tmp_path), "--preprocessing", "gray-headcrop-pnorm-v9"])
    with pytest.raises(SystemExit):
        lesion_train._parse(["--data-dir", "x", "--preprocessing", "v2"])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for target, pid in (("train-v16", "v1"), ("train-v22", "v1"), ("train-v35", "v1"), ("train-v36", "v2"),
                        ("train-v37", "v3"), ("train-v38", "v3"), ("train-v39", "v4"), ("train-v43", "v4"), ("train-v44", "v4"),
                        ("train-orientation", "v3"),
                        ("train", "v1")):
        out = subprocess.run(["make", "-n", "-s", target, "VENV=/nonexistent", "STAMP="], cwd=root,
                             capture_output=True, text=True, timeout=60)
        trainers = [line for line in out.stdout.splitlines()
                    if any(f"-m trainer.{m} " in line for m in ("task", "lesion_train", "orientation"))]
        assert trainers, (target, out.stdout[-500:], out.stderr[-500:])
        for line in trainers:
            assert f"--preprocessing gray-headcrop-pnorm-{pid}" in line, (target, line)

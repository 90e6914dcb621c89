"""A site validation on images the model was developed on must not pass: the artifact's fingerprints of its
development images (screening_core/fingerprint.py, trainer/development_set.py) against the sample."""
import io
import json
import shutil

import numpy as np
from PIL import Image

from beam_pipeline import validate
from screening_core import artifact, fingerprint
from tests import synth, tiny_model
from trainer import development_set


def _gray(seed, lesion=False):
    return synth.brain_slice(seed, 32, lesion=lesion).astype(np.float32)


def test_a_resized_recompressed_copy_is_near_and_another_slice_is_not():
    original = synth.brain_slice(3, 96)
    buf = io.BytesIO()
    Image.fromarray(original.astype(np.uint8)).resize((200, 200), Image.BICUBIC).save(buf, "JPEG", quality=70)
    from screening_core import preprocessing
    copy = preprocessing.decode_raster(buf.getvalue())
    reference = fingerprint.of_thumbnails(np.stack([fingerprint.thumbnail(original.astype(np.float32))]))
    d_copy, _ = fingerprint.nearest(fingerprint.of_thumbnails(fingerprint.thumbnail(copy)[None]), reference)
    others = np.stack([fingerprint.thumbnail(_gray(s)) for s in range(100, 120)])
    d_other, _ = fingerprint.nearest(fingerprint.of_thumbnails(others), reference)
    assert d_copy[0] <= fingerprint.MAX_DISTANCE < d_other.min()


def test_fingerprints_are_sealed_into_the_artifact_and_read_back(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    fps = fingerprint.of_thumbnails(np.stack([fingerprint.thumbnail(_gray(s)) for s in range(5)]))
    md = development_set.write(model_dir, {"public-set": fps, "other": fps[:2]})
    assert md["development_fingerprints"]["collections"] == {"other": 2, "public-set": 5}
    artifact.verify(model_dir)  # re-sealed, the npz covered
    (loaded, names), why = fingerprint.load_development(model_dir, md)
    assert why is None and loaded.shape == (7, fingerprint.BITS // 8) and names == ["other"] * 2 + ["public-set"] * 5
    with open(f"{model_dir}/{fingerprint.DEVELOPMENT_FILE}", "ab") as f:
        f.write(b"x")
    try:
        artifact.verify(model_dir)
    except artifact.ArtifactError as e:
        assert "changed after the artifact was sealed" in str(e)
    else:
        raise AssertionError("a changed fingerprint file must break the seal")


def _meeting_sample():
    from tests.test_site_validation import _per_patient
    return _per_patient(100, 3, separable=True)  # meets on its own (test_a_good_sample_of_enough_patients_meets)


def test_near_copies_of_development_images_fail_a_sample_that_would_meet():
    y, p, g = _meeting_sample()
    copies = [None] * y.size
    for i in range(0, 300, 20):  # 15 of 300 images (5 %): the least that fails
        copies[i] = "brain-mri"
    r = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300,
                          development={"copies": copies})
    assert r["status"] == "not met" and not r["meets"] and r["validated_looks"] == []
    assert "15 of 300 images (in 15 patients) are near-copies of images the model was developed on (15 brain-mri)" \
        in r["verdict"]
    assert r["development_copies"] == {"checked": True, "images": 15, "patients": 15, "collections": {"brain-mri": 15},
                                       "keys": []}  # no keys given
    few = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300,
                            development={"copies": ["lgg"] * 14 + [None] * (y.size - 14)})
    assert few["meets"] and few["development_copies"]["images"] == 14  # 0.5-0.8 % is what chance gives
    assert "NOTE: 14 images are near-copies" in few["verdict"]
    unknown = validate.evaluate(y, p, g, np.array([""] * y.size), [None] * y.size, 0.5, 0.95, 0.9, 300,
                                development={"why": "the model artifact carries no fingerprints"})
    assert unknown["meets"] and "WARNING: the sample was not compared" in unknown["verdict"]
    assert unknown["development_copies"] == {"checked": False, "why": "the model artifact carries no fingerprints"}


def _sample(root, seeds, fmt="PNG", size=128):
    for i in seeds:
        cls = "tumor" if i % 2 else "notumor"
        path = root / cls / f"case{i}_1.{fmt.lower()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(synth.brain_slice(i, 128, lesion=bool(i % 2)).astype(np.uint8))
        img.resize((size, size), Image.BICUBIC).save(path, fmt, **({"quality": 75} if fmt == "JPEG" else {}))


def test_brain_validate_finds_a_sample_made_of_development_images(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    public = tmp_path / "public"  # what the model was "developed" on
    _sample(public, range(16))
    development_set.main(["--model", model_dir, "--data-dir", str(public)])
    sample = tmp_path / "downloaded"  # the same images, re-saved larger as JPEG, offered as the site's sample
    _sample(sample, range(16), fmt="JPEG", size=224)
    out = tmp_path / "validation"
    assert validate.main(["--sample", str(sample), "--output", str(out), "--model", model_dir,
                          "--group-pattern", r"^(.+)_\d+\.\w+$", "--bootstrap", "50"]) == 3
    result = json.load(open(out / "validation.json"))
    assert result["development_copies"]["images"] == 16 and result["development_copies"]["collections"] == {"public": 16}
    keys = result["development_copies"]["keys"]
    assert len(keys) == 16 and all("case" not in k for k in keys)  # pseudonymised paths, as in the rows
    assert {"check": "near-copies of development images", "passed": False, "value": "16"} in result["checks"]
    page = open(out / "validation.html").read()
    assert "near-copies of images the model was developed on (16 public)" in page
    assert "near-copies" in capsys.readouterr().out

    other = tmp_path / "site"  # the site's own patients: nothing in common with the development images
    _sample(other, range(100, 116))
    assert validate.main(["--sample", str(other), "--output", str(out), "--model", model_dir,
                          "--group-pattern", r"^(.+)_\d+\.\w+$", "--bootstrap", "50"]) == 3  # too few patients
    result = json.load(open(out / "validation.json"))
    assert result["development_copies"]["images"] == 0
    assert {"check": "near-copies of development images", "passed": True, "value": "0"} in result["checks"]


def test_without_fingerprints_the_verdict_says_the_sample_was_not_compared(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    sample = tmp_path / "site"
    _sample(sample, range(100, 116))
    out = tmp_path / "validation"
    validate.main(["--sample", str(sample), "--output", str(out), "--model", model_dir, "--bootstrap", "50"])
    result = json.load(open(out / "validation.json"))
    assert result["development_copies"] == {"checked": False,
                                            "why": "the model artifact carries no fingerprints of its development images"}
    assert "WARNING: the sample was not compared with the images the model was developed on" in result["verdict"]
    shutil.rmtree(out)


def test_scores_with_kept_paths_are_compared_and_pseudonymised_ones_are_said_not_to_be(tmp_path):
    import csv

    import pyarrow.parquet as pq

    from beam_pipeline import run
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    public = tmp_path / "public"
    _sample(public, range(16))
    development_set.main(["--model", model_dir, "--data-dir", str(public)])
    import hashlib
    label_of = {hashlib.sha256(p.read_bytes()).hexdigest(): int(p.parent.name == "tumor") for p in public.rglob("*.png")}
    for keep, out in (([], tmp_path / "pseudonymised"), (["--keep-paths"], tmp_path / "kept")):
        assert run.main(["--input", str(public), "--output", str(out), "--model", model_dir, *keep]) == 0
        rows = [r for f in run.read_summary(str(out))["result"]["output_files"] for r in pq.read_table(f).to_pylist()]
        with open(tmp_path / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["source_uri", "label"])
            w.writerows([r["source_uri"], label_of[r["content_sha256"]]] for r in rows)
        validate.main(["--scores", str(out), "--labels", str(tmp_path / "labels.csv"), "--output",
                       str(tmp_path / "v"), "--model", model_dir, "--bootstrap", "50"])
        result = json.load(open(tmp_path / "v" / "validation.json"))
        if keep:
            assert result["development_copies"]["images"] == 16
        else:
            assert result["development_copies"]["checked"] is False and "not at hand" in result["verdict"]


def test_a_zip_of_development_images_is_compared_member_by_member(tmp_path):
    import zipfile
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    public = tmp_path / "public"
    _sample(public, range(16))
    development_set.main(["--model", model_dir, "--data-dir", str(public)])
    sample = tmp_path / "zipped"
    for cls in ("tumor", "notumor"):
        (sample / cls).mkdir(parents=True)
        with zipfile.ZipFile(sample / cls / "batch.zip", "w") as zf:
            for png in sorted((public / cls).glob("*.png")):
                zf.write(png, f"scans/{png.name}")
            zf.writestr("scans/other.png", synth.encode(synth.brain_slice(500, 128)))  # not a development image
    out = tmp_path / "validation"
    validate.main(["--sample", str(sample), "--output", str(out), "--model", model_dir, "--bootstrap", "50"])
    result = json.load(open(out / "validation.json"))
    assert result["n_images"] == 18 and result["development_copies"]["images"] == 16
    assert len(result["development_copies"]["keys"]) == 16 and not any("case" in k for k in result["development_copies"]["keys"])

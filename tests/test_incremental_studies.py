"""Incremental (--manifest) nights that rescore part of a study: the result must hold each image once and
each study's row over all of its images, not only the ones that changed tonight."""
import os
import time
import zipfile

import pytest

from beam_pipeline import run, sample_data
from tests import rows as rows_mod
from tests import synth, tiny_model


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(synth.encode(synth.brain_slice(seed, 32)))


def _night(inputs, out, model_dir, mf, pattern="**/*.png"):
    run.run(["--input", str(inputs / pattern), "--keep-paths", "--output", str(out), "--model", model_dir,
             "--manifest", str(mf)])


def _by_folder(rows):
    return {os.path.basename(r["source_uri"].rstrip("/")): r["n_images"] for r in rows}


def _a_study_scored_last_night(tmp_path, model_dir, n=3):
    """(inputs, out, manifest) after one night over a folder study of n slices; tonight may change them."""
    inputs, out, mf = tmp_path / "in", tmp_path / "out", tmp_path / "manifest.json"
    for s in range(n):
        _png(inputs / "study" / f"img{s}.png", s)
    _night(inputs, out, model_dir, mf)
    time.sleep(1.1)  # a later modification time than the manifest's
    return inputs, out, mf


@pytest.fixture()
def model_dir(tmp_path):
    return tiny_model.write_tiny_artifact(tmp_path)


def test_a_changed_slice_keeps_its_folder_study_whole_and_its_image_once(tmp_path, model_dir):
    inputs, out, mf = tmp_path / "in", tmp_path / "out", tmp_path / "manifest.json"
    for s in range(4):
        _png(inputs / "studyA" / f"img{s}.png", s)
    for s in range(2):
        _png(inputs / "studyB" / f"img{s}.png", 10 + s)
    _night(inputs, out, model_dir, mf)
    time.sleep(1.1)
    _png(inputs / "studyA" / "img1.png", 99)  # a corrected slice, rewritten tonight
    _night(inputs, out, model_dir, mf)

    images = rows_mod.images(out)
    assert sorted((os.path.basename(os.path.dirname(r["source_uri"])), os.path.basename(r["source_uri"]))
                  for r in images) == [("studyA", f"img{s}.png") for s in range(4)] + [("studyB", "img0.png"),
                                                                                     ("studyB", "img1.png")]
    assert _by_folder(rows_mod.images(out, "studies-*.parquet")) == {"studyA": 4, "studyB": 2}
    assert _by_folder(rows_mod.images(out, "series-*.parquet")) == {"studyA": 4, "studyB": 2}
    result = run.read_summary(str(out))["result"]
    assert result["rows"] == 6 and result["by_status"] == {"ok": 6} and result["sources"] == 6
    assert sum(result["score_histogram"]) == 6


def test_the_rescored_image_row_is_tonights(tmp_path, model_dir):
    import hashlib
    inputs, out, mf = _a_study_scored_last_night(tmp_path, model_dir)
    _png(inputs / "study" / "img2.png", 42)
    _night(inputs, out, model_dir, mf)
    (row,) = [r for r in rows_mod.images(out) if r["source_uri"].endswith("img2.png")]
    assert row["content_sha256"] == hashlib.sha256((inputs / "study" / "img2.png").read_bytes()).hexdigest()


def test_a_dicom_study_split_over_two_folders_keeps_both_series(tmp_path, model_dir):
    inputs, out, mf = tmp_path / "in", tmp_path / "out", tmp_path / "manifest.json"
    study = "1.2.826.0.1.3680043.8.498.1"
    for folder, series in (("s1", f"{study}.1"), ("s2", f"{study}.2")):
        (inputs / folder).mkdir(parents=True)
        for i in range(2):
            (inputs / folder / f"{i}.dcm").write_bytes(
                sample_data.dicom_bytes(synth.brain_slice(i, 32), 0, study, series, i + 1))
    _night(inputs, out, model_dir, mf, "**/*.dcm")
    time.sleep(1.1)
    (inputs / "s1" / "0.dcm").write_bytes(
        sample_data.dicom_bytes(synth.brain_slice(7, 32), 0, study, f"{study}.1", 1))
    _night(inputs, out, model_dir, mf, "**/*.dcm")
    (row,) = rows_mod.images(out, "studies-*.parquet")
    assert (row["n_series"], row["n_images"]) == (2, 4)
    assert sorted(s["n_images"] for s in rows_mod.images(out, "series-*.parquet")) == [2, 2]
    assert len(rows_mod.images(out)) == 4


def test_a_rewritten_archive_replaces_its_rows(tmp_path, model_dir):
    inputs, out, mf = tmp_path / "in", tmp_path / "out", tmp_path / "manifest.json"
    inputs.mkdir()

    def zip_(name, seeds):
        with zipfile.ZipFile(inputs / name, "w") as zf:
            for s in seeds:
                zf.writestr(f"img{s}.png", synth.encode(synth.brain_slice(s, 32)))

    zip_("mon.zip", range(3))
    zip_("tue.zip", range(3, 5))
    _night(inputs, out, model_dir, mf, "*.zip")
    time.sleep(1.1)
    zip_("mon.zip", (0, 8))  # re-exported with one slice fewer and one new
    _night(inputs, out, model_dir, mf, "*.zip")
    images = rows_mod.images(out)
    assert sorted((os.path.basename(r["source_uri"]), r["member_path"]) for r in images) == [
        ("mon.zip", "img0.png"), ("mon.zip", "img8.png"), ("tue.zip", "img3.png"), ("tue.zip", "img4.png")]
    assert run.read_summary(str(out))["result"]["rows"] == 4
    assert _by_folder(rows_mod.images(out, "studies-*.parquet")) == {"mon.zip": 2, "tue.zip": 2}


def test_a_finalise_retried_before_promotion_counts_each_row_once(tmp_path, model_dir, monkeypatch):
    """Beam may retry the last bundle after it changed the staging folder but before it promoted: the
    carried tables are filtered again from the promoted result, never from what the first try left."""
    from beam_pipeline import finalise, results_store
    inputs, out, mf = _a_study_scored_last_night(tmp_path, model_dir)
    _png(inputs / "study" / "img0.png", 50)
    real_promote, calls = results_store.promote, []

    def promote_fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("worker lost")
        return real_promote(*args, **kwargs)

    real_finalise = finalise.finalise

    def retried(*args, **kwargs):
        try:
            return real_finalise(*args, **kwargs)
        except OSError:
            return real_finalise(*args, **kwargs)

    monkeypatch.setattr(results_store, "promote", promote_fails_once)
    monkeypatch.setattr(finalise, "finalise", retried)
    _night(inputs, out, model_dir, mf)
    assert len(calls) == 2
    result = run.read_summary(str(out))["result"]
    assert result["rows"] == 3 and result["sources"] == 3 and len(rows_mod.images(out)) == 3
    assert _by_folder(rows_mod.images(out, "studies-*.parquet")) == {"study": 3}


def test_a_slice_that_turned_unreadable_leaves_its_study_with_the_others(tmp_path, model_dir):
    """Tonight's only row is an error: no series or study of its own, yet the study it left must shrink."""
    inputs, out, mf = _a_study_scored_last_night(tmp_path, model_dir)
    (inputs / "study" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _night(inputs, out, model_dir, mf)
    images = rows_mod.images(out)
    assert sorted((os.path.basename(r["source_uri"]), r["status"]) for r in images) == [
        ("img0.png", "ok"), ("img1.png", "error"), ("img2.png", "ok")]
    assert _by_folder(rows_mod.images(out, "studies-*.parquet")) == {"study": 2}
    assert _by_folder(rows_mod.images(out, "series-*.parquet")) == {"study": 2}
    result = run.read_summary(str(out))["result"]
    assert result["rows"] == 3 and result["by_status"] == {"ok": 2, "error": 1}


def test_a_changed_volume_keeps_the_slices_beside_it_in_its_folder_study(tmp_path, model_dir):
    """A folder holding PNG slices and a NIfTI volume is one study of two series; rescoring the volume alone
    must keep the PNG series (it was dropped as a series keyed like the folder's study)."""
    import nibabel as nib
    import numpy as np
    inputs, out, mf = tmp_path / "in", tmp_path / "out", tmp_path / "manifest.json"
    for s in range(2):
        _png(inputs / "visit" / f"img{s}.png", s)
    zz, yy, xx = np.meshgrid(*(np.arange(n) - n / 2 for n in (40, 48, 3)), indexing="ij")
    head = (((zz / 16) ** 2 + (yy / 20) ** 2 < 1.0) * (100 + 20 * np.cos(xx))).astype(np.int16)
    nib.save(nib.Nifti1Image(head, np.eye(4)), str(inputs / "visit" / "a_t2.nii.gz"))
    argv = ["--input", str(inputs / "visit" / "*"), "--keep-paths", "--output", str(out), "--model", model_dir,
            "--manifest", str(mf)]
    run.run(argv)
    time.sleep(1.1)
    nib.save(nib.Nifti1Image(head * 2, np.eye(4)), str(inputs / "visit" / "a_t2.nii.gz"))
    run.run(argv)
    series = sorted((os.path.basename(s["source_uri"]), s["n_images"]) for s in rows_mod.images(out, "series-*.parquet"))
    assert series == [("a_t2.nii.gz", 3), ("visit", 2)]
    (study,) = rows_mod.images(out, "studies-*.parquet")
    assert (study["n_series"], study["n_images"]) == (2, 5)


def test_a_changed_slice_keeps_its_patient_whole_across_folders(tmp_path, model_dir):
    """--group-pattern: a patient's slices in two sequence folders are one study; one corrected slice tonight
    must not leave a study row of that slice alone (rows are found by the pseudonymised patient)."""
    inputs, out, mf = tmp_path / "in", tmp_path / "out", tmp_path / "manifest.json"
    for seq in ("flair", "t1"):
        for s in range(2):
            _png(inputs / seq / f"case07_{s}.png", s + (10 if seq == "t1" else 0))
    argv = ["--input", str(inputs / "**" / "*.png"), "--output", str(out), "--model", model_dir, "--manifest", str(mf),
            "--group-pattern", r"^(.+)_\d+\.png$"]
    run.run(argv)
    time.sleep(1.1)
    _png(inputs / "flair" / "case07_1.png", 77)
    run.run(argv)
    (study,) = rows_mod.images(out, "studies-*.parquet")
    assert (study["group_kind"], study["n_series"], study["n_images"]) == ("patient", 2, 4)
    assert "case07" not in str(study)  # pseudonymised, as every run without --keep-paths
    assert len(rows_mod.images(out)) == 4


def test_a_corrected_slice_leaves_no_overlay_of_its_old_version(tmp_path):
    """Overlays are named by the image's content: the superseded row's overlay goes, every row's stays."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path / "m", lesion_bias=5.0)  # flags every slice
    _png(tmp_path / "in" / "elsewhere" / "copy2.png", 2)  # the same image as study/img2.png: one overlay for both
    inputs, out, mf = _a_study_scored_last_night(tmp_path, model_dir)
    _png(inputs / "study" / "img1.png", 55)  # its old overlay goes
    _png(inputs / "study" / "img2.png", 66)  # its old overlay stays: elsewhere/copy2.png shows it
    _night(inputs, out, model_dir, mf)
    images = rows_mod.images(out)
    shown = {os.path.basename(r["heatmap_path"]) for r in images}
    assert len(images) == 4 and all(r["heatmap_path"] for r in images) and len(shown) == 4
    assert sorted(os.listdir(rows_mod.result_file(out, "heatmaps"))) == sorted(shown)

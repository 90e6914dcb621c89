"""Nightly reruns: the same run id replaces its own output; the manifest makes
runs incremental (only new or changed archives are scored)."""
import os
import time
import zipfile

from beam_pipeline import run
from tests import rows as rows_mod
from tests import synth, tiny_model
from tests.rows import stable


def _zip(path, seeds):
    with zipfile.ZipFile(path, "w") as zf:
        for s in seeds:
            zf.writestr(f"img{s}.png", synth.encode(synth.brain_slice(s, 32)))


def _rows(out):
    return rows_mod.images(out)


def test_rerun_with_same_run_id_replaces_output(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    _zip(tmp_path / "a.zip", range(5))
    argv = ["--input", str(tmp_path / "*.zip"), "--keep-paths", "--output", str(tmp_path / "out"), "--model", model_dir,
            "--run-id", "night-1"]
    run.run(argv)
    first = _rows(str(tmp_path / "out"))
    run.run(argv + ["--num-shards", "2"])  # a different shard count must not leave old shards behind
    second = _rows(str(tmp_path / "out"))
    assert len(first) == len(second) == 5
    assert stable(first) == stable(second)


def test_manifest_scores_only_new_or_changed_archives(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    _zip(inputs / "mon.zip", range(3))
    _zip(inputs / "tue.zip", range(3, 7))
    mf = str(tmp_path / "state" / "manifest.json")
    os.makedirs(os.path.dirname(mf))

    def night(name):
        out = str(tmp_path / name)
        run.run(["--input", str(inputs / "*.zip"), "--keep-paths", "--output", out, "--model", model_dir, "--manifest", mf])
        return run.read_summary(out), out

    s1, out1 = night("n1")
    assert s1["rows"] == 7 and s1["sources"] == 2
    s2, _ = night("n2")  # nothing changed
    assert s2["rows"] == 0
    _zip(inputs / "wed.zip", range(7, 9))  # new archive
    time.sleep(1.1)
    _zip(inputs / "mon.zip", range(3))  # rewritten archive (new mtime)
    s3, out3 = night("n3")
    assert s3["rows"] == 5
    assert {os.path.basename(r["source_uri"]) for r in _rows(out3)} == {"mon.zip", "wed.zip"}


def test_second_run_with_nothing_new_keeps_the_results(tmp_path):
    """Same output, same day, --manifest: the second run finds nothing new and deletes nothing."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    _zip(inputs / "mon.zip", range(4))
    mf = str(tmp_path / "manifest.json")
    out = str(tmp_path / "out")
    argv = ["--input", str(inputs / "*.zip"), "--keep-paths", "--output", out, "--model", model_dir, "--manifest", mf]
    run.run(argv)
    first = _rows(out)
    assert len(first) == 4
    run.run(argv)
    assert stable(_rows(out)) == stable(first)
    assert run.read_summary(out)["rows"] == 4


def test_staging_of_a_dead_run_is_removed_by_the_next_run(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    _zip(tmp_path / "a.zip", range(2))
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "*.zip"), "--output", str(out), "--model", model_dir]
    run.run(argv)
    dead, young = out / "_staging" / "night-0-dead", out / "_staging" / "night-1-running"
    for stage in (dead, young):
        (stage / "beam-temp-images-0123").mkdir(parents=True)
        (stage / "beam-temp-images-0123" / "part.parquet").write_bytes(b"half")
    two_days_ago = time.time() - 2 * 86400
    os.utime(dead, (two_days_ago, two_days_ago))
    run.run(argv)
    assert not dead.exists()
    assert young.exists()  # could be a run still going
    assert len(_rows(str(out))) == 2


def test_a_retried_finalise_changes_nothing(tmp_path, monkeypatch):
    """Beam may retry the last bundle: Finalise called again with the same plan keeps the result and the
    manifest as the first call left them (it emptied results/ of its image table and doubled run ids)."""
    import json

    from beam_pipeline import finalise
    calls = []
    real = finalise.finalise

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(finalise, "finalise", recording)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    _zip(tmp_path / "mon.zip", range(3))
    out, manifest = tmp_path / "out", tmp_path / "state" / "manifest.json"
    manifest.parent.mkdir()
    assert run.main(["--input", str(tmp_path / "mon.zip"), "--keep-paths", "--output", str(out), "--model", model_dir,
                     "--run-id", "night1", "--manifest", str(manifest)]) == 0
    assert len(calls) == 1
    before_rows, before_summary = _rows(str(out)), run.read_summary(str(out))
    before_manifest = json.loads(manifest.read_text())
    again = real(*calls[0][0], **calls[0][1])  # the retry
    assert again["result"]["run_ids"] == ["night1"] and again["result"]["rows"] == before_summary["result"]["rows"]
    assert stable(_rows(str(out))) == stable(before_rows) and len(before_rows) == 3
    assert run.read_summary(str(out)) == before_summary
    assert json.loads(manifest.read_text()) == before_manifest


def test_a_folder_of_volumes_rescored_after_the_upgrade_leaves_no_folder_level_series_behind(tmp_path):
    """Results written before each NIfTI volume was a series of its own hold one series row under the folder's
    key; a nightly --manifest run that rescores the folder must replace it, not list it beside the volumes."""
    import nibabel as nib
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_pipeline import results_store
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    zz, yy, xx = np.meshgrid(*(np.arange(n) - n / 2 for n in (40, 48, 4)), indexing="ij")
    head = (((zz / 16) ** 2 + (yy / 20) ** 2 < 1.0) * (100 + 20 * np.cos(xx))).astype(np.int16)
    nib.save(nib.Nifti1Image(head, np.eye(4)), str(inputs / "a_t2.nii.gz"))
    out, mf = str(tmp_path / "out"), str(tmp_path / "manifest.json")
    argv = ["--input", str(inputs / "*.nii.gz"), "--keep-paths", "--output", out, "--model", model_dir,
            "--manifest", mf]
    run.run(argv)
    (path,) = results_store.reader_glob(out, "series-*.parquet")
    table = pq.read_table(path)
    old = table.slice(0, 1).to_pylist()[0]
    old.update(study_key=f"{inputs}/", source_uri=str(inputs), n_images=99)  # the folder-level row of old
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([old], table.schema)]), path)
    time.sleep(1.1)
    nib.save(nib.Nifti1Image(head * 2, np.eye(4)), str(inputs / "a_t2.nii.gz"))  # changed tonight
    run.run(argv)
    series = rows_mod.images(out, "series-*.parquet")
    assert [s["n_images"] for s in series] == [4] and series[0]["source_uri"].endswith("a_t2.nii.gz")

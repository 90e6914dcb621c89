"""gs:// input, model and output against a real GCS-API server on loopback.

gcp-storage-emulator serves the JSON API; google-cloud-storage (used by
Beam's GcsIO) talks to it through STORAGE_EMULATOR_HOST. No client mocks.
"""
import os

import pyarrow.fs
import pyarrow.parquet as pq

from beam_pipeline import run
from tests import corpus, tiny_model
from tests.conftest import BUCKET
from tests.conftest import upload as _upload


def test_gs_input_model_and_output(gcs, tmp_path):
    inputs, expected = corpus.build(tmp_path)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    _upload(inputs, "archives")
    _upload(model_dir, "models/tiny/1")
    out = f"gs://{BUCKET}/results/run1"
    run.run(["--input", f"gs://{BUCKET}/archives/*.zip", "--input", f"gs://{BUCKET}/archives/*.tar*",
             "--keep-paths", "--output", out, "--model", f"gs://{BUCKET}/models/tiny/1", "--run-id", "gcs-run"])

    fs = pyarrow.fs.GcsFileSystem(anonymous=True, endpoint_override=f"127.0.0.1:{gcs.port}", scheme="http")
    # The reader contract (docs/reliability.md), followed by Arrow's own GCS client.
    listed = [f.path for f in fs.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/results/run1", recursive=True))]
    files = [p for p in listed if p.rsplit("/", 1)[-1].startswith("images-")
             and not any(part.startswith(("_", ".")) for part in p.split("/")[3:])]
    assert files and all("/results/run1/results/images-gcs-run-" in p for p in files)
    assert not [p for p in listed if "/_staging/" in p]  # promoted and cleaned up
    rows = pq.read_table(files, filesystem=fs).to_pylist()
    want = {k: v for k, v in expected.items()
            if os.path.basename(k[0]).startswith("study_")}
    got = {(r["source_uri"].replace(f"gs://{BUCKET}/archives", inputs), r["member_path"], r["frame_index"]):
           (r["status"], r["error_code"]) for r in rows}
    assert got == want
    assert run.read_summary(out)["rows"] == len(want)


def test_missing_credentials_or_bucket_fail_in_seconds(gcs, monkeypatch, tmp_path, capsys):
    import time
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    argv = ["--output", str(tmp_path / "o"), "--model", model_dir]
    started = time.time()
    assert run.main(["--input", f"gs://{BUCKET}-missing/x/*.zip", *argv]) == 2
    assert f"bucket gs://{BUCKET}-missing does not exist" in capsys.readouterr().err
    # A laptop without credentials, talking to real GCS (not the emulator): no 26 s probe, no 120 s retries.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    assert run.main(["--input", "gs://hospital-archive/nightly/*.zip", *argv]) == 2
    assert "need Google Cloud credentials and none were found" in capsys.readouterr().err
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    assert run.main(["--input", "gs://hospital-archive/nightly/*.zip", *argv]) == 2
    assert "credentials unusable" in capsys.readouterr().err
    assert time.time() - started < 30


def test_a_retried_finalise_on_gcs_changes_nothing(gcs, tmp_path, monkeypatch):
    """A Dataflow retry of the last bundle calls Finalise again with the same plan; on GCS (copy, commit,
    delete) the first version of this path deleted the night's tables. The objects of the result, the
    summary and the manifest must be exactly what the first call left."""
    import json
    import zipfile

    from google.cloud import storage

    from beam_pipeline import finalise
    from tests import synth
    calls = []
    real = finalise.finalise
    monkeypatch.setattr(finalise, "finalise", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    with zipfile.ZipFile(tmp_path / "mon.zip", "w") as zf:
        for s in range(3):
            zf.writestr(f"img{s}.png", synth.encode(synth.brain_slice(s, 32)))
    out, manifest = f"gs://{BUCKET}/results/retry", tmp_path / "state" / "manifest.json"
    manifest.parent.mkdir()
    assert run.main(["--input", str(tmp_path / "mon.zip"), "--output", out, "--model", model_dir,
                     "--run-id", "night1", "--manifest", str(manifest)]) == 0
    bucket = storage.Client.create_anonymous_client().bucket(BUCKET)

    def objects():
        return {b.name: b.md5_hash for b in bucket.list_blobs(prefix="results/retry/")
                if "/_staging/" not in b.name}

    before, before_summary = objects(), run.read_summary(out)
    before_manifest = json.loads(manifest.read_text())
    assert len(calls) == 1 and any("/results/images-night1-" in name for name in before)
    again = real(*calls[0][0], **calls[0][1])  # the retry
    assert again["result"]["run_ids"] == ["night1"] and again["result"]["rows"] == 3
    assert objects() == before
    assert run.read_summary(out) == before_summary
    assert json.loads(manifest.read_text()) == before_manifest


def test_an_incremental_night_on_gcs_keeps_each_image_once_and_the_study_whole(gcs, tmp_path):
    """beam_pipeline/incremental.py rewrites carried tables in a gs:// staging folder (create, delete, rename)."""
    import time

    from tests import synth
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    folder = tmp_path / "in" / "study"
    folder.mkdir(parents=True)
    for s in range(3):
        (folder / f"img{s}.png").write_bytes(synth.encode(synth.brain_slice(s, 32)))
    out, manifest = f"gs://{BUCKET}/results/incremental", str(tmp_path / "manifest.json")
    argv = ["--input", str(folder / "*.png"), "--keep-paths", "--output", out, "--model", model_dir,
            "--manifest", manifest]
    assert run.main(argv + ["--run-id", "night1"]) == 0
    time.sleep(1.1)
    (folder / "img1.png").write_bytes(synth.encode(synth.brain_slice(9, 32)))
    assert run.main(argv + ["--run-id", "night2"]) == 0
    fs = pyarrow.fs.GcsFileSystem(anonymous=True, endpoint_override=f"127.0.0.1:{gcs.port}", scheme="http")

    def table(prefix):
        listed = [f.path for f in fs.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/results/incremental/results"))]
        return pq.read_table([p for p in listed if p.rsplit("/", 1)[-1].startswith(prefix)], filesystem=fs).to_pylist()

    images = table("images-")
    assert sorted((os.path.basename(r["source_uri"]), r["run_id"]) for r in images) == [
        ("img0.png", "night1"), ("img1.png", "night2"), ("img2.png", "night1")]
    assert [s["n_images"] for s in table("studies-")] == [3] and [s["n_images"] for s in table("series-")] == [3]
    assert run.read_summary(out)["result"]["rows"] == 3


def test_a_run_whose_gs_pseudonym_key_was_replaced_meanwhile_publishes_nothing(gcs, tmp_path, monkeypatch, capsys):
    """Two first runs creating one gs:// key at once both upload it and the last upload stays (Beam's
    FileSystems has no create-if-absent): the run whose key was overwritten must not publish rows whose
    pseudonyms no stored key maps back. Simulated: another key lands in the key file during the run."""
    import secrets

    from google.cloud import storage

    from beam_pipeline import finalise, pseudonym
    from tests import synth
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    folder = tmp_path / "in" / "MRN123456"
    folder.mkdir(parents=True)
    for s in range(2):
        (folder / f"img{s}.png").write_bytes(synth.encode(synth.brain_slice(s, 32)))
    key_file, out = f"gs://{BUCKET}/keys/site.key", f"gs://{BUCKET}/results/keyrace"
    argv = ["--input", str(folder / "*.png"), "--output", out, "--model", model_dir,
            "--pseudonym-key-file", key_file]
    assert run.main(argv + ["--run-id", "night1"]) == 0  # created the key (read back) and its marker
    first = pseudonym.read_key(key_file)
    before = run.read_summary(out)
    blob = storage.Client.create_anonymous_client().bucket(BUCKET).blob("keys/site.key")
    real = finalise.finalise

    def another_run_replaces_the_key(*a, **k):
        blob.upload_from_string(secrets.token_hex(32) + "\n")
        return real(*a, **k)

    monkeypatch.setattr(finalise, "finalise", another_run_replaces_the_key)
    capsys.readouterr()
    assert run.main(argv + ["--run-id", "night2"]) == 2
    err = capsys.readouterr().err
    assert "no longer holds the key this run used" in err and "were not published" in err
    assert first not in err and "MRN123456" not in err
    assert run.read_summary(out) == before  # night1's result stands
    names = [b.name for b in storage.Client.create_anonymous_client().bucket(BUCKET).list_blobs(prefix="results/keyrace/")]
    assert not [n for n in names if "/_staging/" in n or "night2" in n]

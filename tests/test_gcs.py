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

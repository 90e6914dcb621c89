"""gs:// input, model and output against a real GCS-API server on loopback.

gcp-storage-emulator serves the JSON API; google-cloud-storage (used by
Beam's GcsIO) talks to it through STORAGE_EMULATOR_HOST. No client mocks.
"""
import os

import pyarrow.fs
import pyarrow.parquet as pq
from beam_pipeline import run
from tests import corpus, tiny_model
from tests.conftest import BUCKET, upload as _upload


def test_gs_input_model_and_output(gcs, tmp_path):
    inputs, expected = corpus.build(tmp_path)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    _upload(inputs, "archives")
    _upload(model_dir, "models/tiny/1")
    out = f"gs://{BUCKET}/results/run1"
    run.run(["--input", f"gs://{BUCKET}/archives/*.zip", "--input", f"gs://{BUCKET}/archives/*.tar*",
             "--keep-paths", "--output", out, "--model", f"gs://{BUCKET}/models/tiny/1", "--run-id", "gcs-run"])

    fs = pyarrow.fs.GcsFileSystem(anonymous=True, endpoint_override=f"127.0.0.1:{gcs.port}", scheme="http")
    files = [f.path for f in fs.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/results/run1"))
             if f.path.rsplit("/", 1)[-1].startswith("images-")]
    assert files
    rows = pq.read_table(files, filesystem=fs).to_pylist()
    want = {k: v for k, v in expected.items()
            if os.path.basename(k[0]).startswith("study_")}
    got = {(r["source_uri"].replace(f"gs://{BUCKET}/archives", inputs), r["member_path"], r["frame_index"]):
           (r["status"], r["error_code"]) for r in rows}
    assert got == want
    assert run.read_summary(out)["rows"] == len(want)

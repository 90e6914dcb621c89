"""The storage server drops out mid-run (while members are being read) and
comes back 3 s later: the GCS client's retries carry the job through and
the output equals a clean run. Uses its own on-disk emulator so it can be
stopped and restarted on the same port without losing objects.
"""
import threading
import time
import zipfile

import pyarrow.fs
import pyarrow.parquet as pq

from beam_pipeline import archives, run
from tests import synth, tiny_model
from tests.conftest import BUCKET, upload


def test_storage_outage_mid_run_is_retried(gcs, tmp_path, monkeypatch):
    from gcp_storage_emulator.server import create_server
    # Re-point the session emulator's data to disk: stop it and start an on-disk one on the same port.
    data_dir = str(tmp_path / "gcs-data")
    inputs = tmp_path / "in"
    inputs.mkdir()
    with zipfile.ZipFile(inputs / "a.zip", "w") as zf:
        for i in range(10):
            zf.writestr(f"m{i}.png", synth.encode(synth.brain_slice(i, 32)))
    server = create_server("127.0.0.1", gcs.port, in_memory=False, default_bucket=BUCKET, data_dir=data_dir)
    gcs.stop()
    server.start()
    try:
        upload(str(inputs), "outage/in")
        upload(tiny_model.write_tiny_artifact(tmp_path), "outage/model")
        events = []
        real_open = archives._open

        def open_during_outage(uri):
            if not events:  # first member read of the run: take the server down for 3 s
                events.append(time.time())
                server.stop()

                def restart():
                    time.sleep(3)
                    revived = create_server("127.0.0.1", gcs.port, in_memory=False,
                                            default_bucket=BUCKET, data_dir=data_dir)
                    revived.start()
                    events.append(revived)
                threading.Thread(target=restart, daemon=True).start()
            return real_open(uri)
        monkeypatch.setattr(archives, "_open", open_during_outage)
        out = f"gs://{BUCKET}/outage/out"
        run.run(["--input", f"gs://{BUCKET}/outage/in/*.zip", "--keep-paths", "--output", out,
                 "--model", f"gs://{BUCKET}/outage/model"])
        assert len(events) == 2, "the outage happened and the server came back"
        fs = pyarrow.fs.GcsFileSystem(anonymous=True, endpoint_override=f"127.0.0.1:{gcs.port}", scheme="http")
        files = [f.path for f in fs.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/outage/out/results"))
                 if f.path.rsplit("/", 1)[-1].startswith("images-")]
        rows = pq.read_table(files, filesystem=fs).to_pylist()
        assert sorted(r["member_path"] for r in rows) == [f"m{i}.png" for i in range(10)]
        assert {r["status"] for r in rows} == {"ok"}
    finally:
        for e in events[1:]:
            e.stop()
        gcs.restart()

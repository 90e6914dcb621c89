"""A DICOMweb server that misbehaves: slow, oversized or flaky instances cost bounded time and memory."""
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom
import pytest

from beam_pipeline import dicomweb, run, sample_data
from tests import rows as rows_mod
from tests import tiny_model

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
BOUNDARY = "b0undary"


def _instance(n):
    ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(sample_data.synthetic_slice(n, 32), 0, STUDY, SERIES,
                                                            n + 1)))
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return ds.SOPInstanceUID, buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    instances = {}  # sop -> (behaviour, Part 10 bytes)
    hits = {}

    def log_message(self, *args):
        pass

    def _json(self, items):
        body = json.dumps(items).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0].rstrip("/")
        parts = path.split("/")
        if path.endswith("/studies"):
            return self._json([{"0020000D": {"vr": "UI", "Value": [STUDY]}}])
        if path.endswith("/series"):
            return self._json([{"0020000E": {"vr": "UI", "Value": [SERIES]}, "00080060": {"vr": "CS", "Value": ["MR"]}}])
        if path.endswith("/instances"):
            return self._json([{"00080018": {"vr": "UI", "Value": [sop]}} for sop in self.instances])
        sop = parts[-1]
        behaviour, data = self.instances[sop]
        self.hits[sop] = self.hits.get(sop, 0) + 1
        if behaviour == "flaky" and self.hits[sop] == 1:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
                + f"\r\n--{BOUNDARY}--\r\n".encode())
        if behaviour == "huge":
            body = body + b"\0" * (8 << 20)  # the server claims an 8 MiB instance
        self.send_response(200)
        self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        if behaviour != "huge":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if behaviour == "slow":  # a byte every 0.3 s: each read returns in time, the whole never does
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.3)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture()
def hostile():
    _Handler.instances, _Handler.hits = {}, {}
    for n, behaviour in enumerate(("ok", "slow", "huge", "flaky")):
        sop, data = _instance(n)
        _Handler.instances[sop] = (behaviour, data)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", {b: s for s, (b, _) in _Handler.instances.items()}
    server.shutdown()


def test_slow_huge_and_flaky_instances_are_bounded(hostile, tmp_path, monkeypatch):
    host, by_behaviour = hostile
    monkeypatch.setattr(dicomweb, "RETRIEVE_DEADLINE_S", 3.0)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out = tmp_path / "out"
    started = time.monotonic()
    code = run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--model", model_dir,
                     "--keep-paths", "--max-member-bytes", str(1 << 20), "--max-error-fraction", "1"])
    assert code == 0 and time.monotonic() - started < 90
    rows = {r["sop_instance_uid"] or r["member_path"].rsplit("/", 1)[-1]: r for r in rows_mod.images(out)}
    assert rows[by_behaviour["ok"]]["status"] == "ok"
    assert rows[by_behaviour["flaky"]]["status"] == "ok" and _Handler.hits[by_behaviour["flaky"]] == 2
    assert rows[by_behaviour["slow"]]["error_code"] == "dicomweb_timeout"
    assert rows[by_behaviour["huge"]]["error_code"] == "member_too_large"


def test_a_misspelt_study_filter_is_refused_before_any_work(tmp_path, capsys):
    """A server ignores a key it does not know and returns every study: 'StudyDat=' would score the whole PACS."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    code = run.main(["--input", "dicomweb://127.0.0.1:9/dicom-web?StudyDat=20261201", "--output", str(tmp_path / "o"),
                     "--model", model_dir])
    assert code == 2 and "unknown DICOMweb study filter(s) ['StudyDat']" in capsys.readouterr().err
    dicomweb.check_filters("dicomweb://pacs/dicom-web?StudyDate=20261201-20261202&Modality=MR")  # known keys pass

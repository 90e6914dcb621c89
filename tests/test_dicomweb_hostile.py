"""A DICOMweb server that misbehaves: slow, oversized or flaky instances cost bounded time and memory."""
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apache_beam as beam
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
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # axial: write-back can orient an overlay
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return ds.SOPInstanceUID, buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    instances = {}  # sop -> (behaviour, Part 10 bytes)
    hits = {}
    search = "ok"  # how the study search answers: ok / no-paging / drip / gzip / empty-study
    metadata = "none"  # series metadata for write-back: none (404) / ok
    store = "none"  # how a STOW-RS store answers: none (501, no such method) / refuse-sr / refuse-sc (HTTP 202)
    stored = []
    series = "none"  # how a series retrieval answers: none (404) / first (one part, then the end) / drip
    series_hits = 0
    modality = "MR"  # of the one series every study holds

    @classmethod
    def reset(cls, behaviours=()):
        """Every answer back to its default, one instance per behaviour. All of the state lives on this
        class, which test_dicomweb_tls shares: a series left dribbling by one test made a later test
        in the same process wait out the real series deadline (two minutes at the end of the suite)."""
        cls.instances, cls.hits, cls.search, cls.series, cls.series_hits = {}, {}, "ok", "none", 0
        cls.modality, cls.metadata, cls.store, cls.stored = "MR", "none", "none", []
        for n, behaviour in enumerate(behaviours):
            sop, data = _instance(n)
            cls.instances[sop] = (behaviour, data)

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
            return self._search()
        if path.endswith("/series") and self.search == "empty-study" and parts[-2] != STUDY:
            return self._json([])
        if path.endswith("/series"):
            return self._json([{"0020000E": {"vr": "UI", "Value": [SERIES]}, "00080060": {"vr": "CS", "Value": [self.modality]}}])
        if path.endswith("/instances"):
            return self._json([{"00080018": {"vr": "UI", "Value": [sop]}} for sop in self.instances])
        if parts[-1] == "metadata" and self.metadata == "ok":
            return self._json([pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).to_json_dict()
                               for _, data in self.instances.values()])
        if parts[-1] == "metadata":  # write-back asks for the series' metadata: this server has none to give
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts[-2] == "series":
            return self._series()
        sop = parts[-1]
        behaviour, data = self.instances[sop]
        self.hits[sop] = self.hits.get(sop, 0) + 1
        if behaviour == "redirect":  # to another host: its data would be trusted as this PACS's
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:9/dicom-web/instances/{sop}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if behaviour == "silent":  # takes the request and never answers
            time.sleep(2)
            return
        if behaviour == "dropped" and self.hits[sop] == 1:  # the connection closes without an answer
            self.close_connection = True
            return
        if behaviour == "down" or (behaviour == "flaky" and self.hits[sop] == 1):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
                + f"\r\n--{BOUNDARY}--\r\n".encode())
        if behaviour == "huge":
            body = body + b"\0" * (8 << 20)  # the server claims an 8 MiB instance
        if behaviour == "gzip":  # 1 KB on the wire, 64 MiB once inflated
            import gzip
            body = gzip.compress(body + b"\0" * (64 << 20))
        self.send_response(200)
        self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        if behaviour == "gzip":
            self.send_header("Content-Encoding", "gzip")
        if behaviour != "huge":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._send(body, drip=behaviour == "slow")

    def do_POST(self):  # noqa: N802 (http.server's name): STOW-RS, answered 202 with a Failed SOP Sequence
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.store == "none":
            self.send_response(501)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        boundary = self.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"').encode()
        kept, failed = [], []
        for part in body.split(b"--" + boundary)[1:-1]:
            ds = pydicom.dcmread(io.BytesIO(part.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n")))
            refuse = (self.store == "refuse-sr") == (ds.Modality == "SR")
            ref = {"00081150": {"vr": "UI", "Value": [ds.SOPClassUID]},
                   "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]}}
            if refuse:
                failed.append({**ref, "00081197": {"vr": "US", "Value": [0xC000]}})
            else:
                kept.append(ref)
                type(self).stored.append(ds.Modality)
        answer = json.dumps({"00081199": {"vr": "SQ", "Value": kept}, "00081198": {"vr": "SQ", "Value": failed}}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self._send(answer, drip=self.store == "drip")

    def _send(self, body, drip):
        """The body at once, or a byte every 0.3 s (each read returns in time, the whole never does)."""
        try:
            if drip:
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.3)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _series(self):
        type(self).series_hits += 1
        if self.series == "none":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first = next(data for behaviour, data in self.instances.values() if behaviour == "ok")
        body = (f"preamble\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + first
                + f"\r\n--{BOUNDARY}--\r\n".encode())
        self.send_response(200)
        self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        self.end_headers()
        self._send(body, drip=self.series == "drip")  # a dribbled answer: the series deadline must cut it

    def _search(self):
        study = {"0020000D": {"vr": "UI", "Value": [STUDY]}}
        if self.search == "no-paging":  # a full page whatever the offset: paging would never end
            return self._json([{"0020000D": {"vr": "UI", "Value": [f"{STUDY}.{n}"]}} for n in range(dicomweb.PAGE)])
        if self.search == "empty-study":  # listed, but no series behind it (yet)
            return self._json([study, {"0020000D": {"vr": "UI", "Value": [STUDY + ".9"]}}])
        if self.search == "none":
            return self._json([])
        if self.search == "redirect":
            self.send_response(301)
            self.send_header("Location", "http://127.0.0.2:9/dicom-web/studies")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.search not in ("drip", "gzip"):
            return self._json([study])
        body = json.dumps([study] * 50).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        if self.search == "gzip":
            import gzip
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(0, len(body), 1 if self.search == "drip" else len(body)):
                self.wfile.write(body[i:i + (1 if self.search == "drip" else len(body))])
                self.wfile.flush()
                if self.search == "drip":
                    time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture()
def hostile():
    _Handler.reset(("ok", "slow", "huge", "flaky"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", {b: s for s, (b, _) in _Handler.instances.items()}
    server.shutdown()
    _Handler.reset()


def test_a_connection_closed_without_an_answer_is_asked_again(hostile, tmp_path):
    """A PACS that closes a connection before answering (a kept-alive connection it dropped between requests):
    the request is sent again, as after a 503, and the instance is scored, not left to the next night."""
    host, _ = hostile
    _Handler.reset(("ok", "dropped"))
    dropped = next(sop for sop, (b, _) in _Handler.instances.items() if b == "dropped")
    out = tmp_path / "out"
    code = run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out),
                     "--model", tiny_model.write_tiny_artifact(tmp_path), "--keep-paths"])
    rows = {r["sop_instance_uid"]: r for r in rows_mod.images(out)}
    assert code == 0 and rows[dropped]["status"] == "ok" and _Handler.hits[dropped] == 2


def test_slow_huge_and_flaky_instances_are_bounded(hostile, tmp_path, monkeypatch):
    import resource

    from tests import hostile_inputs
    host, by_behaviour = hostile
    bomb = pydicom.dcmread(io.BytesIO(hostile_inputs._huge_deflated_dicom()))
    bomb.StudyInstanceUID, bomb.SeriesInstanceUID = STUDY, SERIES
    buf = io.BytesIO()
    bomb.save_as(buf, enforce_file_format=True)
    _Handler.instances[bomb.SOPInstanceUID] = ("ok", buf.getvalue())  # ~300 KB, 288 MB once inflated
    by_behaviour["deflated-bomb"] = bomb.SOPInstanceUID
    for n, behaviour in ((10, "redirect"), (11, "gzip")):
        sop, data = _instance(n)
        _Handler.instances[sop] = (behaviour, data)
        by_behaviour[behaviour] = sop
    monkeypatch.setattr(dicomweb, "RETRIEVE_DEADLINE_S", 3.0)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out = tmp_path / "out"
    started = time.monotonic()
    code = run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--model", model_dir,
                     "--keep-paths", "--max-member-bytes", str(1 << 20), "--max-error-fraction", "1"])
    assert code == 0 and time.monotonic() - started < 90
    assert _Handler.series_hits == 1  # the series was asked for first; the 404 sent every instance one by one
    rows = {r["sop_instance_uid"] or r["member_path"].rsplit("/", 1)[-1]: r for r in rows_mod.images(out)}
    assert rows[by_behaviour["ok"]]["status"] == "ok"
    assert rows[by_behaviour["flaky"]]["status"] == "ok" and _Handler.hits[by_behaviour["flaky"]] == 2
    assert rows[by_behaviour["slow"]]["error_code"] == "dicomweb_timeout"
    assert rows[by_behaviour["huge"]]["error_code"] == "member_too_large"
    # the inflate guard that holds for files holds for DICOMweb bodies: raw Part 10 bytes, same decoder
    assert rows[by_behaviour["deflated-bomb"]]["error_code"] == "suspicious_compression_ratio"
    assert rows[by_behaviour["redirect"]]["status"] == "error" and _Handler.hits[by_behaviour["redirect"]] == 1
    assert "redirect" in rows[by_behaviour["redirect"]]["error_message"]  # refused at once, not retried
    assert rows[by_behaviour["gzip"]]["status"] == "error" and "content-encoded" in rows[by_behaviour["gzip"]][
        "error_message"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 2.5 * 2 ** 20  # KiB: under bar 11's 2.5 GB


def test_a_misspelt_study_filter_is_refused_before_any_work(tmp_path, capsys):
    """A server ignores a key it does not know and returns every study: 'StudyDat=' would score the whole PACS."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    code = run.main(["--input", "dicomweb://127.0.0.1:9/dicom-web?StudyDat=20261201", "--output", str(tmp_path / "o"),
                     "--model", model_dir])
    assert code == 2 and "unknown DICOMweb study filter(s) ['StudyDat']" in capsys.readouterr().err
    dicomweb.check_filters("dicomweb://pacs/dicom-web?StudyDate=20261201-20261202&Modality=MR")  # known keys pass


@pytest.mark.parametrize("search, message", [
    ("no-paging", "ignores the offset parameter"),
    ("drip", "not received within the deadline"),
    ("gzip", "content-encoded QIDO-RS answer; refused"),
    ("redirect", "redirects are refused"),
])
def test_a_study_search_that_never_ends_or_floods_is_stopped(hostile, tmp_path, monkeypatch, capsys, search, message):
    """A server that ignores `offset`, dribbles its QIDO answer or gzips it: stopped in bounded time, with
    a job-level error at the launch check (drip, gzip) or a coded row (paging found out during the job)."""
    host, _ = hostile
    _Handler.search = search
    monkeypatch.setattr(dicomweb, "PAGE", 3)
    monkeypatch.setattr(dicomweb, "QIDO_DEADLINE_S", 2.0)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out = tmp_path / "out"
    started = time.monotonic()
    code = run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--model", model_dir,
                     "--max-error-fraction", "1"])
    assert time.monotonic() - started < 60
    if search != "no-paging":
        assert code == 2 and message in capsys.readouterr().err
        return
    rows = rows_mod.images(out)  # the server ignores offset for instance listings too: every listing stops
    assert {r["error_code"] for r in rows} == {"input_unreadable"} and code == 3
    assert sum(message in r["error_message"] for r in rows) == len(rows) == 1 + 3  # the search + 3 studies


def test_the_manifest_records_only_studies_that_were_fully_tried(hostile, tmp_path, monkeypatch):
    """An instance the server keeps failing (HTTP 500) leaves its study pending: not in the manifest, scored
    again next night; a study listed without series gets a row and stays pending too."""
    host, by_behaviour = hostile
    _Handler.search = "empty-study"
    for sop, (behaviour, data) in list(_Handler.instances.items()):
        if behaviour in ("slow", "huge"):
            del _Handler.instances[sop]
        elif behaviour == "flaky":
            _Handler.instances[sop] = ("down", data)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out, mf = tmp_path / "out", tmp_path / "manifest.json"
    argv = ["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--model", model_dir,
            "--manifest", str(mf), "--max-error-fraction", "1"]
    run.main(argv + ["--run-id", "night1"])
    codes = sorted(str(r["error_code"]) for r in rows_mod.images(out))
    assert codes == ["None", "member_read_error", "study_empty"]
    assert json.loads(mf.read_text())["inputs"] == {}  # neither study is done
    down = by_behaviour["flaky"]
    _Handler.instances[down] = ("ok", _Handler.instances[down][1])  # the server recovers
    run.main(argv + ["--run-id", "night2"])
    night2 = [r for r in rows_mod.images(out) if r["run_id"] == "night2"]
    assert sorted(str(r["status"]) for r in night2) == ["error", "ok", "ok"]  # both instances again + the empty study
    entries = json.loads(mf.read_text())["inputs"]
    assert list(entries) == [f"dicomweb://{host}/dicom-web#study={STUDY}"]
    assert entries[next(iter(entries))]["instances"] == 2
    run.main(argv + ["--run-id", "night3"])
    assert [r["error_code"] for r in rows_mod.images(out) if r["run_id"] == "night3"] == ["study_empty"]


def test_an_answer_that_is_not_the_instance_asked_for_is_never_scored_as_it(hostile, tmp_path):
    """A proxy or cache that mixes answers up (another patient's instance, or a picture that is not DICOM,
    for the one asked for) must not give that image a row, a study-table entry or a report in the study
    that was asked for: a coded error row with the UIDs asked for, and the study stays pending."""
    host, by_behaviour = hostile
    for sop, (behaviour, _) in list(_Handler.instances.items()):
        if behaviour != "ok":
            del _Handler.instances[sop]
    other_study = "1.2.826.0.1.3680043.8.498.77"
    other = sample_data.dicom_bytes(sample_data.synthetic_slice(5, 32), 1, other_study, SERIES + ".77", 1)
    png = io.BytesIO()
    from PIL import Image
    Image.fromarray(sample_data.synthetic_slice(6, 32)).save(png, format="PNG")
    swapped, not_dicom = f"{SERIES}.1001", f"{SERIES}.1002"
    _Handler.instances[swapped] = ("ok", other)
    _Handler.instances[not_dicom] = ("ok", png.getvalue())
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out, mf = tmp_path / "out", tmp_path / "manifest.json"
    run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--model", model_dir,
              "--manifest", str(mf), "--max-error-fraction", "1"])
    rows = {r["sop_instance_uid"]: r for r in rows_mod.images(out)}
    assert rows[by_behaviour["ok"]]["status"] == "ok"
    for sop, wrong in ((swapped, "StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID"),
                       (not_dicom, "StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID")):
        r = rows[sop]
        assert (r["status"], r["error_code"]) == ("error", "dicomweb_uid_mismatch")
        assert (r["study_instance_uid"], r["series_instance_uid"]) == (STUDY, SERIES)
        assert f"({wrong} not the one asked for)" in r["error_message"] and r["tumor_probability"] is None
    # the other study's UID as a whole UID: a generated SOP instance UID may begin with its digits (CI once drew
    # ...498.7739..., which a plain substring test took for a leak)
    leak = re.compile(re.escape(other_study) + r"(?![0-9])")
    assert len(rows) == 3 and not leak.search(json.dumps([str(v) for r in rows.values() for v in r.values()]))
    assert json.loads(mf.read_text())["inputs"] == {}  # tried again next night


def test_a_study_without_image_series_gets_one_skipped_row_and_is_remembered(hostile, tmp_path):
    """A study holding only non-image series (an SR, a key-object note: this job's own write-back looks
    like that) is not an error and is not fetched; the manifest records it, so it costs nothing again."""
    host, _ = hostile
    _Handler.modality = "SR"
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out, mf = tmp_path / "out", tmp_path / "manifest.json"
    run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--model", model_dir,
              "--manifest", str(mf), "--run-id", "night1"])
    rows = rows_mod.images(out)
    assert [(r["status"], r["error_code"]) for r in rows] == [("skipped", "no_image_series")]
    assert "1 series, none of them images" in rows[0]["error_message"] and not _Handler.hits
    assert list(json.loads(mf.read_text())["inputs"]) == [f"dicomweb://{host}/dicom-web#study={STUDY}"]


def test_a_query_matching_nothing_says_so_and_exits_3(hostile, tmp_path, capsys):
    """`{yesterday}`/`{today}` resolve at launch; a night whose query finds no study is not a silent success."""
    import datetime
    host, _ = hostile
    _Handler.search = "none"
    now = datetime.datetime(2026, 3, 1, 2, 0, tzinfo=datetime.timezone.utc)
    assert dicomweb.resolve_dates("dicomweb://h/dicom-web?StudyDate={yesterday}-{today}", now) == \
        "dicomweb://h/dicom-web?StudyDate=20260228-20260301"
    code = run.main(["--input", f"dicomweb://{host}/dicom-web?StudyDate={{yesterday}}-{{today}}",
                     "--output", str(tmp_path / "out"), "--model", tiny_model.write_tiny_artifact(tmp_path)])
    out = capsys.readouterr().out
    today = datetime.datetime.now(datetime.timezone.utc)
    assert code == 3 and "nothing was scored" in out
    assert f"StudyDate={(today - datetime.timedelta(days=1)):%Y%m%d}-{today:%Y%m%d}" in out


def test_a_night_with_nothing_new_leaves_the_result_byte_identical(hostile, tmp_path, capsys):
    """Every study unchanged since the manifest: no new table, no re-rendered report, no lost drift verdict."""
    import hashlib
    import os
    host, _ = hostile
    for sop, (_behaviour, data) in list(_Handler.instances.items()):
        _Handler.instances[sop] = ("ok", data)
    out, mf = tmp_path / "out", tmp_path / "manifest.json"
    argv = ["--input", f"dicomweb://{host}/dicom-web?StudyDate={{yesterday}}-{{today}}", "--output", str(out),
            "--manifest", str(mf), "--model", tiny_model.write_tiny_artifact(tmp_path)]

    def snapshot():
        root = out / "results"
        return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), "rb").read())
                .hexdigest() for d, _, fs in os.walk(root) for f in fs}

    assert run.main(argv + ["--run-id", "night1"]) == 0
    (query,) = json.loads((out / "results" / "_SUMMARY.json").read_text())["pacs_queries"]
    assert re.fullmatch(rf"dicomweb://{host}/dicom-web\?StudyDate=\d{{8}}-\d{{8}}", query)  # resolved at launch
    before = snapshot()
    capsys.readouterr()
    assert run.main(argv + ["--run-id", "night2"]) == 0
    assert "nothing new since the manifest; the result is unchanged" in capsys.readouterr().out
    assert snapshot() == before
    assert not os.listdir(out / "_staging")


@pytest.mark.parametrize("series", ["first", "drip"])
def test_a_series_answer_that_is_cut_or_slow_loses_no_instance(hostile, tmp_path, monkeypatch, series):
    """The job asks for the whole series first; whatever that answer does not deliver (an answer holding
    one instance of four, one that dribbles past its deadline) is fetched instance by instance: every
    instance gets the row it gets without series retrieval, within a bounded time. (A server that
    refuses series retrieval, 404, is the hostile server's default: the test above.)"""
    host, by_behaviour = hostile
    _Handler.series = series
    monkeypatch.setattr(dicomweb, "RETRIEVE_DEADLINE_S", 1.5)  # the slow instance sends 5 of its bytes
    monkeypatch.setattr(dicomweb, "SERIES_SECONDS_PER_INSTANCE", 0.25)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out = tmp_path / "out"
    started = time.monotonic()
    assert run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--model", model_dir,
                     "--keep-paths", "--max-member-bytes", str(1 << 20), "--max-error-fraction", "1"]) == 0
    assert time.monotonic() - started < 90 and _Handler.series_hits == 1
    rows = {r["sop_instance_uid"] or r["member_path"].rsplit("/", 1)[-1]: r for r in rows_mod.images(out)}
    assert len(rows) == 4
    assert rows[by_behaviour["ok"]]["status"] == "ok"
    # the one instance the "first" answer delivered is never asked for again
    assert _Handler.hits.get(by_behaviour["ok"], 0) == (0 if series == "first" else 1)
    assert rows[by_behaviour["flaky"]]["status"] == "ok"
    assert rows[by_behaviour["slow"]]["error_code"] == "dicomweb_timeout"
    assert rows[by_behaviour["huge"]]["error_code"] == "member_too_large"


class _Raw:
    """A response body read in small pieces, as a socket gives it."""

    def __init__(self, data, piece=7):
        self._data, self._piece = memoryview(data), piece

    def read1(self, _n):
        out, self._data = bytes(self._data[:self._piece]), self._data[self._piece:]
        return out


def test_the_series_reader_streams_parts_and_keeps_only_the_listed_instances():
    (a, da), (b, db), (c, dc) = _instance(0), _instance(1), _instance(2)
    part = (lambda data: f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n")
    body = b"preamble\r\n" + part(da) + part(b"not dicom at all") + part(db) + part(dc) + f"--{BOUNDARY}--\r\n".encode()
    resp = type("Resp", (), {"raw": _Raw(body)})()
    got = list(dicomweb._parts(resp, BOUNDARY.encode(), {a, c, "9.9"}, 1 << 20, time.monotonic() + 30))
    assert got == [(a, da), (c, dc)]  # b was not listed; the unreadable part is skipped
    resp = type("Resp", (), {"raw": _Raw(body)})()
    with pytest.raises(dicomweb.RetrieveError, match="larger than the limit"):
        list(dicomweb._parts(resp, BOUNDARY.encode(), {a, b, c}, 1000, time.monotonic() + 30))
    resp = type("Resp", (), {"raw": _Raw(body)})()
    with pytest.raises(dicomweb.RetrieveError, match="deadline"):
        list(dicomweb._parts(resp, BOUNDARY.encode(), {a, b, c}, 1 << 20, time.monotonic() - 1))


def test_pacs_chunks_hold_whole_series_up_to_four_chunks_worth():
    from beam_pipeline import archives
    from beam_pipeline.stages import expand
    lister = expand._ListStudy(archives.Limits(chunk_size=2))
    found = [("s1", "a")] + [("s2", f"b{i}") for i in range(8)] + [("s3", f"c{i}") for i in range(9)]
    chunks = list(lister._series_chunks("src", "http://pacs", "st", found))
    shape = [(c.kind, len(c.refs), {r.locator[2] for r in c.refs}) for c in chunks]
    assert shape == [("dicomweb", 1, {"s1"}),  # one instance: nothing to gain from a series request
                     ("dicomweb-series", 8, {"s2"}),  # 4 chunks' worth: one series request
                     *[("dicomweb", n, {"s3"}) for n in (2, 2, 2, 2, 1)]]  # larger: one by one, never mixed


class _Refusing(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.parametrize("pacs", ["silent", "refusing"])
def test_write_back_to_a_pacs_that_stops_answering_ends_soon(pacs, monkeypatch):
    """A PACS that accepts connections and never answers must not hold the night for hours (each series'
    timeouts, up to two minutes a store, times hundreds of series): after eight unanswered requests in a
    row the remaining series are not requested. A PACS that answers, even to refuse, gets every one tried."""
    import socket

    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    from beam_pipeline import schema, write_back
    monkeypatch.setattr(dicomweb, "_READ_TIMEOUT_S", 0.3)
    accepted, hits = [], []
    if pacs == "silent":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)

        def hold():
            while True:
                try:
                    accepted.append(listener.accept()[0])  # held open, never answered
                except OSError:
                    return
        threading.Thread(target=hold, daemon=True).start()
        port, stop = listener.getsockname()[1], listener.close
    else:
        class Counting(_Refusing):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                super().do_GET()
        server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port, stop = server.server_address[1], server.shutdown
    host = f"127.0.0.1:{port}"
    n_series = 12
    rows = [schema.empty_row(status=schema.STATUS_OK, study_instance_uid=STUDY, series_instance_uid=f"{SERIES}.{n}",
                             sop_instance_uid=f"{SERIES}.{n}.1", source_uri=f"dicomweb://{host}/dicom-web/studies/{STUDY}",
                             tumor_probability=0.9, predicted_label=schema.LABEL_TUMOR) for n in range(n_series)]
    model_info = {"model_name": "m", "model_version": "1", "model_sha256": "0" * 64}

    def check(summaries):
        (summary,) = summaries
        assert summary["series_failed"] == n_series and summary["series_stored"] == 0
        assert summary["unstored_studies"] == [STUDY]

    try:
        with TestPipeline() as p:
            out = (p | beam.Create(rows) | write_back.WriteBack(f"dicomweb://{host}/dicom-web", model_info, 0.5))
            assert_that(out, check)
    finally:
        stop()
    if pacs == "silent":
        assert 8 <= len(accepted) < n_series  # a metadata request for each of eight series (and any in flight), then none
    else:
        assert len([h for h in hits if h.endswith("/metadata")]) == n_series


def test_a_night_whose_reports_could_not_be_stored_exits_5_and_says_so(hostile, tmp_path, capsys):
    """--write-back puts results where radiologists read; a series whose report the PACS did not take is
    invisible there, so the night is not a success: exit 5, a console line, a banner in the report, the
    scores still in the tables, and its study left out of --manifest so that the next night stores it."""
    host, _ = hostile
    for sop, (behaviour, _) in list(_Handler.instances.items()):
        if behaviour != "ok":
            del _Handler.instances[sop]
    out, mf = tmp_path / "out", tmp_path / "manifest.json"
    code = run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--write-back",
                     "--manifest", str(mf), "--model", tiny_model.write_tiny_artifact(tmp_path)])
    printed = capsys.readouterr().out
    assert code == run.EXIT_WRITE_BACK
    assert "Write-back: 0 series' reports stored in the PACS (0 overlays); 1 could not be stored (first: " \
           "RetrieveError: HTTP 404 for the series metadata)" in printed
    assert "Exit 5: 1 series' reports could not be stored in the PACS (--write-back)" in printed
    report = (out / "results" / "report.html").read_text()
    assert 'id="write-back" class="drift-warning"' in report and "will not see them in the viewer" in report
    assert [r["status"] for r in rows_mod.images(out)] == ["ok"]
    assert json.loads(mf.read_text())["inputs"] == {}  # its report is not in the PACS: tried again next night
    assert "unstored_studies" not in json.loads((out / "results" / "_SUMMARY.json").read_text())["write_back"]


def test_a_pacs_that_falls_silent_costs_a_few_timeouts_not_one_per_instance(hostile, tmp_path, monkeypatch):
    """Every request is bounded, but a PACS that stops answering in the middle of a night would still cost
    each remaining instance its timeout (10,000 instances at 30 s is a day): after a few unanswered requests
    in a row the rest are not requested; each gets its coded row and the study stays pending. Every instance
    is silent: an answered one fetched among them would reset the count ("in a row"), and where the scheduler
    puts it would move the bound (a CI run asked 15: 3 misses, the answer, then 8 + 4)."""
    host, by_behaviour = hostile
    _Handler.instances.clear()
    silent = []
    for n in range(20, 50):
        sop, data = _instance(n)
        _Handler.instances[sop] = ("silent", data)
        silent.append(sop)
    monkeypatch.setattr(dicomweb, "_READ_TIMEOUT_S", 0.3)
    out, mf = tmp_path / "out", tmp_path / "manifest.json"
    run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--manifest", str(mf), "--keep-paths",
              "--max-error-fraction", "1", "--model", tiny_model.write_tiny_artifact(tmp_path)])
    rows = {r["sop_instance_uid"] or r["member_path"].rsplit("/", 1)[-1]: r for r in rows_mod.images(out)}
    assert len(rows) == 30 and all(rows[s]["error_code"] == "dicomweb_timeout" for s in silent), sorted((rows[s]["error_code"], rows[s]["error_message"]) for s in silent)[:3]
    asked = sum(_Handler.hits.get(s, 0) for s in silent)
    assert asked <= 8 + dicomweb.DEFAULT_MAX_PARALLEL  # eight in a row unanswered, and those already in flight
    assert sum("not requested: the PACS left the last" in rows[s]["error_message"] for s in silent) >= \
        len(silent) - asked
    assert json.loads(mf.read_text())["inputs"] == {}  # tried again next night


@pytest.mark.parametrize("refuses", ["refuse-sr", "refuse-sc"])
def test_a_store_the_pacs_answers_with_failed_instances_is_not_counted_as_stored(hostile, tmp_path, capsys, refuses):
    """A PACS that keeps some instances of a store and refuses others answers HTTP 202 with a Failed SOP
    Sequence (an SOP class it does not take: many refuse Secondary Captures or SRs). A refused report is
    a failed series (exit 5); a refused overlay leaves the report stored and is not counted as an overlay."""
    host, by_behaviour = hostile
    for sop, (behaviour, _) in list(_Handler.instances.items()):
        if behaviour != "ok":
            del _Handler.instances[sop]
    _Handler.metadata, _Handler.store = "ok", refuses
    out = tmp_path / "out"
    code = run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--write-back",
                     "--threshold", "0.000001", "--model", tiny_model.write_tiny_artifact(tmp_path)])
    back = json.loads((out / "results" / "_SUMMARY.json").read_text())["write_back"]
    if refuses == "refuse-sr":
        assert code == run.EXIT_WRITE_BACK and (back["series_stored"], back["series_failed"]) == (0, 1)
        assert back["errors"] == ["StoreRefused: the PACS did not store the report (STOW-RS failure reason C000H)"]
        assert _Handler.stored == ["OT"]  # the overlay went in; the report did not
    else:
        assert code == 0 and (back["series_stored"], back["overlays_stored"], back["overlays_refused"]) == (1, 0, 1)
        assert back["errors"] == ["1 overlay(s) not stored (STOW-RS failure reason ['C000H'])"]
        assert _Handler.stored == ["SR"]
        assert "the PACS kept 1 overlay(s) out" in capsys.readouterr().out  # said, and the banner is red
        assert 'id="write-back" class="drift-warning"' in (out / "results" / "report.html").read_text()


def test_a_store_answer_that_dribbles_in_ends_at_its_deadline(hostile, tmp_path, monkeypatch):
    """A PACS (or a proxy) that accepts a store and answers a byte every 0.3 s: each read returns in time, the
    whole answer never does. The store fails at its deadline (the series counts as not stored, exit 5) instead of
    holding the night for the answer's length times the read timeout."""
    host, by_behaviour = hostile
    for sop, (behaviour, _) in list(_Handler.instances.items()):
        if behaviour != "ok":
            del _Handler.instances[sop]
    _Handler.metadata, _Handler.store = "ok", "drip"
    monkeypatch.setattr(dicomweb, "ANSWER_DEADLINE_S", 1.0)
    out = tmp_path / "out"
    start = time.monotonic()
    code = run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", str(out), "--write-back",
                     "--threshold", "0.000001", "--model", tiny_model.write_tiny_artifact(tmp_path)])
    back = json.loads((out / "results" / "_SUMMARY.json").read_text())["write_back"]
    assert code == run.EXIT_WRITE_BACK and (back["series_stored"], back["series_failed"]) == (0, 1)
    assert "did not arrive within 1 s" in back["errors"][0]
    assert time.monotonic() - start < 60  # the answer alone would take minutes (its length x 0.3 s, per attempt)


def test_the_nights_write_back_line_quotes_a_report_that_was_not_stored_before_a_refused_overlay():
    """A night where one series' overlay was kept out and, later, another series' report could not be stored:
    the console line and the report banner quote the report's error (what radiologists will miss), whatever
    order the series finished in."""
    from beam_pipeline import write_back
    overlay = write_back._tally(series_stored=1, overlays_refused=1, error="1 overlay(s) not stored (C000H)")
    report = write_back._tally(series_failed=1, error="StoreRefused: the PACS did not store the report", unstored="1.2")
    night = write_back._merge([overlay, report])
    assert night["errors"] == ["StoreRefused: the PACS did not store the report", "1 overlay(s) not stored (C000H)"]
    assert "1 could not be stored (first: StoreRefused: the PACS did not store the report)" in write_back.in_words(night)
    assert write_back._merge([overlay] * 7)["errors"] == ["1 overlay(s) not stored (C000H)"] * 5


@pytest.mark.parametrize("dribbled_refusal", [False, True])
def test_a_login_renewed_in_the_credentials_file_mid_night_is_picked_up(tmp_path, dribbled_refusal):
    """A token expires during the night and a refresher rewrites --dicomweb-credentials: the next 401 makes the
    job read the file again and resend once, so no instance is lost; the old token is never resent. A 401
    whose body dribbles in (a byte every half second) is not read: the login is renewed at once."""
    import os
    _Handler.reset(("ok", "ok", "ok"))
    creds = tmp_path / "pacs.cred"
    creds.write_text("Bearer old-token\n")
    os.chmod(creds, 0o600)
    seen = []

    class Rotating(_Handler):
        token = "old-token"

        def do_GET(self):  # noqa: N802
            given = self.headers.get("Authorization")
            seen.append(given)
            if len(seen) == 3 and type(self).token == "old-token":  # the search is done: the token expires
                type(self).token = "new-token"
                creds.write_text("Bearer new-token\n")  # what a refresher does
            if given != f"Bearer {type(self).token}":
                self.send_response(401)
                self.send_header("Content-Length", "600" if dribbled_refusal else "0")
                self.end_headers()
                try:
                    for _ in range(600 if dribbled_refusal else 0):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.5)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Rotating)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        out = tmp_path / "out"
        code = run.main(["--input", f"dicomweb://127.0.0.1:{server.server_address[1]}/dicom-web", "--output", str(out),
                         "--dicomweb-credentials", str(creds), "--model", tiny_model.write_tiny_artifact(tmp_path)])
    finally:
        server.shutdown()
        _Handler.reset()
    assert time.monotonic() - started < 60  # the dribbled 401 alone would take 300 s to read
    assert code == 0 and [r["status"] for r in rows_mod.images(out)] == ["ok"] * 3
    # the launch check and the search with the old token; the third request refused, resent once with the new
    # one, and the old token never sent again
    assert seen[:3] == ["Bearer old-token"] * 3 and set(seen[3:]) == {"Bearer new-token"}


def test_a_request_that_waited_for_the_concurrency_limit_while_the_breaker_opened_is_not_sent():
    """The breaker is asked after the concurrency gate, not before: requests queued behind the limit when a
    PACS goes silent are refused, not sent (asked first, every queued one went out: 15 of a silent PACS)."""
    class _Session:
        asked = 0

        def get(self, *a, **k):
            _Session.asked += 1
            raise AssertionError("sent")

    gate = threading.BoundedSemaphore(1)
    gate.acquire()  # another request holds the only slot
    url = "http://pacs.invalid/dicom-web/studies/1/series/2/instances/3"
    outcome = []

    def ask():
        try:
            dicomweb._get(_Session(), url, {}, 1024, 5.0, "instance", lambda: gate)
        except dicomweb.RetrieveError as e:
            outcome.append(e.code)
    t = threading.Thread(target=ask)
    t.start()
    time.sleep(0.2)  # queued behind the gate
    for _ in range(dicomweb._Breaker.UNANSWERED_LIMIT):  # meanwhile the PACS left eight requests unanswered
        dicomweb.BREAKER._after("pacs.invalid", answered=False)
    gate.release()
    t.join(5)
    assert _Session.asked == 0 and outcome == ["dicomweb_timeout"]

"""Peak memory of the PACS path on oversized instances (issue 26: bar 11 is 2.5 GB per process).

A loopback DICOMweb server offers one study of one series; its instance is, per case:
  large-300mb    a real 300 MB instance (12,288 x 12,288 16-bit), Content-Length given
  chunked-2gib   a 2 GiB answer streamed without Content-Length (the server never says how large)
  gzip-1gib      a 1 GiB answer gzip-encoded to ~1 MB on the wire
Each case runs `brain-score` on `dicomweb://` in a fresh process (default --max-member-bytes, 512 MiB) and
reports that process's peak RSS (VmHWM), wall time and the row it wrote.

  .venv/bin/python bench/dicomweb_memory.py
"""
import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

BOUNDARY = "bench-boundary"
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"

_CHILD = r"""
import json, sys
sys.path.insert(0, %(repo)r)
from beam_pipeline import run
code = run.main(sys.argv[1:])
print(json.dumps({"exit": code, "peak_rss_mib": %(peak)s}))
"""


def _instance(rows_cols):
    import numpy as np
    import pydicom

    from beam_pipeline import sample_data
    small = sample_data.dicom_bytes(np.zeros((8, 8), np.uint16), 0, STUDY, SERIES, 1)
    ds = pydicom.dcmread(io.BytesIO(small))
    ds.Rows = ds.Columns = rows_cols
    ds.PixelData = bytes(rows_cols * rows_cols * 2)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds.SOPInstanceUID, buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    case, sop, body = "", "", b""

    def log_message(self, *args):
        pass

    def _json(self, items):
        data = json.dumps(items).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/studies"):
            return self._json([{"0020000D": {"vr": "UI", "Value": [STUDY]}}])
        if path.endswith("/series"):
            return self._json([{"0020000E": {"vr": "UI", "Value": [SERIES]}, "00080060": {"vr": "CS", "Value": ["MR"]}}])
        if path.endswith("/instances"):
            return self._json([{"00080018": {"vr": "UI", "Value": [self.sop]}}])
        if path.split("/")[-2] == "series":  # no series retrieval here: one request per instance
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        try:
            if self.case == "chunked-2gib":
                self.end_headers()
                self.wfile.write(head + self.body)
                block = bytes(1 << 20)
                for _ in range(2048):
                    self.wfile.write(block)
                self.wfile.write(tail)
            elif self.case == "gzip-1gib":
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(self.body)))
                self.end_headers()
                self.wfile.write(self.body)
            else:
                self.send_header("Content-Length", str(len(head) + len(self.body) + len(tail)))
                self.end_headers()
                self.wfile.write(head + self.body + tail)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _gzip_gib():
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as z:
        block = bytes(1 << 20)
        for _ in range(1024):
            z.write(block)
    return out.getvalue()


def run_case(case, model, work):
    sop, small = _instance(64)
    if case == "large-300mb":
        sop, body = _instance(12288)
    elif case == "gzip-1gib":
        body = _gzip_gib()
    else:
        body = small  # then 2 GiB of zeros streamed behind it
    _Handler.case, _Handler.sop, _Handler.body = case, sop, body
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = os.path.join(work, case)
    argv = ["--input", f"dicomweb://127.0.0.1:{server.server_address[1]}/dicom-web", "--output", out,
            "--model", model, "--max-error-fraction", "1", "--pseudonym-key-file", os.path.join(work, "key")]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD % {"repo": common.REPO, "peak": common.PEAK_RSS_MIB}, *argv],
                          capture_output=True, text=True, cwd=common.REPO)
    wall = time.perf_counter() - t0
    server.shutdown()
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    import glob

    import pyarrow.parquet as pq
    files = glob.glob(os.path.join(out, "results", "images-*.parquet"))
    table = pq.read_table(files, columns=["status", "error_code"]).to_pylist() if files else []
    wire = len(body) + (2 << 30 if case == "chunked-2gib" else 0)
    return {"case": case, "wire_mib": round(wire / 2 ** 20, 1), "exit": result["exit"],
            "peak_rss_mib": round(result["peak_rss_mib"]), "seconds": round(wall, 1),
            "row": f"{table[0]['status']} {table[0]['error_code'] or ''}".strip() if table else "no row"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="large-300mb,chunked-2gib,gzip-1gib")
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dicomweb-memory-")
    rows = []
    for case in args.cases.split(","):
        rows.append(run_case(case, args.model, work))
        print(rows[-1], flush=True)
    common.report("dicomweb_memory", rows, {
        "note": "peak RSS (VmHWM) of a fresh brain-score process on dicomweb:// with one oversized instance; "
                "default --max-member-bytes (512 MiB); bar 11: 2.5 GB"})


if __name__ == "__main__":
    main()

"""Does WADO-RS series retrieval beat per-instance retrieval on Orthanc? Same instances, same run.

  .venv/bin/python bench/dicomweb_series_probe.py

20 series x 60 generated 256x256 16-bit MR instances in a local Orthanc (tests/orthanc.py); retrieves
all of them twice each way with 4 threads: one WADO-RS request per instance (dicomweb.retrieve, what
the job does) and one per series (the whole multipart body read, not parsed); prints instances/s and
Orthanc's CPU seconds. A probe for issue 28's series retrieval, not a pipeline benchmark.
"""
import concurrent.futures
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pydicom.uid import generate_uid  # noqa: E402

from beam_pipeline import dicomweb, sample_data  # noqa: E402
from tests import orthanc  # noqa: E402

HTTP = requests.Session()


def cpu(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

work = Path(tempfile.mkdtemp(prefix="series-probe-"))
if not orthanc.available():
    sys.exit(orthanc.SKIP_REASON)
url, proc = orthanc.start(work)
try:
    refs, series_list = [], []
    for p in range(20):
        study, series = generate_uid(), generate_uid()
        series_list.append((study, series))
        for n in range(60):
            b = sample_data.dicom_bytes(sample_data.synthetic_slice(p * 1000 + n, 256, lesion=n % 3 == 0), p, study, series, n)
            sop = pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID
            orthanc.upload(url, b)
            refs.append((study, series, sop))
    base = f"{url}/dicom-web"
    dicomweb.configure(4)
    for _rep in range(2):
        c0, t0 = cpu(proc.pid), time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            sizes = list(ex.map(lambda r: len(dicomweb.retrieve(base, *r, 50 << 20)), refs))
        t1, c1 = time.perf_counter() - t0, cpu(proc.pid) - c0
        print(f"per-instance: {len(refs)/t1:.0f} instances/s, server CPU {c1:.2f} s, {sum(sizes)/1e6:.1f} MB")
        def series_get(st_se):
            r = HTTP.get(f"{base}/studies/{st_se[0]}/series/{st_se[1]}",
                      headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
            return len(r.content), r.headers.get("Content-Type", "")[:40]
        c0, t0 = cpu(proc.pid), time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            out = list(ex.map(series_get, series_list))
        t2, c2 = time.perf_counter() - t0, cpu(proc.pid) - c0
        print(f"series:       {len(refs)/t2:.0f} instances/s, server CPU {c2:.2f} s, {sum(o[0] for o in out)/1e6:.1f} MB, {out[0][1]}")
finally:
    orthanc.stop(proc)

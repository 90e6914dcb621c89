"""Scoring from a PACS (Orthanc, DICOMweb) vs from a local zip of the same instances, same run.

  .venv/bin/python bench/dicomweb_throughput.py [--studies 10 --per-study 40 --size 256]

Loads generated 16-bit MR instances into a local Orthanc (tests/orthanc.py; Debian packages orthanc,
orthanc-dicomweb), writes the same bytes into a zip, and times:
  fetch     WADO-RS retrieval alone, one request per instance (dicomweb.retrieve) and one per series
            (dicomweb.retrieve_series, what the job does for a series that fits a chunk), 4 threads,
            vs reading the zip's members;
  pipeline  brain-score on the dicomweb:// input vs on the zip (2 workers multi_threading, no review outputs).
The server runs on the same machine: its CPU seconds during each stage (`server_cpu_s`) say how much of
the gap is the PACS's own work, which a real PACS does on its own hardware.
"""
import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def _cpu_seconds(pid):
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--per-study", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    args = parser.parse_args()
    from pydicom.uid import generate_uid

    from beam_pipeline import archives, dicomweb, sample_data
    from tests import orthanc
    if not orthanc.available():
        sys.exit(orthanc.SKIP_REASON)
    work = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    url, proc = orthanc.start(work)
    try:
        blobs = []
        for p in range(args.studies):
            study, series = generate_uid(), generate_uid()
            for n in range(args.per_study):
                arr = sample_data.synthetic_slice(p * 1000 + n, args.size, lesion=bool(n % 3 == 0))
                blobs.append(sample_data.dicom_bytes(arr, p, study, series, n))
        for b in blobs:
            orthanc.upload(url, b)
        zpath = work / "same.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            for i, b in enumerate(blobs):
                zf.writestr(f"{i:05d}.dcm", b)
        n = len(blobs)
        uri = f"dicomweb://{url.split('://', 1)[1]}/dicom-web"
        refs = [(s, se, sop) for s in dicomweb.search_studies(uri) for se, sop in dicomweb.instances(uri, s)[0]]
        base, _ = dicomweb.parse(uri)
        t0, c0 = time.perf_counter(), _cpu_seconds(proc.pid)
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda r: dicomweb.retrieve(base, *r, 1 << 30), refs))
        fetch_web, fetch_cpu = time.perf_counter() - t0, _cpu_seconds(proc.pid) - c0
        by_series = {}
        for study, series, sop in refs:
            by_series.setdefault((study, series), set()).add(sop)
        t0, c0 = time.perf_counter(), _cpu_seconds(proc.pid)
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            got = sum(ex.map(lambda kv: sum(1 for _ in dicomweb.retrieve_series(base, *kv[0], kv[1], 1 << 30)),
                             by_series.items()))
        assert got == len(refs), (got, len(refs))
        fetch_series, series_cpu = time.perf_counter() - t0, _cpu_seconds(proc.pid) - c0
        t0 = time.perf_counter()
        for chunk in archives.list_chunks(str(zpath), os.path.getsize(zpath)):
            for _ in archives.read_members(chunk):
                pass
        fetch_zip = time.perf_counter() - t0
        rows = [{"stage": "fetch: WADO-RS retrieve (4 threads)", "instances": len(refs), "seconds": fetch_web,
                 "instances_per_s": len(refs) / fetch_web, "server_cpu_s": fetch_cpu},
                {"stage": "fetch: zip members", "instances": n, "seconds": fetch_zip, "instances_per_s": n / fetch_zip,
                 "server_cpu_s": 0.0}]
        for label, inp in (("pipeline: dicomweb://", uri), ("pipeline: zip", str(zpath))):
            cmd = [sys.executable, "-m", "beam_pipeline.run", "--input", inp, "--output", str(work / label[10:13]),
                   "--model", args.model, "--no-heatmaps", "--no-report", "--direct_num_workers", "2",
                   "--direct_running_mode", "multi_threading", "--max-error-fraction", "1", "--no-fail-on-drift"]
            t0, c0 = time.perf_counter(), _cpu_seconds(proc.pid)
            subprocess.run(cmd, check=True, capture_output=True, cwd=common.REPO)
            wall = time.perf_counter() - t0
            rows.append({"stage": label, "instances": n, "seconds": wall, "instances_per_s": n / wall,
                         "server_cpu_s": _cpu_seconds(proc.pid) - c0})
        for r in rows:
            r["ratio_to_zip"] = None
        rows[0]["ratio_to_zip"] = rows[0]["instances_per_s"] / rows[1]["instances_per_s"]
        rows[2]["ratio_to_zip"] = rows[2]["instances_per_s"] / rows[3]["instances_per_s"]
        rows[1]["ratio_to_zip"] = rows[3]["ratio_to_zip"] = 1.0
        rows.insert(1, {"stage": "fetch: WADO-RS series retrieve (4 threads)", "instances": len(refs),
                        "seconds": fetch_series, "instances_per_s": len(refs) / fetch_series,
                        "server_cpu_s": series_cpu, "ratio_to_zip": len(refs) / fetch_series / rows[1]["instances_per_s"]})
        common.report("dicomweb_throughput", rows, {"instance": f"{args.size}x{args.size} 16-bit MR, uncompressed",
                                                    "server": "Orthanc (Debian) on loopback"})
    finally:
        orthanc.stop(proc)


if __name__ == "__main__":
    main()

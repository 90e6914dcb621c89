"""Scoring throughput: the Beam pipeline vs a tight decode+predict loop (the limit).

  .venv/bin/python bench/scoring.py --n 4000

Packs N images (half into a zip, half into a tar.gz), then times
  limit      one process: read members, decode + preprocess (the same functions
             the pipeline calls), model.predict_on_batch at --batch-size;
  pipeline   `python -m beam_pipeline.run` in a fresh process on DirectRunner
             (1 worker in_memory; 2 workers multi_threading and multi_processing), with
             --engine tensorflow and onnxruntime, wall time including start-up, plus the
             start-up alone (imports + model load). The limit loop is TensorFlow predict
             only; the pipeline also computes the OOD guard's features.
Ratio = pipeline images/s / limit images/s, all measured in this one run.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def limit_loop(paths, model_dir, batch_size):
    from beam_pipeline import archives, decoding, model_store
    from trainer import preprocessing
    model, md = model_store.load(model_dir)
    spec = preprocessing.InputSpec.from_dict(md["input_spec"])
    model.predict_on_batch(np.zeros((batch_size, spec.height, spec.width, 1), np.float32))  # warm-up
    t0 = time.perf_counter()
    n, batch = 0, []
    for path in paths:
        for chunk in archives.list_chunks(path, os.path.getsize(path), archives.Limits(chunk_size=10 ** 9)):
            for _, data, _ in archives.read_members(chunk):
                batch.append(preprocessing.prepare(decoding.decode(data).frames[0].gray, spec))
                if len(batch) == batch_size:
                    model.predict_on_batch(np.stack(batch))
                    n, batch = n + len(batch), []
    if batch:
        model.predict_on_batch(np.stack(batch))
        n += len(batch)
    return n, time.perf_counter() - t0


def startup_seconds(model_dir):
    code = ("import time; t=time.time(); import apache_beam, tensorflow; "
            "from beam_pipeline import model_store; model_store.load(%r); print(time.time()-t)" % model_dir)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def pipeline_run(inputs, out, model_dir, batch_size, chunk_size, extra):
    cmd = [sys.executable, "-m", "beam_pipeline.run", "--output", out, "--model", model_dir,
           "--batch-size", str(batch_size), "--chunk-size", str(chunk_size), "--run-id", "bench", *extra]
    if "--heatmaps" not in extra:  # the limit loop scores only; review outputs are timed separately
        cmd += ["--no-heatmaps", "--no-report"]
    for p in inputs:
        cmd += ["--input", p]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=common.REPO)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="bench-scoring-"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    blobs, source = common.image_bytes(args.n)
    zip_path, tgz_path = os.path.join(args.work, "a.zip"), os.path.join(args.work, "b.tar.gz")
    common.write_zip(zip_path, blobs[: args.n // 2])
    common.write_tgz(tgz_path, blobs[args.n // 2:])
    inputs = [zip_path, tgz_path]

    n, secs = limit_loop(inputs, args.model, args.batch_size)
    limit_ips = n / secs
    startup = startup_seconds(args.model)
    rows = [{"stage": "limit: decode+preprocess+predict loop", "images": n, "seconds": secs,
             "images_per_s": limit_ips, "ratio_to_limit": 1.0}]
    configs = []
    for engine in ("tensorflow", "onnxruntime"):  # the pipeline also computes the OOD guard's features
        configs += [(f"pipeline [{engine}] DirectRunner 1 worker", ["--direct_num_workers", "1", "--engine", engine]),
                    (f"pipeline [{engine}] DirectRunner 2 workers multi_threading",
                     ["--direct_num_workers", "2", "--direct_running_mode", "multi_threading", "--engine", engine])]
    configs.append(("pipeline [auto] DirectRunner 2 workers multi_processing",
                    ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]))
    for label, extra in configs:
        wall = pipeline_run(inputs, os.path.join(args.work, "out"), args.model, args.batch_size,
                            args.chunk_size, extra)
        rows.append({"stage": label, "images": n, "seconds": wall, "images_per_s": n / wall,
                     "ratio_to_limit": n / wall / limit_ips})
        after = wall - startup
        rows.append({"stage": label + " (minus start-up)", "images": n, "seconds": after,
                     "images_per_s": n / after, "ratio_to_limit": n / after / limit_ips})
    from beam_pipeline import model_store
    from trainer.model import flops_per_image
    model, _ = model_store.load(args.model)
    flops = flops_per_image(model)
    mach = common.machine()
    peak = (mach["cores"] * (mach["mhz"] or 0) * 1e6 * 64) if mach["mhz"] else None  # AVX-512: 2 FMA x 16 fp32 x 2
    common.report("scoring", rows, {
        "source": source, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
        "startup_seconds": round(startup, 2), "model_flops_per_image": flops,
        "limit_gflops_per_s": round(flops * limit_ips / 1e9, 2),
        "fraction_of_cpu_peak_in_limit_loop": round(flops * limit_ips / peak, 4) if peak else None,
        "cpu_peak_assumption": "cores x MHz x 64 fp32 FLOPs/cycle (AVX-512, 2 FMA units)"})


if __name__ == "__main__":
    main()

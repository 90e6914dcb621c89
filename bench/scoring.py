"""Scoring throughput: the whole Beam job vs a tight decode+preprocess+score loop (the limit).

  .venv/bin/python bench/scoring.py --n 20000

Packs N images (half into a zip, half into a tar.gz), then times, per engine,
  limit      no Beam: read members, decode + preprocess (the functions the pipeline
             calls), score batches of --batch-size with the pipeline's own scorer (the
             engine's forward pass + the OOD guard), nothing written; in one process
             (the engine's threads on every core) and, for ONNX Runtime, in one process
             per vCPU (one input each, one thread each; time of the slower process).
             The faster of the two is the limit;
  pipeline   `python -m beam_pipeline.run` in a fresh process on DirectRunner, scoring
             only (--no-heatmaps --no-report), wall time including start-up, plus the
             start-up alone (imports + model check), measured in its own process.
Ratio = pipeline images/s / limit images/s of the same engine, all in this one run.
vCPU ms per image = wall seconds x vCPUs / images (the Dataflow bill's unit).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def limit_loop(paths, model_dir, batch_size, engine, threads=0):
    from beam_pipeline import archives, decoding, model_store
    from beam_pipeline.inference import ChunkModelHandler
    from screening_core import preprocessing
    spec = preprocessing.InputSpec.from_dict(model_store.metadata(model_dir)["input_spec"])
    score = ChunkModelHandler(model_dir, batch_size, engine=engine, threads=threads).load_model()
    score(np.zeros((batch_size, spec.height, spec.width, 1), np.float32))  # warm-up
    t0 = time.perf_counter()
    n, batch = 0, []
    for path in paths:
        for chunk in archives.list_chunks(path, os.path.getsize(path), archives.Limits(chunk_size=10 ** 9)):
            for _, data, _ in archives.read_members(chunk):
                batch.append(preprocessing.prepare(decoding.decode(data).frames[0].gray, spec))
                if len(batch) == batch_size:
                    score(np.stack(batch))
                    n, batch = n + len(batch), []
    if batch:
        score(np.stack(batch))
        n += len(batch)
    return n, time.perf_counter() - t0


def _limit_part(job):
    return limit_loop(*job)


def limit_processes(paths, model_dir, batch_size, engine, processes):
    """The same loop in `processes` processes (one input each), ONNX Runtime threads shared out among them:
    the other way to use every core without Beam. Wall time from start to the last process's end."""
    import multiprocessing
    threads = max(1, (os.cpu_count() or 1) // processes)
    jobs = [(paths[i::processes], model_dir, batch_size, engine, threads) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        t0 = time.perf_counter()
        parts = pool.map(_limit_part, jobs)
        wall = time.perf_counter() - t0
    return sum(n for n, _ in parts), wall, max(s for _, s in parts)


def startup_seconds(model_dir, engine):
    """What the launcher does before the first image: imports and the model check (no TensorFlow on ONNX)."""
    code = ("import time; t=time.time(); import apache_beam; from beam_pipeline import run, model_store; "
            f"model_store.check_model_matches_metadata({model_dir!r}, {engine!r}); print(time.time()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=common.REPO)
    return float(out.stdout.strip().splitlines()[-1])


def pipeline_run(inputs, out, model_dir, batch_size, chunk_size, extra):
    cmd = [sys.executable, "-m", "beam_pipeline.run", "--output", out, "--model", model_dir,
           "--batch-size", str(batch_size), "--chunk-size", str(chunk_size), "--run-id", "bench", "--no-fail-on-drift",
           *extra]
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
    parser.add_argument("--engines", default="onnxruntime,tensorflow", help="comma-separated")
    parser.add_argument("--modes", default="default,in_memory:1,multi_threading:2,multi_processing:2",
                        help="DirectRunner modes to run, comma-separated: MODE:WORKERS, or 'default' (no runner "
                             "flags: what a user who types the README's command gets)")
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="bench-scoring-"))
    parser.add_argument("--result-name", default="scoring", help="bench/results/<name>.json")
    args = parser.parse_args()
    bad = [m for m in args.modes.split(",") if m != "default" and not re.fullmatch(r"\w+:\d+", m)]
    if bad:  # found before minutes of limit loops, not after
        parser.error(f"--modes wants 'default' or MODE:WORKERS (e.g. multi_processing:2), got {bad}")
    os.makedirs(args.work, exist_ok=True)
    blobs, source = common.image_bytes(args.n)
    zip_path, tgz_path = os.path.join(args.work, "a.zip"), os.path.join(args.work, "b.tar.gz")
    common.write_zip(zip_path, blobs[: args.n // 2])
    common.write_tgz(tgz_path, blobs[args.n // 2:])
    inputs = [zip_path, tgz_path]

    vcpus = os.cpu_count()
    rows, limits, startups = [], {}, {}
    for engine in args.engines.split(","):
        n, secs = limit_loop(inputs, args.model, args.batch_size, engine)
        loops = [(f"limit [{engine}]: decode+preprocess+score loop, 1 process", secs)]
        if engine == "onnxruntime" and vcpus > 1:  # TensorFlow's threads are fixed once it starts
            n2, wall2, slowest = limit_processes(inputs, args.model, args.batch_size, engine, vcpus)
            assert n2 == n
            loops.append((f"limit [{engine}]: the same loop in {vcpus} processes, "
                          f"{max(1, vcpus // vcpus)} thread each", slowest))
        limit_ips = max(n / t for _, t in loops)  # the better way to use this machine is the limit
        startup = startup_seconds(args.model, engine)
        limits[engine], startups[engine] = limit_ips, round(startup, 2)
        for label, t in loops:
            rows.append({"stage": label, "images": n, "seconds": t, "images_per_s": n / t,
                         "ratio_to_limit": n / t / limit_ips, "vcpu_ms_per_image": t * vcpus / n * 1e3})
        for spec in args.modes.split(","):
            if spec == "default":
                label, flags = f"pipeline [{engine}] DirectRunner, default flags", []
            else:
                mode, workers = spec.split(":")
                label = f"pipeline [{engine}] DirectRunner {workers} worker{'s' * (int(workers) > 1)} {mode}"
                flags = ["--direct_num_workers", workers, "--direct_running_mode", mode]
            wall = pipeline_run(inputs, os.path.join(args.work, "out"), args.model, args.batch_size, args.chunk_size,
                                [*flags, "--engine", engine])
            rows.append({"stage": label, "images": n, "seconds": wall, "images_per_s": n / wall,
                         "ratio_to_limit": n / wall / limit_ips, "vcpu_ms_per_image": wall * vcpus / n * 1e3})
            rows.append({"stage": label + " (minus start-up)", "images": n, "seconds": wall - startup,
                         "images_per_s": n / (wall - startup), "ratio_to_limit": n / (wall - startup) / limit_ips,
                         "vcpu_ms_per_image": (wall - startup) * vcpus / n * 1e3})
        rows.append({"stage": f"start-up [{engine}] (imports + model check)", "images": 0, "seconds": startup,
                     "images_per_s": 0.0, "ratio_to_limit": 0.0, "vcpu_ms_per_image": 0.0})
    from beam_pipeline import model_store
    from trainer.model import flops_per_image
    model, _ = model_store.load(args.model)
    flops = flops_per_image(model)
    mach = common.machine()
    peak = (mach["cores"] * (mach["mhz"] or 0) * 1e6 * 64) if mach["mhz"] else None  # AVX-512: 2 FMA x 16 fp32 x 2
    common.report(args.result_name, rows, {
        "source": source, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
        "startup_seconds": startups, "model_flops_per_image": flops,
        "limit_gflops_per_s": {e: round(flops * ips / 1e9, 2) for e, ips in limits.items()},
        "fraction_of_cpu_peak_in_limit_loop": {e: round(flops * ips / peak, 4) for e, ips in limits.items()}
        if peak else None,
        "cpu_peak_assumption": "cores x MHz x 64 fp32 FLOPs/cycle (AVX-512, 2 FMA units)"})


if __name__ == "__main__":
    main()

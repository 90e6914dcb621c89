"""GPU readiness, one table: MirroredStrategy training with mixed precision, then GPU scoring throughput.

  bash bench/gpu_check.sh            # on a machine with an NVIDIA GPU (and this repo's .venv)

1. Training smoke test: `python -m trainer.task` on generated images (no data needed on
   the GPU machine) with --mixed-precision under MirroredStrategy over every visible GPU;
   reports the replica count, epoch time and that the artifact verifies and reloads.
2. Scoring: the committed model's TensorFlow scorer (the pipeline's GPU engine, OOD
   features included) on preprocessed batches of 64 and 256: images/s on the GPU and,
   in the same run, on the CPU engine (ONNX Runtime) for the ratio.
Writes bench/results/gpu_check.json. Exits 2 when TensorFlow sees no GPU.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def _training(work):
    from tests import synth
    data = os.path.join(work, "data")
    for label in ("tumor", "notumor"):
        os.makedirs(os.path.join(data, label), exist_ok=True)
        for i in range(160):
            seed = i + (1000 if label == "tumor" else 0)
            with open(os.path.join(data, label, f"p{i // 4:03d}_{i}.png"), "wb") as f:
                f.write(synth.encode(synth.brain_slice(seed, 128, lesion=label == "tumor")))
    cmd = [sys.executable, "-m", "trainer.task", "--data-dir", data, "--model-dir", os.path.join(work, "models"),
           "--epochs", "3", "--mixed-precision", "--bootstrap", "0", "--batch-size", "32", "--version", "1"]
    t0 = time.perf_counter()
    try:  # on a GPU this takes about a minute; mixed_float16 on a CPU takes far longer
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO, timeout=600)
    except subprocess.TimeoutExpired as e:
        return {"check": "train: MirroredStrategy + mixed_float16", "ok": False, "replicas": "?",
                "seconds": 600.0, "detail": f"timed out: {(e.stderr or b'')[-1000:]!r}"}
    wall = time.perf_counter() - t0
    artifact = os.path.join(work, "models", "brain-tumor-cnn", "1")
    ok = out.returncode == 0 and os.path.exists(os.path.join(artifact, "metadata.json"))
    replicas = "?"
    if ok:
        from screening_core import artifact as art
        replicas = art.verify(artifact).get("training", {}).get("replicas", "?")
        art.load(artifact)
    return {"check": "train: MirroredStrategy + mixed_float16, 3 epochs, 320 images", "ok": ok,
            "replicas": replicas, "seconds": round(wall, 1),
            "detail": "" if ok else out.stderr[-1500:]}


def _scoring(model_dir):
    from beam_pipeline.inference import ChunkModelHandler
    rows = []
    x = np.random.default_rng(0).random((1024, 128, 128, 1)).astype(np.float32)
    for engine in ("tensorflow", "onnxruntime"):
        for batch in (64, 256):
            score = ChunkModelHandler(model_dir, batch, engine=engine).load_model()
            score(x[:batch])  # warm-up (and GPU kernels)
            t0 = time.perf_counter()
            for i in range(0, len(x), batch):
                score(x[i:i + batch])
            secs = time.perf_counter() - t0
            rows.append({"check": f"score: {engine} ({'GPU' if engine == 'tensorflow' else 'CPU'}), batch {batch}",
                         "ok": True, "replicas": "", "seconds": round(secs, 2),
                         "detail": f"{len(x) / secs:.0f} images/s"})
    return rows


def main():
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("TensorFlow sees no GPU: nothing to check here")
        return 2
    work = tempfile.mkdtemp(prefix="gpu-check-")
    rows = [_training(work), *_scoring(common.DEFAULT_MODEL)]
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    common.report("gpu_check", rows, {"gpus": smi or [g.name for g in gpus], "tensorflow": tf.__version__})
    print(json.dumps({"ok": all(r["ok"] for r in rows)}))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""CPU inference engines on the same preprocessed batches: TensorFlow, ONNX Runtime, OpenVINO.

  .venv/bin/python bench/engines.py [--model <default model>] [--images 512] [--seconds 3]

Each (engine, threads) pair runs in its own process (thread pools are fixed at
start-up), on the same inputs: the model's own validation images, preprocessed
once. It times what the pipeline calls per batch — the probability *and* the
OOD guard's feature outputs (the exported graph) — at batch 1, 16 and 64, and
reports images/s and the largest |probability difference| to TensorFlow.
OpenVINO is measured when installed (`pip install openvino`; not a dependency), and in bfloat16
as well where the CPU computes it (AMX or AVX512-BF16: `openvino-bf16`).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

_CHILD = r"""
import json, os, sys, time
import numpy as np
sys.path.insert(0, %(repo)r)
engine, threads, model_dir, x_path, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
x = np.load(x_path)
if engine == "tensorflow":
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from screening_core import artifact
    from trainer import ood
    model, md = artifact.load(model_dir)
    fm = ood.feature_model(model) if md.get("ood") else model
    def call(b):
        out = fm.predict_on_batch(b)
        return np.asarray(out[0] if isinstance(out, list) else out).reshape(-1)
elif engine == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    def call(b):
        return np.asarray(sess.run(None, {name: b})[0]).reshape(-1)
else:
    import openvino as ov
    core = ov.Core()
    compiled = core.compile_model(os.path.join(model_dir, "model.onnx"), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads,
                                   "INFERENCE_PRECISION_HINT": "bf16" if engine.endswith("bf16") else "f32"})
    def call(b):
        return np.asarray(compiled(b)[0]).reshape(-1)
probs = np.concatenate([call(x[i:i + 64]) for i in range(0, len(x), 64)])
np.save(x_path + f".{engine}.{threads}.npy", probs)
rates = {}
for batch in (1, 16, 64):
    b = x[:batch]
    call(b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        call(b)
        n += batch
    rates[batch] = n / (time.perf_counter() - t0)
print(json.dumps(rates))
"""


def _run(engine, threads, model_dir, x_path, seconds):
    code = _CHILD % {"repo": common.REPO}
    out = subprocess.run([sys.executable, "-c", code, engine, str(threads), model_dir, x_path, str(seconds)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1] if out.stderr else "failed"
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--name", default="engines", help="results file name under bench/results/ (default: %(default)s)")
    args = parser.parse_args()
    from screening_core import artifact, preprocessing
    from trainer import export
    md = artifact.verify(args.model)
    spec = preprocessing.InputSpec.from_dict(md["input_spec"])
    x, what = export.parity_inputs(args.model, spec, n=args.images)
    work = tempfile.mkdtemp(prefix="bench-engines-")
    x_path = os.path.join(work, "x.npy")
    np.save(x_path, x.astype(np.float32))
    engines = ["tensorflow", "onnxruntime"]
    try:
        import openvino
        engines.append("openvino")
        if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            engines.append("openvino-bf16")  # AMX/AVX512-BF16 CPUs: bfloat16 arithmetic, probabilities move ~1e-2
    except ImportError:
        pass
    rows, base = [], {}
    for threads in [int(t) for t in args.threads.split(",")]:
        for engine in engines:
            rates, err = _run(engine, threads, args.model, x_path, args.seconds)
            if rates is None:
                rows.append({"engine": engine, "threads": threads, "error": err})
                continue
            probs = np.load(x_path + f".{engine}.{threads}.npy")
            if engine == "tensorflow":
                base[threads] = (probs, rates)
            ref_probs, ref_rates = base[threads]
            rows.append({"engine": engine, "threads": threads,
                         **{f"img_s_batch{b}": round(r, 1) for b, r in rates.items()},
                         "speedup_batch64": round(rates["64"] / ref_rates["64"], 2),
                         "max_abs_dp_vs_tf": f"{float(np.max(np.abs(probs - ref_probs))):.1e}"})
    for r in rows:
        r.setdefault("error", "")
    common.report(args.name, rows, {"inputs": f"{len(x)} {what}", "model": args.model,
                                    "note": "each engine computes probability + OOD feature outputs"})


if __name__ == "__main__":
    main()

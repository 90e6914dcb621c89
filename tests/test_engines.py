"""ONNX Runtime scores like TensorFlow: same probabilities (<= 1e-4), OOD scores and labels."""
import json
import os
import zipfile

import numpy as np
import pytest

from beam_pipeline import run
from tests import rows as rows_mod
from tests import synth, tiny_model
from trainer import artifact, export


def test_export_then_both_engines_give_the_same_rows(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path, ood=True)
    entry = export.export(model_dir)
    assert entry["max_abs_probability_difference"] <= export.PARITY_TOLERANCE
    assert "model.onnx" in open(os.path.join(model_dir, "SHA256SUMS")).read()
    assert json.load(open(os.path.join(model_dir, "metadata.json")))["engines"]["onnxruntime"]["feature_outputs"]
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        for s in range(24):
            zf.writestr(f"{s}.png", synth.encode(synth.brain_slice(s, 48, lesion=bool(s % 2))))
        zf.writestr("noise.png", synth.encode(np.random.default_rng(0).integers(0, 256, (48, 48)).astype(np.uint8)))
    rows = {}
    for engine in ("tensorflow", "onnxruntime", "auto"):
        out = tmp_path / engine
        assert run.main(["--input", str(tmp_path / "a.zip"), "--keep-paths", "--output", str(out),
                         "--model", model_dir, "--engine", engine]) == 0
        rows[engine] = {r["member_path"]: r for r in rows_mod.images(out)}
        assert run.read_summary(str(out))["engine"] == ("onnxruntime" if engine == "auto" else engine)
    tf_rows, ort_rows = rows["tensorflow"], rows["onnxruntime"]
    assert set(tf_rows) == set(ort_rows) and len(tf_rows) == 25
    for k, r in tf_rows.items():
        assert abs(r["tumor_probability"] - ort_rows[k]["tumor_probability"]) <= 1e-4
        assert r["ood_score"] == pytest.approx(ort_rows[k]["ood_score"], rel=1e-3)
        assert r["predicted_label"] == ort_rows[k]["predicted_label"]
        assert r["in_distribution"] == ort_rows[k]["in_distribution"]


def test_onnx_engine_needs_an_exported_artifact_and_a_sealed_file(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(1, 32)))
    argv = ["--input", str(img), "--output", str(tmp_path / "o"), "--model", model_dir]
    assert run.main(argv + ["--engine", "onnxruntime"]) == 2
    assert "no model.onnx" in capsys.readouterr().err
    assert run.main(argv) == 0  # auto: TensorFlow when there is no model.onnx
    export.export(model_dir)
    md_path = os.path.join(model_dir, "metadata.json")
    md = json.load(open(md_path))
    json.dump({**md, "input_spec": {**md["input_spec"], "height": 64, "width": 64}}, open(md_path, "w"))
    artifact.seal(model_dir)  # consistent sums, a metadata input size the ONNX graph does not take
    assert run.main(argv + ["--engine", "onnxruntime"]) == 2
    assert "declares (64, 64, 1)" in capsys.readouterr().err
    json.dump(md, open(md_path, "w"))
    artifact.seal(model_dir)
    with open(os.path.join(model_dir, "model.onnx"), "ab") as f:
        f.write(b"x")
    with pytest.raises(artifact.ArtifactError, match="model.onnx was changed"):
        artifact.verify(model_dir)


def test_a_cpu_run_on_onnx_runtime_never_imports_tensorflow(tmp_path):
    """TensorFlow's import is 5 s of launcher start-up; a DirectRunner CPU run scores without it."""
    import subprocess
    import sys
    model_dir = tiny_model.write_tiny_artifact(tmp_path, ood=True)
    export.export(model_dir)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(1, 32)))
    code = ("import sys; from beam_pipeline import run; "
            f"code = run.main(['--input', {str(img)!r}, '--output', {str(tmp_path / 'o')!r}, '--model', "
            f"{model_dir!r}, '--engine', 'onnxruntime', '--no-heatmaps']); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_model_handler_keeps_beams_contract(tmp_path):
    from beam_pipeline.inference import KerasChunkModelHandler
    first = tiny_model.write_tiny_artifact(tmp_path / "a")
    second = tiny_model.write_tiny_artifact(tmp_path / "b", seed=3)
    handler = KerasChunkModelHandler(first)
    with pytest.raises(ValueError, match="no inference_args"):
        handler.validate_inference_args({"batch_size": 8})
    handler.validate_inference_args(None)
    assert not handler.share_model_across_processes() and handler.model_copies() == 1
    assert KerasChunkModelHandler(first, model_copies=2).share_model_across_processes()
    x = np.stack([np.zeros((32, 32, 1), np.float32), np.ones((32, 32, 1), np.float32) * 0.5])
    (r1,) = handler.run_inference([x], handler.load_model())
    sha = json.load(open(os.path.join(first, "metadata.json")))["model_sha256"]
    assert r1.model_id == f"tiny/1/{sha[:12]}/tensorflow"
    handler.update_model_path(second)
    (r2,) = handler.run_inference([x], handler.load_model())
    assert r2.model_id != r1.model_id and not np.allclose(r1.inference[0], r2.inference[0])

"""ONNX Runtime scores like TensorFlow: same probabilities (<= 1e-4), OOD scores and labels."""
import json
import os
import zipfile

import numpy as np
import pytest

from beam_pipeline import run
from screening_core import artifact
from tests import rows as rows_mod
from tests import synth, tiny_model
from trainer import export


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
    """TensorFlow's import is 5 s of start-up: an ONNX Runtime run scores and draws heatmaps without it
    (the scoring pass returns the class-activation map, screening_core/gradcam.py: cam_head)."""
    import subprocess
    import sys
    model_dir = tiny_model.write_tiny_artifact(tmp_path, ood=True, threshold=1e-6)  # every in-distribution image flagged
    assert export.export(model_dir)["cam_output"]
    for s in range(6):
        (tmp_path / f"{s}.png").write_bytes(synth.encode(synth.brain_slice(s, 64, lesion=True)))
    out = tmp_path / "o"
    code = ("import sys; from beam_pipeline import run; "
            f"code = run.main(['--input', {str(tmp_path / '*.png')!r}, '--output', {str(out)!r}, '--model', "
            f"{model_dir!r}, '--engine', 'onnxruntime', '--keep-paths']); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False False"
    drawn = [r for r in rows_mod.images(out) if r["heatmap_path"]]
    assert drawn and all(os.path.getsize(r["heatmap_path"]) > 1000 for r in drawn)


def _reseal(model_dir, **changes):
    md_path = os.path.join(model_dir, "metadata.json")
    md = json.load(open(md_path))
    md.update(changes)
    with open(md_path, "w") as f:
        f.write(json.dumps(md).replace('"NaN"', "NaN"))
    artifact.seal(model_dir)  # sums that agree: only the contract can refuse it


@pytest.mark.parametrize("threshold", ["NaN", -0.2, 1.5, None, 0, "0.5"])
def test_a_resealed_artifact_with_an_impossible_threshold_is_refused_at_launch(tmp_path, capsys, threshold):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    _reseal(model_dir, threshold=threshold)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(1, 32)))
    assert run.main(["--input", str(img), "--output", str(tmp_path / "o"), "--model", model_dir]) == 2
    assert "is not a probability strictly between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_tampered_or_foreign_onnx_graph_is_refused_at_launch(tmp_path, capsys):
    """A re-sealed model.onnx that trainer.export did not write from this model.keras never scores."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    export.export(model_dir)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(1, 32)))
    argv = ["--input", str(img), "--output", str(tmp_path / "o"), "--model", model_dir, "--engine", "onnxruntime"]
    other = tiny_model.write_tiny_artifact(tmp_path / "other", seed=1)
    export.export(other)
    with open(os.path.join(other, "model.onnx"), "rb") as f:
        foreign = f.read()
    with open(os.path.join(model_dir, "model.onnx"), "wb") as f:
        f.write(foreign)  # another model's graph, same shapes
    artifact.seal(model_dir)
    assert run.main(argv) == 2
    assert "is not the graph trainer.export wrote from model.keras" in capsys.readouterr().err
    md = json.load(open(os.path.join(model_dir, "metadata.json")))
    _reseal(model_dir, engines={"onnxruntime": {**md["engines"]["onnxruntime"], "keras_sha256": "0" * 64}})
    assert run.main(argv) == 2
    assert "exported from another model.keras" in capsys.readouterr().err


def test_an_ood_reference_built_after_the_export_re_exports_the_graph(tmp_path):
    """`trainer.ood build` after `trainer.export` used to leave a graph without the feature outputs the
    reference needs (KeyError on every worker); attaching a reference now exports again."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    export.export(model_dir)
    model, md = artifact.load(model_dir)
    assert md["engines"]["onnxruntime"]["feature_outputs"] == []
    from screening_core import preprocessing
    tiny_model.attach_ood_reference(model_dir, model, preprocessing.InputSpec.from_dict(md["input_spec"]))
    md = artifact.verify(model_dir)
    assert md["engines"]["onnxruntime"]["feature_outputs"] == [c for c in md["ood"]["components"]
                                                               if c != "input_histogram"]
    artifact.check_onnx_binding(model_dir, md)
    broken = {**md["engines"]["onnxruntime"], "feature_outputs": []}
    _reseal(model_dir, engines={"onnxruntime": broken})
    with pytest.raises(artifact.ArtifactError, match="reference was built after the export"):
        artifact.verify(model_dir)

"""Transient faults: the runner retries the failed bundle and the output equals a
clean run, with no duplicate rows.

BundleBasedDirectRunner is used because it retries failed bundles (up to 4
attempts) and discards the outputs of failed attempts, as Dataflow does; the
FnApiRunner behind the default DirectRunner does not retry.
"""
import zipfile

import pytest

from beam_pipeline import decoding, inference, run
from tests import rows as rows_mod
from tests import synth, tiny_model
from tests.rows import stable


@pytest.fixture()
def inputs(tmp_path):
    for a in range(2):
        with zipfile.ZipFile(tmp_path / f"a{a}.zip", "w") as zf:
            for i in range(12):
                zf.writestr(f"m{i}.png", synth.encode(synth.brain_slice(a * 100 + i, 32)))
            zf.writestr("note.txt", b"x")
    return tmp_path, tiny_model.write_tiny_artifact(tmp_path)


def _run(root, model_dir, name):
    out = str(root / name)
    run.run(["--input", str(root / "*.zip"), "--keep-paths", "--output", out, "--model", model_dir, "--run-id", "r",
             "--chunk-size", "5", "--runner", "BundleBasedDirectRunner"])
    rows = rows_mod.images(out)
    return stable(rows)


def _fail_first_call(monkeypatch, owner, name, seen):
    real = getattr(owner, name)

    def flaky(*args, **kwargs):
        if not seen:
            seen.append(1)
            raise ConnectionError("injected transient fault")
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, flaky)


def test_transient_decode_failure_is_retried(inputs, monkeypatch):
    root, model_dir = inputs
    clean = _run(root, model_dir, "clean")
    seen = []
    _fail_first_call(monkeypatch, decoding, "decode", seen)
    faulty = _run(root, model_dir, "faulty")
    assert seen == [1]
    assert faulty == clean and len(clean) == 26


def test_transient_inference_failure_is_retried(inputs, monkeypatch):
    root, model_dir = inputs
    clean = _run(root, model_dir, "clean")
    seen = []
    _fail_first_call(monkeypatch, inference.ChunkModelHandler, "run_inference", seen)
    faulty = _run(root, model_dir, "faulty")
    assert seen == [1]
    assert faulty == clean

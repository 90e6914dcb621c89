"""Packaging facts Dataflow depends on: the sdist carries code and the default
model, and the worker images pin the same Beam and Python as setup.py."""
import os
import re
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = "models/brain-tumor-cnn/3"


def _setup_py():
    return open(os.path.join(REPO, "setup.py")).read()


@pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, DEFAULT_MODEL)), reason="no committed model yet")
def test_sdist_contains_packages_and_default_model(tmp_path):
    # What Beam runs for --setup_file: `python setup.py sdist`.
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True)
    (sdist,) = list(tmp_path.glob("*.tar.gz"))
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for needed in ("setup.py", "trainer/preprocessing.py", "trainer/artifact.py", "beam_pipeline/run.py",
                   "beam_pipeline/transforms.py", f"{DEFAULT_MODEL}/model.keras", f"{DEFAULT_MODEL}/metadata.json", f"{DEFAULT_MODEL}/SHA256SUMS",
                   f"{DEFAULT_MODEL}/model.onnx", f"{DEFAULT_MODEL}/ood_reference.npz",
                   f"{DEFAULT_MODEL}/model_card.md"):
        assert needed in names, needed
    assert not any("_work" in n or n.startswith("tests/") for n in names)


def test_docker_images_pin_setup_versions():
    dockerfile = open(os.path.join(REPO, "Dockerfile")).read()
    beam = re.search(r"^ARG BEAM_VERSION=(\S+)", dockerfile, re.M).group(1)
    python = re.search(r"^ARG PYTHON_VERSION=(\S+)", dockerfile, re.M).group(1)
    lo, hi = re.search(r'"apache-beam\[gcp\]>=([\d.]+),<([\d.]+)"', _setup_py()).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(lo) <= as_tuple(beam) < as_tuple(hi)
    py_lo, py_hi = re.search(r'python_requires=">=([\d.]+),<([\d.]+)"', _setup_py()).groups()
    assert as_tuple(py_lo) <= as_tuple(python) < as_tuple(py_hi)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == python, \
        "CI and the worker image should run the same Python"
    assert "ENTRYPOINT [\"/opt/apache/beam/boot\"]" in dockerfile
    assert "COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam" in dockerfile

"""Packaging facts Dataflow and the images depend on: the sdist and the wheel carry the code and the
default model, the worker images pin the Beam and Python of pyproject.toml, and the trainer runs without Beam."""
import os
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest

from beam_pipeline import model_store

try:
    import tomllib
except ImportError:  # Python 3.10: the TOML reader pip itself uses
    from pip._vendor import tomli as tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = f"models/{model_store.DEFAULT_MODEL_PATH}"
MODEL_FILES = ("model.keras", "metadata.json", "SHA256SUMS", "model.onnx", "ood_reference.npz", "model_card.md")
needs_model = pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, DEFAULT_MODEL)), reason="no committed model yet")


def _project():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


@needs_model
def test_sdist_contains_packages_and_default_model(tmp_path):
    # What Beam runs for --setup_file when `build` is not installed: `python setup.py sdist`.
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True)
    (sdist,) = list(tmp_path.glob("*.tar.gz"))
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for needed in ("setup.py", "pyproject.toml", "screening_core/preprocessing.py", "screening_core/artifact.py",
                   "beam_pipeline/run.py", "beam_pipeline/stages/score.py", "models/__init__.py",
                   *(f"{DEFAULT_MODEL}/{f}" for f in MODEL_FILES)):
        assert needed in names, needed
    assert not any("_work" in n or n.startswith("tests/") or n.endswith("gradcam_sample.png") for n in names)
    assert _model_versions(names, "models/") == {model_store.DEFAULT_MODEL_PATH}  # not every version (241 MB)


def _model_versions(names, prefix):
    """The <name>/<version> folders of models among archive member names under `prefix`."""
    return {"/".join(n[len(prefix):].split("/")[:2]) for n in names
            if n.startswith(prefix) and len(n[len(prefix):].split("/")) >= 3}


@needs_model
def test_wheel_installs_the_default_model_as_package_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), REPO], check=True, capture_output=True)
    (wheel,) = list(tmp_path.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in MODEL_FILES:
        assert f"brain_screening_models/{model_store.DEFAULT_MODEL_PATH}/{f}" in names, f
    assert {"beam_pipeline/run.py", "beam_pipeline/stages/score.py", "trainer/task.py"} <= names
    assert not any("_work/" in n or n.endswith("gradcam_sample.png") for n in names)
    assert _model_versions(names, "brain_screening_models/") == {model_store.DEFAULT_MODEL_PATH}
    # Installed from the wheel (outside the source tree), the pipeline finds its default model there.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = "from beam_pipeline import model_store; print(model_store.DEFAULT_MODEL)"
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("BRAIN_SCREENING_MODEL", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.startswith(str(target)) and os.path.exists(os.path.join(out, "model.keras")), out


@needs_model
def test_the_worker_images_models_folder_holds_the_default_model_only(tmp_path):
    """setup.py reads the default from model_store (one place names it) and the Dockerfile's worker stages copy
    models/ through its copy_default_model: the sealed default, nothing else."""
    import importlib.util

    from screening_core import artifact
    spec = importlib.util.spec_from_file_location("project_setup", os.path.join(REPO, "setup.py"))
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # not __main__: nothing is built
    assert setup.default_model_path() == model_store.DEFAULT_MODEL_PATH.replace(os.sep, "/")
    out = setup.copy_default_model(os.path.join(REPO, "models"), str(tmp_path / "models"))
    artifact.verify(out)
    names = [os.path.relpath(os.path.join(d, f), tmp_path).replace(os.sep, "/")
             for d, _, files in os.walk(tmp_path) for f in files]
    assert _model_versions(names, "models/") == {model_store.DEFAULT_MODEL_PATH}
    assert {"models/__init__.py", "models/README.md"} <= set(names)
    dockerfile = open(os.path.join(REPO, "Dockerfile")).read()
    assert "copy_default_model" in dockerfile
    for stage in ("worker", "worker-gpu"):  # the scoring images take models/ from that stage, never the whole folder
        body = re.search(rf"^FROM \S+ AS {stage}$(.*?)(?=^FROM )", dockerfile, re.M | re.S).group(1)
        assert "COPY models " not in body and "COPY --from=default-model" in body, stage
    with pytest.raises(SystemExit, match="DEFAULT_MODEL_PATH"):
        (tmp_path / "bad" / "beam_pipeline").mkdir(parents=True)
        (tmp_path / "bad" / "beam_pipeline" / "model_store.py").write_text('DEFAULT_MODEL_PATH = "x/1"\n')
        setup.default_model_path(str(tmp_path / "bad"))


def test_trainer_needs_no_beam():
    """The trainer image carries no Beam: importing the training entry point must not need it."""
    blocked = ["apache_beam", "pyarrow", "onnxruntime", "dicomweb_client", "highdicom"]
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {blocked!r}: raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import trainer.task, trainer.train, trainer.ood, screening_core.gradcam, trainer.evaluation\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_docker_images_pin_project_versions():
    dockerfile = open(os.path.join(REPO, "Dockerfile")).read()
    beam = re.search(r"^ARG BEAM_VERSION=(\S+)", dockerfile, re.M).group(1)
    python = re.search(r"^ARG PYTHON_VERSION=(\S+)", dockerfile, re.M).group(1)
    project = _project()
    deps = {re.split(r"[\[<>=]", d, maxsplit=1)[0]: d for d in project["dependencies"]}
    lo, hi = re.search(r">=([\d.]+),<([\d.]+)", deps["apache-beam"]).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(lo) <= as_tuple(beam) < as_tuple(hi)
    py_lo, py_hi = re.search(r">=([\d.]+),<([\d.]+)", project["requires-python"]).groups()
    assert as_tuple(py_lo) <= as_tuple(python) < as_tuple(py_hi)
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in dockerfile
    assert "COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam" in dockerfile
    # Every base image is a fixed tag or a digest argument; no :latest.
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, re.M))
    for base in re.findall(r"^FROM (\S+)", dockerfile, re.M):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
        if image == "${LAUNCHER_BASE}":
            continue  # no default: the builder passes a verified digest
        assert not image.endswith(":latest") and (re.search(r":[\w.-]+$", image) or "@sha256:" in image) \
            or image in {"worker", "beam-sdk", "requirements"}, base
    # Dependencies are installed before the code is copied in (a code edit does not reinstall TensorFlow).
    for stage in re.split(r"^FROM ", dockerfile, flags=re.M)[1:]:
        if "pip install" in stage and "COPY screening_core" in stage:
            assert stage.index("-c /tmp/constraints.txt") < stage.index("COPY screening_core"), stage.split()[0]


def test_constraints_pin_every_dependency_exactly():
    pins = {}
    for line in open(os.path.join(REPO, "requirements", "constraints.txt")):
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    project = _project()
    wanted = project["dependencies"] + [d for k, v in project["optional-dependencies"].items() if k != "gpu"
                                        for d in v if not d.startswith("brain-mri-screening")]
    for dep in wanted:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=;]", dep, maxsplit=1)[0].strip().lower())
        assert name in pins, f"{name} is not pinned in requirements/constraints.txt"


def _imports(package):
    """{imported top-level package: files of `package` importing it}, relative imports excluded."""
    import ast
    import glob
    used = {}
    for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                tops = {node.module.split(".")[0]}
            elif isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            else:
                continue
            for top in tops:
                used.setdefault(top, set()).add(os.path.relpath(path, REPO))
    return used


def test_dependencies_point_into_the_serving_core_and_never_back():
    """trainer -> screening_core <- beam_pipeline: the scoring worker needs no training code, the core
    neither package, and no circle can form."""
    pipeline, core, trainer = _imports("beam_pipeline"), _imports("screening_core"), _imports("trainer")
    assert "trainer" not in pipeline, f"beam_pipeline imports training code: {sorted(pipeline['trainer'])}"
    assert not {"trainer", "beam_pipeline"} & set(core), {k: core[k] for k in ("trainer", "beam_pipeline") if k in core}
    assert "beam_pipeline" not in trainer, f"the trainer imports the pipeline: {sorted(trainer['beam_pipeline'])}"
    assert "screening_core" in pipeline and "screening_core" in trainer


def _module_graph(packages=("trainer", "beam_pipeline", "screening_core")):
    """{module: project modules it imports anywhere (function-level imports too)}."""
    import ast
    import glob
    files = {}
    for package in packages:
        for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True):
            name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            files[name] = path
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        # a module's own package (__init__) is not an edge: it runs first whatever the order
        graph[name] = {t for t in targets if t in files and t != name and not name.startswith(t + ".")}
    return graph


def _circles(graph):
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_a_circle():
    """Deferred imports hid three circles (train <-> evaluation, lesion_train <-> lesion_eval,
    export <-> ood); each now has one direction."""
    assert _circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]  # the check itself
    assert _circles(_module_graph()) == []


def test_the_scoring_job_imports_without_the_training_package(tmp_path):
    """What the worker images hold (Dockerfile: no trainer/ folder): the job's modules import and
    nothing pulls the training package in."""
    import shutil
    for name in ("screening_core", "beam_pipeline"):
        shutil.copytree(os.path.join(REPO, name), tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; import beam_pipeline.run, beam_pipeline.stages.score, beam_pipeline.validate; "
            "assert 'trainer' not in sys.modules, sorted(m for m in sys.modules if m.startswith('trainer'))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

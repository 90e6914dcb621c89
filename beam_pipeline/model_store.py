"""Fetch a model artifact (local path or gs://) to local disk and verify it.

Keras loads `.keras` files from local paths, so a remote artifact is copied
with Beam's FileSystems (the same IO the pipeline uses, GCS included) into a
per-process cache directory, then checked against its sha256 by
`screening_core.artifact`, the single definition of the artifact format.
"""
import functools
import os
import tempfile
import threading

from apache_beam.io.filesystems import FileSystems

from screening_core import artifact

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The one place the default model is named; models/README.md describes it.
DEFAULT_MODEL_PATH = os.path.join("brain-tumor-cnn", "44")


def member_allowed(metadata, allowed, verb):
    """The artifact's member note (None for a screening model); ArtifactError for an ensemble's member unless
    `allowed` (--allow-member-model). `verb`: what the tool would do with the ensemble instead ("Score")."""
    note = artifact.member_note(metadata)
    if note and not allowed:
        raise artifact.ArtifactError(f"{note}. {verb} the ensemble instead (the default model), or pass "
                                     "--allow-member-model for research")
    return note


def _default_model():
    """The committed model: $BRAIN_SCREENING_MODEL (worker images), else the installed
    `brain_screening_models` package (the repository's models/ folder in a source
    checkout or an editable install; package data in a wheel or a Dataflow sdist)."""
    if os.environ.get("BRAIN_SCREENING_MODEL"):
        return os.environ["BRAIN_SCREENING_MODEL"]
    try:
        import brain_screening_models
        root = os.path.dirname(os.path.abspath(brain_screening_models.__file__))
    except ImportError:  # running from a source tree that was never installed
        root = os.path.join(REPO_ROOT, "models")
    if not os.path.isdir(os.path.join(root, DEFAULT_MODEL_PATH)):
        root = os.path.join(REPO_ROOT, "models")
    return os.path.join(root, DEFAULT_MODEL_PATH)


DEFAULT_MODEL = _default_model()

_FILES = (artifact.METADATA_FILE, artifact.MODEL_FILE, artifact.SUMS_FILE)


def _is_local(uri):
    return "://" not in uri


@functools.lru_cache(maxsize=4)
def stage(uri):
    """Local directory holding the artifact at `uri` (copied once per process)."""
    if _is_local(uri):
        if not os.path.isdir(uri):
            raise artifact.ArtifactError(f"model artifact {uri} does not exist")
        return uri
    local = tempfile.mkdtemp(prefix="model-")
    for name in _FILES + artifact.OPTIONAL_SEALED_FILES:
        src = uri.rstrip("/") + "/" + name
        if not FileSystems.exists(src):
            if name in artifact.OPTIONAL_SEALED_FILES:
                continue
            raise artifact.ArtifactError(f"model artifact {uri} has no {name}")
        with FileSystems.open(src) as fin, open(os.path.join(local, name), "wb") as fout:
            while True:
                block = fin.read(1 << 20)
                if not block:
                    break
                fout.write(block)
    return local


def metadata(uri):
    """Verified metadata (sha256 checked) of the artifact at `uri`."""
    return artifact.verify(stage(uri))


def load_reference(uri):
    """The artifact's OOD reference (trainer/ood.py), or None for an artifact without one."""
    from screening_core import ood
    local = stage(uri)
    md = artifact.verify(local)
    path = ood.reference_path(local)
    if not md.get("ood"):
        return None
    if not os.path.exists(path):
        raise artifact.ArtifactError(f"model {uri}: metadata.json names an OOD reference but "
                                     f"{ood.REFERENCE_FILE} is missing")
    return ood.Reference.load(path)


def check_model_matches_metadata(uri, engine="tensorflow"):
    """Open the model the job will score with, once, before the job starts: a model whose input
    shape is not the one metadata.json declares would otherwise fail inside scoring, on every worker.

    With ONNX Runtime the ONNX graph is opened, not model.keras, so a CPU run never imports
    TensorFlow in the launcher (5 s of a 30 s job)."""
    md = metadata(uri)
    spec = md["input_spec"]
    want = (spec["height"], spec["width"], spec.get("channels", 1))
    if engine == "onnxruntime":
        import onnxruntime as ort
        local = stage(uri)
        artifact.check_onnx_binding(local, md)
        session = ort.InferenceSession(os.path.join(local, md["engines"]["onnxruntime"]["file"]),
                                       providers=["CPUExecutionProvider"])
        got = tuple(session.get_inputs()[0].shape[1:])
        outputs = [tuple(session.get_outputs()[0].shape[1:])]
    else:
        model, _ = load(uri)
        got = tuple(model.input_shape[1:])
        outputs = [tuple(o.shape[1:]) for o in model.outputs]
    if got != want:
        raise artifact.ArtifactError(f"model {uri} takes inputs of shape {got} but its metadata.json declares "
                                     f"{want}; the artifact is inconsistent")
    if outputs[0] != (1,) or (engine != "onnxruntime" and len(outputs) != 1):
        raise artifact.ArtifactError(f"model {uri} must have one probability output of shape (1,), has {outputs}")


_loaded = {}  # {(local folder, model sha256): Keras model}: the last model this process loaded
_loading = threading.Lock()


def load(uri):
    """(model, metadata), verified on every call; one Keras model per process while the artifact is
    unchanged: the launcher's check, an in-process scorer and Grad-CAM share it instead of
    deserialising one each (a small local run loaded the same model two or three times)."""
    local = stage(uri)
    md = artifact.verify(local)  # metadata read afresh: a re-chosen threshold is not a new model
    key = (os.path.abspath(local), md["model_sha256"])
    with _loading:
        if key not in _loaded:
            _loaded.clear()  # keep one: a long-lived process scoring with a new model frees the old
            _loaded[key] = artifact.load(local)[0]
        return _loaded[key], md


def resolve(uri):
    """The artifact directory a user meant by `uri`; (directory, note or None).

    Accepts the version directory itself, its model.keras file, and (local)
    a name folder holding integer versions, which means the newest one.
    """
    if uri.endswith(artifact.MODEL_FILE):
        return uri[: -len(artifact.MODEL_FILE)].rstrip("/\\") or ".", f"--model {uri}: using its folder"
    if _is_local(uri) and os.path.isdir(uri) and not os.path.exists(os.path.join(uri, artifact.METADATA_FILE)):
        versions = sorted(int(v) for v in os.listdir(uri)
                           if v.isdigit() and os.path.exists(os.path.join(uri, v, artifact.METADATA_FILE)))
        if versions:
            chosen = os.path.join(uri, str(versions[-1]))
            return chosen, f"--model {uri}: versions {versions} found; using the newest, {chosen}"
        raise artifact.ArtifactError(f"{uri} has no {artifact.METADATA_FILE} and no version folders "
                                     f"(<name>/<integer>/{artifact.METADATA_FILE}); entries: "
                                     f"{sorted(os.listdir(uri))[:10]}")
    return uri, None

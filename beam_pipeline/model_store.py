"""Fetch a model artifact (local path or gs://) to local disk and verify it.

Keras loads `.keras` files from local paths, so a remote artifact is copied
with Beam's FileSystems (the same IO the pipeline uses, GCS included) into a
per-process cache directory, then checked against its sha256 by
`trainer.artifact`, the single definition of the artifact format.
"""
import functools
import os
import tempfile

from apache_beam.io.filesystems import FileSystems

from trainer import artifact

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(REPO_ROOT, "models", "brain-tumor-cnn", "1")

_FILES = (artifact.METADATA_FILE, artifact.MODEL_FILE)


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
    for name in _FILES:
        src = uri.rstrip("/") + "/" + name
        if not FileSystems.exists(src):
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


def load(uri):
    return artifact.load(stage(uri))

"""Shared test set-up: a per-session pseudonym key and a GCS emulator.

The CPU is not split into logical devices here: MirroredStrategy over two CPU replicas is tested through
the real entry point (`python -m trainer.task --cpu-replicas 2`) in a fresh process, where a split made
by the test harness would hide a trainer that splits it too late."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Test processes (pytest-xdist) share the vCPUs out, as `--inference-threads` does for scoring processes:
# TensorFlow's and OpenMP/BLAS pools otherwise each take every vCPU and spin-wait against one another
# (measured on 2 vCPUs, 2 workers: 216 -> 187 s for the suite, 341 -> 308 CPU-s). Subprocesses inherit it.
_threads = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
for _var in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, _threads)
# Path pseudonyms use a key made for this test session, never the user's own.
import tempfile  # noqa: E402

os.environ["BRAIN_SCREENING_PSEUDONYM_KEY"] = os.path.join(tempfile.mkdtemp(prefix="pseudonym-"), "key")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Modules with the most test time on 2 vCPUs (pytest --durations=0, 2026-12-04: 48-16 s each, 519 s in all),
# collected first: under --dist loadscope a module runs on one worker, and a long one handed out last
# keeps that worker busy while the others are idle.
_LONGEST_FIRST = ("test_dicomweb_hostile", "test_atomic_output", "test_training", "test_dicomweb",
                  "test_lesion_model", "test_cli", "test_reruns", "test_engines", "test_pipeline",
                  "test_output_state", "test_conservation", "test_site_validation", "test_hostile_inputs")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))  # stable


# ---- a real GCS-API server on loopback (gcp-storage-emulator), shared by tests ----
import socket  # noqa: E402

import pytest  # noqa: E402

BUCKET = "hospital-archive"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """gcp-storage-emulator on a fixed loopback port; restartable (in memory)."""

    def __init__(self):
        self.port = _free_port()
        self.server = None

    def start(self):
        from gcp_storage_emulator.server import create_server
        self.server = create_server("127.0.0.1", self.port, in_memory=True, default_bucket=BUCKET)
        self.server.start()

    def stop(self):
        self.server.stop()

    def restart(self):
        self.start()


@pytest.fixture(scope="session")
def gcs(monkeypatch_session):
    emulator = Emulator()
    emulator.start()
    monkeypatch_session.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{emulator.port}")
    monkeypatch_session.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    monkeypatch_session.setenv("NO_GCE_CHECK", "True")  # no metadata-server probe
    # Beam looks for Application Default Credentials with retries (~30 s) and, on a
    # machine without any, connects anonymously; start from that conclusion.
    from apache_beam.internal.gcp import auth
    monkeypatch_session.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch_session.setattr(auth._Credentials, "_credentials", None)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def upload(local_dir, prefix):
    from google.cloud import storage
    bucket = storage.Client.create_anonymous_client().bucket(BUCKET)
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
            bucket.blob(f"{prefix}/{rel}").upload_from_filename(path)


@pytest.fixture(autouse=True)
def _fresh_pacs_breaker():
    """Each test starts with every PACS presumed answering: the breaker (beam_pipeline/dicomweb.py) is per
    process, and a silent test server's port may be handed to a later test's server."""
    from beam_pipeline import dicomweb
    dicomweb.BREAKER = dicomweb._Breaker()
    yield

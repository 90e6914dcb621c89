"""Split the CPU into two logical devices before TensorFlow starts, so the
training tests can run MirroredStrategy with two replicas on any machine."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Path pseudonyms use a key made for this test session, never the user's own.
import tempfile  # noqa: E402

os.environ["BRAIN_SCREENING_PSEUDONYM_KEY"] = os.path.join(tempfile.mkdtemp(prefix="pseudonym-"), "key")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


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

"""A real PACS for the tests: Orthanc with its DICOMweb plugin, on a loopback port.

Debian's packages (`orthanc`, `orthanc-dicomweb`; `make test` installs them like
Chromium). The server runs unprivileged from a JSON config in a temporary
folder and is stopped afterwards; without the packages the tests are skipped
and say why.
"""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
SKIP_REASON = ("Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc and orthanc-dicomweb; "
               "`make test` installs them when it can use apt-get)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available():
    return os.path.exists(BINARY) and os.path.exists(PLUGIN)


def start(root, users=None):
    """Start Orthanc with its data under `root`; returns (base URL, process). Raises if it does not come up.

    `users` ({name: password}): HTTP basic authentication required for every request."""
    port = _free_port()
    config = {"Name": "brain-screening-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
              "HttpPort": port, "DicomServerEnabled": False, "DicomPort": _free_port(),
              "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
              "Plugins": [PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "w")
    proc = subprocess.Popen([BINARY, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/system", timeout=1) as r:
                if r.status == 200:
                    return url, proc
        except urllib.error.HTTPError as e:
            if e.code == 401 and users:  # up, and asking for the login it was configured with
                return url, proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
        time.sleep(0.2)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    proc.log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not available():
        pytest.skip(SKIP_REASON)
    try:
        url, proc = start(tmp_path_factory.mktemp("orthanc"))
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield url
    finally:
        stop(proc)


def upload(url, dicom_bytes, auth=None):
    """Store one instance through Orthanc's REST API; returns its answer. `auth`: (user, password)."""
    headers = {"Content-Type": "application/dicom"}
    if auth:
        import base64
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(f"{url}/instances", data=dicom_bytes, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())

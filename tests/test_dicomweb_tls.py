"""`dicomwebs://` to a PACS whose certificate the hospital's own CA signed: always verified, trusted only
through the CA bundle docs/pacs.md documents (REQUESTS_CA_BUNDLE)."""
import shutil
import ssl
import subprocess
import threading
from http.server import ThreadingHTTPServer

import pytest

from beam_pipeline import run
from tests import rows as rows_mod
from tests import tiny_model
from tests.test_dicomweb_hostile import _Handler


@pytest.fixture()
def tls_pacs(tmp_path):
    """(host:port, CA bundle) of a loopback DICOMweb server on HTTPS with a self-signed certificate."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is not installed (Debian package openssl): it makes the test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    _Handler.reset(("ok", "ok"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", str(cert)
    server.shutdown()
    _Handler.reset()


def test_an_unknown_certificate_stops_the_job_and_the_ca_bundle_lets_it_through(tls_pacs, tmp_path, monkeypatch,
                                                                               capsys):
    host, ca = tls_pacs
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    argv = ["--input", f"dicomwebs://{host}/dicom-web", "--model", model_dir, "--keep-paths",
            "--keep-accession-numbers"]
    # Verification is always on: a certificate no trusted CA signed stops the job before any work.
    assert run.main(argv + ["--output", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "does not answer" in err and "SSL" in err
    assert not (tmp_path / "refused" / "results").exists()
    # With the hospital's CA bundle the same night scores every instance, over HTTPS.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
    out = tmp_path / "trusted"
    assert run.main(argv + ["--output", str(out)]) == 0
    rows = rows_mod.images(out)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["source_uri"].startswith("dicomwebs://") for r in rows)

"""A PACS that needs a login: credentials from a private file, never from or into a URI, row, manifest or log."""
import io
import os

import pydicom
import pytest
from pydicom.uid import generate_uid

from beam_pipeline import run, sample_data
from tests import orthanc as orthanc_mod
from tests import rows as rows_mod
from tests import tiny_model

USER, PASSWORD = "radiology", "S3cret-Pw-4711"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """(Orthanc URL, study UID) of an Orthanc that answers only to USER:PASSWORD, holding one 2-image study."""
    if not orthanc_mod.available():
        pytest.skip(orthanc_mod.SKIP_REASON)
    url, proc = orthanc_mod.start(tmp_path_factory.mktemp("orthanc-auth"), users={USER: PASSWORD})
    try:
        study, series = generate_uid(), generate_uid()
        for n in range(2):
            ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(
                sample_data.synthetic_slice(n, 48, lesion=bool(n)), 1, study, series, n + 1)))
            ds.StudyDate = "20261201"
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            orthanc_mod.upload(url, buf.getvalue(), auth=(USER, PASSWORD))
        yield url, study
    finally:
        orthanc_mod.stop(proc)


def _credentials(path, text, mode=0o600):
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return str(path)


def _holding(folder, needle):
    return sorted(os.path.join(r, n) for r, _, files in os.walk(folder) for n in files
                  if needle in open(os.path.join(r, n), "rb").read())


def test_credentials_file_logs_in_and_the_secret_reaches_no_output(secured, tmp_path, capsys):
    url, _ = secured
    host = url.split("://", 1)[1]
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    creds = _credentials(tmp_path / "pacs.cred", f"{USER}:{PASSWORD}")
    out = tmp_path / "out"
    argv = ["--input", f"dicomweb://{host}/dicom-web?StudyDate=20261201", "--output", str(out), "--model", model_dir,
            "--manifest", str(tmp_path / "manifest.json")]
    assert run.main(argv) == 2  # no login: QIDO-RS answers 401, the job stops before any work
    assert "does not answer" in capsys.readouterr().err
    assert run.main(argv + ["--dicomweb-credentials", creds]) == 0
    rows = rows_mod.images(out)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    console = capsys.readouterr()
    assert PASSWORD not in console.out + console.err
    assert _holding(out, PASSWORD.encode()) == [] and _holding(tmp_path / "manifest.json", PASSWORD.encode()) == []
    assert _holding(out, USER.encode()) == []


def test_credentials_in_a_uri_or_a_readable_file_are_refused(secured, tmp_path, capsys):
    url, _ = secured
    host = url.split("://", 1)[1]
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out = str(tmp_path / "out")
    assert run.main(["--input", f"dicomweb://{USER}:{PASSWORD}@{host}/dicom-web", "--output", out,
                     "--model", model_dir]) == 2
    err = capsys.readouterr().err
    assert "--dicomweb-credentials" in err and PASSWORD not in err
    loose = _credentials(tmp_path / "loose.cred", f"{USER}:{PASSWORD}", mode=0o644)
    assert run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", out, "--model", model_dir,
                     "--dicomweb-credentials", loose]) == 2
    err = capsys.readouterr().err
    assert "chmod 600" in err and PASSWORD not in err
    wrong = _credentials(tmp_path / "wrong.cred", f"{USER}:not-it")
    assert run.main(["--input", f"dicomweb://{host}/dicom-web", "--output", out, "--model", model_dir,
                     "--dicomweb-credentials", wrong]) == 2
    assert "not-it" not in capsys.readouterr().err

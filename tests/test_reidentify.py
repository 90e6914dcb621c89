"""An authorised reader gets from every pseudonym on the worklist to the exam in one step, while the
tables and the promoted report stay pseudonymised."""
import io
import zipfile

import pydicom

from beam_pipeline import reidentify, run, sample_data
from tests import rows as rows_mod
from tests import synth, tiny_model


def _exam(tmp_path):
    folder = tmp_path / "exports" / "SMITH_JOHN_MRN4711"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "exam.zip", "w") as zf:
        for n in range(3):
            ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(synth.brain_slice(n, 48), 0, "1.2.3.9",
                                                                    "1.2.3.9.1", n + 1)))
            ds.AccessionNumber, ds.StudyDate = "ACC-20261201-77", "20261201"
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            zf.writestr(f"{n}.dcm", buf.getvalue())
    return tmp_path / "exports"


def test_resolve_and_the_reading_room_report(tmp_path, capsys):
    exports = _exam(tmp_path)
    key = tmp_path / "key"
    out = tmp_path / "out"
    run.main(["--input", str(exports), "--output", str(out), "--pseudonym-key-file", str(key),
              "--model", tiny_model.write_tiny_artifact(tmp_path, threshold=1e-6)])
    rows = rows_mod.images(out)
    acc = rows[0]["accession_number"]
    assert acc.startswith("p-") and "ACC-" not in str(rows) and "SMITH" not in str(rows)
    capsys.readouterr()
    base = ["--pseudonym-key-file", str(key), "--input", str(exports)]
    assert reidentify.main(["resolve", *base, acc, "p-000000000000"]) == 1  # one is not ours: exit 1
    printed = capsys.readouterr().out
    assert f"{acc}\tACC-20261201-77\t(accession number, study date 20261201, StudyInstanceUID 1.2.3.9)" in printed
    assert "p-000000000000\tnot found" in printed
    folder_pseudonym = rows[0]["source_uri"].split("/")[-2]
    assert reidentify.main(["resolve", *base, folder_pseudonym]) == 0
    assert "SMITH_JOHN_MRN4711" in capsys.readouterr().out
    page_path = tmp_path / "reading-room.html"
    assert reidentify.main(["report", *base, str(out), "--to", str(page_path)]) == 0
    page = page_path.read_text()
    assert "exam ACC-20261201-77" in page and acc not in page and "Reading-room copy" in page
    promoted = open(rows_mod.result_file(out, "report.html")).read()
    assert acc in promoted and "ACC-20261201-77" not in promoted  # the promoted report stays pseudonymised
    assert reidentify.main(["report", *base, str(out), "--to", str(out / "results" / "rr.html")]) == 2


def test_brain_score_writes_the_reading_room_copy_when_asked(tmp_path, capsys):
    exports = _exam(tmp_path)
    out, room = tmp_path / "out", tmp_path / "reading-room" / "today.html"
    room.parent.mkdir()
    argv = ["--input", str(exports), "--pseudonym-key-file", str(tmp_path / "key"),
            "--model", tiny_model.write_tiny_artifact(tmp_path, threshold=1e-6)]
    assert run.main(argv + ["--output", str(out / "inside"), "--reading-room", str(out / "inside" / "r.html")]) == 2
    assert "is inside the output" in capsys.readouterr().err
    assert run.main(argv + ["--output", str(out), "--reading-room", str(room)]) == 0
    assert f"reading room {room}" in capsys.readouterr().out
    assert "exam ACC-20261201-77" in room.read_text()
    assert "ACC-20261201-77" not in open(rows_mod.result_file(out, "report.html")).read()


def test_a_pacs_it_cannot_search_or_a_password_in_the_uri_is_a_clear_error(tmp_path, capsys):
    """The reader's tool refuses credentials in a URI (they would be shown) and says why a PACS could not
    be searched instead of printing a traceback."""
    import socket
    key = tmp_path / "key"
    key.write_text("ab" * 32)
    base = ["resolve", "--pseudonym-key-file", str(key), "p-000000000000"]
    assert reidentify.main([*base, "--input", "dicomweb://reader:s3cret@127.0.0.1:9/dicom-web"]) == 2
    err = capsys.readouterr().err
    assert "--dicomweb-credentials" in err and "s3cret" not in err
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert reidentify.main([*base, "--input", f"dicomweb://127.0.0.1:{port}/dicom-web"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DICOMweb search failed:") and "Traceback" not in err

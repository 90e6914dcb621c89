"""Series descriptions keep the MRI words a radiologist needs and nothing a site typed about the patient."""
import io
import os
import zipfile

import pytest

from beam_pipeline import free_text, run, sample_data
from tests import rows as rows_mod
from tests import synth, tiny_model


@pytest.mark.parametrize("text,want", [
    ("AX FLAIR", "AX FLAIR"),
    ("T1 POST GAD", "T1 POST GAD"),
    ("SMITH^JOHN MRN 12345678 T2", "T2"),
    ("t1_mprage_sag_p2_iso", "T1 MPRAGE SAG ISO"),
    ("Doe, Jane 19650304 Ax T2* GRE 5mm", "AX T2* GRE 5MM"),
    ("DWI b1000 TRACE", "DWI B1000 TRACE"),
    ("", ""),
    (None, None),
])
def test_scrub_keeps_mri_vocabulary_only(text, want):
    assert free_text.scrub_description(text) == want


def _zip_with_description(path, description):
    import pydicom
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(2):
            ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(synth.brain_slice(i, 32, lesion=True), 0,
                                                                    "1.2.3", "1.2.3.4", i + 1)))
            ds.SeriesDescription = description
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            zf.writestr(f"im{i}.dcm", buf.getvalue())


def test_a_name_and_mrn_in_the_series_description_reach_no_output(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path, threshold=1e-6)  # everything flagged: every output written
    _zip_with_description(tmp_path / "s.zip", "SMITH^JOHN MRN 12345678 AX FLAIR")
    out = tmp_path / "out"
    assert run.main(["--input", str(tmp_path / "s.zip"), "--output", str(out), "--model", model_dir]) == 0
    assert {r["series_description"] for r in rows_mod.images(out)} == {"AX FLAIR"}
    assert _files_holding(out, b"SMITH") == _files_holding(out, b"12345678") == []
    kept = tmp_path / "kept"
    assert run.main(["--input", str(tmp_path / "s.zip"), "--output", str(kept), "--model", model_dir,
                     "--keep-series-descriptions"]) == 0
    assert {r["series_description"] for r in rows_mod.images(kept)} == {"SMITH^JOHN MRN 12345678 AX FLAIR"}
    # The byte search above can see the text: with the opt-in it finds it in the tables and the report.
    found = _files_holding(kept, b"SMITH")
    assert any(f.endswith(".parquet") for f in found) and "report.html" in found


def _files_holding(out, needle):
    result = os.path.dirname(rows_mod.result_file(out, "x"))
    return sorted(name for root, _, files in os.walk(result) for name in files
                  if needle in open(os.path.join(root, name), "rb").read())


def test_error_messages_never_quote_header_values(tmp_path, capfd):
    import warnings

    import pydicom
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(synth.brain_slice(1, 32), 0, "1.2.3", "1.2.3.4", 1)))
    ds.PhotometricInterpretation = "SMITH^JOHN"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    (tmp_path / "bad.dcm").write_bytes(buf.getvalue())
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.main(["--input", str(tmp_path / "bad.dcm"), "--output", str(out), "--model", model_dir])
    assert not [w for w in caught if "SMITH" in str(w.message)]  # pydicom's "Invalid value ... 'SMITH^JOHN'"
    assert "SMITH" not in capfd.readouterr().err
    (row,) = rows_mod.images(out)
    assert row["status"] == "error" and row["error_message"]
    assert "SMITH" not in row["error_message"] and "<withheld>" in row["error_message"]
    assert _files_holding(out, b"SMITH") == []


def test_scrub_message_keeps_attribute_names():
    msg = "(0028,0004) 'Photometric Interpretation' value 'DOE^JANE' and member 'scans\\\\DOE_JANE\\\\1.dcm'"
    assert free_text.scrub_message(msg) == ("(0028,0004) 'Photometric Interpretation' value '<withheld>' and "
                                            "member '<withheld>'")

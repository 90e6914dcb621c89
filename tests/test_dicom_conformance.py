"""What write-back stores, checked by an independent DICOM validator (dicom3tools' dciodvfy).

highdicom builds the objects and pydicom reads them back in tests/test_dicomweb.py; neither checks
them against the IOD tables of the standard. dciodvfy does: a missing type 1/2 attribute, a wrong
VR or an enumerated value out of range is an "Error" line.
"""
import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from beam_pipeline import sample_data, schema, studies, write_back

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) is not installed; "
                                                         "make test installs it")
MODEL = {"model_name": "brain-tumor-cnn", "model_version": "7", "model_sha256": "ab" * 32}
# What dciodvfy may still say: the private scheme is not one of its defined terms (it is declared in the
# SR's Coding Scheme Identification Sequence, which dciodvfy does not read for this check)
ALLOWED_WARNINGS = ("Unrecognized defined term <99BRAINSCREEN>",)


def _evidence(n=3):
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(
            sample_data.synthetic_slice(i, 48, lesion=True), 1, study, series, i + 1)))
        ds.SeriesNumber, ds.SeriesDescription = 7, "AX FLAIR"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261203", "101500", "1", "ACC1"
        ds.PatientSex, ds.ReferringPhysicianName = "O", ""
        out.append(ds)
    return out


def _verify(ds, tmp_path, name):
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning") and not any(a in ln for a in ALLOWED_WARNINGS)]
    return lines, errors, warnings


@pytest.mark.parametrize("lesion_map", [False, True, "empty"])
def test_structured_report_passes_dciodvfy(tmp_path, lesion_map):
    """With a lesion-map model the report also says where to look first: the largest area the map outlines on
    one image (mm² with a pixel spacing) and a reference to that image; none where it outlined nothing."""
    evidence = _evidence()
    areas = {False: (None, None, None), True: (120.0, 900.0, 400.0), "empty": (0.0, 0.0, 0.0)}[lesion_map]
    rows = [{"sop_instance_uid": ds.SOPInstanceUID, "series_instance_uid": ds.SeriesInstanceUID,
             "tumor_probability": p, "predicted_label": schema.LABEL_TUMOR if p >= 0.5 else schema.LABEL_NO_TUMOR,
             "lesion_area_px": a, "lesion_area_mm2": a and a * 0.25, "frame_index": 0,
             "study_instance_uid": ds.StudyInstanceUID, "instance_number": int(ds.InstanceNumber),
             "source_uri": "dicomweb://pacs/dicom-web", "member_path": f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}"}
            for ds, p, a in zip(evidence, (0.1, 0.6, 0.93), areas, strict=True)]
    sr = write_back.build_sr(evidence, rows, MODEL, 0.5)
    lines, errors, warnings = _verify(sr, tmp_path, "sr")
    assert "ComprehensiveSR" in lines, lines  # dciodvfy recognised the IOD it checked against
    assert errors == [] and warnings == [], lines
    assert [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence] == [write_back.SCHEME]
    items = {i.name.value: i for i in sr.ContentSequence}
    if not lesion_map:
        assert "LARGEST_LESION_AREA" not in items and "LARGEST_LESION_IMAGE" not in items
        return
    if lesion_map == "empty":
        assert items["LARGEST_LESION_AREA"].value == 0.0 and "LARGEST_LESION_IMAGE" not in items
        return
    area = items["LARGEST_LESION_AREA"]
    assert area.value == 225.0 and area.unit.value == "mm2"
    assert items["LARGEST_LESION_IMAGE"].referenced_sop_instance_uid == evidence[1].SOPInstanceUID  # 900 px
    # two images tie: the SR points at the one the series and study tables name (image 2, before image 3)
    rows[2]["lesion_area_px"] = 900.0
    for ds, r, uid in zip(evidence[1:], rows[1:], ("1.2.826.0.1.1", "1.2.826.0.1.2"), strict=True):  # image 3's is larger
        ds.SOPInstanceUID = r["sop_instance_uid"] = uid
    items = {i.name.value: i for i in write_back.build_sr(evidence, rows, MODEL, 0.5).ContentSequence}
    acc = studies.SeriesCombineFn().create_accumulator()
    for r in rows:
        acc = studies.SeriesCombineFn().add_input(acc, {**r, "modality": "MR", "in_distribution": True})
    assert acc["lesion"][2] == "image 2"
    assert items["LARGEST_LESION_IMAGE"].referenced_sop_instance_uid == evidence[1].SOPInstanceUID


def test_overlay_secondary_capture_passes_dciodvfy(tmp_path):
    ref = _evidence(1)[0]
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    sc = write_back.build_overlay(ref, buf.getvalue(), MODEL, 0.5, 1)
    lines, errors, warnings = _verify(sc, tmp_path, "sc")
    assert "SCImage" in lines, lines
    assert errors == [] and warnings == [], lines
    assert sc.BodyPartExamined == "BRAIN"


def test_the_validator_does_find_a_broken_object(tmp_path):
    """The check above can fail: the same overlay without its SOP Class UID is an error."""
    ref = _evidence(1)[0]
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buf, "PNG")
    sc = write_back.build_overlay(ref, buf.getvalue(), MODEL, 0.5, 1)
    del sc.SOPClassUID
    _, errors, _ = _verify(sc, tmp_path, "broken")
    assert errors, "dciodvfy accepted an object without its SOP Class UID"

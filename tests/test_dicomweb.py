"""DICOMweb in: a real Orthanc loaded with generated MR studies, searched and scored by brain-score."""
import io
import json
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from beam_pipeline import run, sample_data
from tests import rows as rows_mod
from tests import tiny_model
from tests.orthanc import orthanc, upload  # noqa: F401  (orthanc is a fixture)


def _instance(patient, study, series, s, n, date, corrupt=False):
    arr = sample_data.synthetic_slice(n + 31 * patient, 48, lesion=bool(n % 2))
    ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(arr, patient, study, series, n)))
    ds.StudyDate = date
    ds.AccessionNumber = f"ACC{patient:05d}"
    ds.SeriesDescription = ("AX FLAIR", "AX T1 POST")[s]
    ds.SeriesNumber = 1 + s
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # axial
    if corrupt:
        ds.PixelData = ds.PixelData[:100]  # header says 48x48 16-bit; the pixels are cut
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return ds.SOPInstanceUID, buf.getvalue()


def _load(url):
    """3 studies (2 in November, 1 in October) x 2 series x 3 instances, one broken instance."""
    expected = {}
    for patient, date in ((1, "20261103"), (2, "20261120"), (3, "20261015")):
        study = generate_uid()
        for s in range(2):
            series = generate_uid()
            for n in range(3):
                corrupt = patient == 2 and s == 1 and n == 2
                sop, data = _instance(patient, study, series, s, n, date, corrupt)
                upload(url, data)
                expected[sop] = (date, corrupt)
    return expected


@pytest.fixture(scope="module")
def pacs(orthanc):  # noqa: F811
    """(Orthanc URL, {SOP Instance UID: (StudyDate, corrupt)}) once per module."""
    return orthanc, _load(orthanc)


def test_pacs_search_and_scoring(pacs, tmp_path, capsys):
    server, expected = pacs
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    host = server.split("://", 1)[1]
    out = tmp_path / "out"
    query = f"dicomweb://{host}/dicom-web?StudyDate=20261101-20261126&Modality=MR"
    assert run.main(["--input", query, "--output", str(out), "--model", model_dir,
                     "--dicomweb-max-parallel", "2", "--max-error-fraction", "0.2"]) == 0
    rows = rows_mod.images(out)
    november = {sop: v for sop, v in expected.items() if v[0].startswith("202611")}
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(november)
    assert len(rows) == len(november) == 12  # one row per instance, the broken one included
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(bad) == 1 and bad[0]["error_code"] == "dicom_corrupt"
    assert {r["modality"] for r in rows if r["status"] == "ok"} == {"MR"}
    assert all(r["study_instance_uid"] for r in rows if r["status"] == "ok")
    assert len(rows_mod.images(out, "series-*.parquet")) == 4  # 2 studies x 2 series
    studies = rows_mod.images(out, "studies-*.parquet")
    assert len(studies) == 2 and {s["n_series"] for s in studies} == {2}  # one row per StudyInstanceUID
    assert {s["study_date"] for s in studies} == {"20261103", "20261120"}
    assert all(s["accession_number"].startswith("p-") for s in studies)
    assert "FAKE-" not in repr(rows) and "DEMO^PATIENT" not in repr(rows) and "ACC0" not in repr(rows)
    assert {r["accession_number"][:2] for r in rows} == {"p-"}  # a keyed pseudonym, one per exam
    assert len({r["accession_number"] for r in rows}) == 2
    assert {r["series_description"] for r in rows} == {"AX FLAIR", "AX T1 POST"}
    assert {r["study_date"] for r in rows} == {"20261103", "20261120"}
    assert sorted({r["instance_number"] for r in rows}) == [0, 1, 2]
    assert bad[0]["sop_instance_uid"] and bad[0]["series_number"] in (1, 2)  # an error row still says which


def test_a_series_is_fetched_with_one_request(pacs, tmp_path, monkeypatch):
    """Orthanc answers WADO-RS series retrieval: every instance of a series comes from one request
    (bench/dicomweb_series_probe.py: 4-6x the per-instance rate), none one by one, same rows."""
    from beam_pipeline import dicomweb
    server, expected = pacs
    one_by_one, series_requests = [], []
    real_series = dicomweb.retrieve_series

    def retrieve(*args, **kwargs):
        one_by_one.append(args[3])
        raise AssertionError("an instance was fetched one by one")

    def retrieve_series(*args, **kwargs):
        series_requests.append(args[2])
        return real_series(*args, **kwargs)
    monkeypatch.setattr(dicomweb, "retrieve", retrieve)
    monkeypatch.setattr(dicomweb, "retrieve_series", retrieve_series)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out = tmp_path / "out"
    query = f"dicomweb://{server.split('://', 1)[1]}/dicom-web?StudyDate=20261101-20261126&Modality=MR"
    assert run.main(["--input", query, "--output", str(out), "--model", model_dir, "--max-error-fraction", "0.2"]) == 0
    rows = rows_mod.images(out)
    november = {sop for sop, v in expected.items() if v[0].startswith("202611")}
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(november) and not one_by_one
    assert len(series_requests) == len(set(series_requests)) == 4  # 2 studies x 2 series, one request each
    assert [r["error_code"] for r in rows if r["status"] != "ok"] == ["dicom_corrupt"]  # same bytes, same rows


def test_unreachable_pacs_fails_before_work(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    started = time.time()
    assert run.main(["--input", "dicomweb://127.0.0.1:9/dicom-web", "--output", str(tmp_path / "o"),
                     "--model", model_dir]) == 2
    assert "does not answer QIDO-RS" in capsys.readouterr().err
    assert time.time() - started < 60


def _srs(url):
    from dicomweb_client.api import DICOMwebClient
    c = DICOMwebClient(f"{url}/dicom-web")
    found = c.search_for_instances(search_filters={"Modality": "SR"})
    return c, [(i["0020000D"]["Value"][0], i["0020000E"]["Value"][0], i["00080018"]["Value"][0]) for i in found]


def test_write_back_stores_one_structured_report_per_series(pacs, tmp_path, capsys):
    import highdicom as hd
    server, _ = pacs
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    host = server.split("://", 1)[1]
    before = len(_srs(server)[1])
    query = f"dicomweb://{host}/dicom-web?StudyDate=20261015"  # the October study: 2 series, 6 instances
    argv = ["--input", query, "--output", str(tmp_path / "out"), "--model", model_dir, "--write-back",
            "--threshold", "0.001"]  # every image flagged: every one gets a Grad-CAM overlay
    assert run.main(argv) == 0
    summary = run.read_summary(str(tmp_path / "out"))
    assert summary["write_back"] == {"series_stored": 2, "series_failed": 0, "series_refused": 0,
                                     "overlays_stored": 6, "overlays_refused": 0, "superseded_kept": 0, "errors": []}
    assert "Write-back: 2 series' reports stored in the PACS (6 overlays)\n" in capsys.readouterr().out
    assert 'id="write-back" class="drift-none"' in (tmp_path / "out" / "results" / "report.html").read_text()
    client, srs = _srs(server)
    assert len(srs) == before + 2
    rows = [r for r in rows_mod.images(tmp_path / "out") if r["status"] == "ok"]
    for study, series, sop in srs[-2:]:
        sr = hd.sr.srread(io.BytesIO(_part10(client.retrieve_instance(study, series, sop))))
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.Modality == "SR"  # Comprehensive SR
        assert sr.ConceptNameCodeSequence[0].CodeMeaning == "Automated brain-MRI tumor screening (research)"
        assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
        assert sr.SeriesDescription.startswith("Automated tumor screening (research) of series") and sr.SeriesDate
        assert sr.SeriesNumber >= 990000
        assert sr.StudyInstanceUID == study and sr.PatientID.startswith("FAKE-")  # copied from the source, into its study
        items = {item.name.meaning: item for item in sr.ContentSequence}
        source = [i.referenced_sop_instance_uid for i in sr.ContentSequence if i.name.meaning == "Source"]
        series_rows = [r for r in rows if r["sop_instance_uid"] in source]
        assert len(series_rows) == 3
        assert abs(items["Maximum tumor probability"].value - max(r["tumor_probability"] for r in series_rows)) < 1e-5
        assert items["Finding"].value.scheme_designator == "99BRAINSCREEN"
        assert "not a diagnostic device" in items["Algorithm"].value
    found = client.search_for_instances(search_filters={"Modality": "OT"})
    assert len(found) == 6
    one = found[0]
    sc = client.retrieve_instance(one["0020000D"]["Value"][0], one["0020000E"]["Value"][0], one["00080018"]["Value"][0])
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"  # Secondary Capture
    assert list(sc.PatientOrientation) == ["L", "P"] and "Grad-CAM" in sc.SeriesDescription
    assert sc.BurnedInAnnotation == "YES" and ", research) series " in sc.SeriesDescription and sc.SeriesTime
    assert sc.StudyInstanceUID in {s for s, _, _ in srs} and sc.pixel_array.shape[-1] == 3
    assert run.main(argv) == 0  # a rerun stores the same UIDs: no duplicates
    assert len(_srs(server)[1]) == before + 2
    # ... and never screens the reports and overlays it stored into the study (6 source images only)
    assert len(rows_mod.images(tmp_path / "out")) == 6
    assert len(client.search_for_instances(search_filters={"Modality": "OT"})) == 6


def _part10(ds):
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def test_dataflow_job_with_a_dicomweb_input_builds(pacs, gcs, tmp_path):  # noqa: F811
    """DataflowRunner --dry_run: the DICOMweb stages and the write-back are in the job graph."""
    from tests.conftest import BUCKET
    from tests.conftest import upload as gcs_upload
    orthanc_url, _ = pacs
    gcs_upload(tiny_model.write_tiny_artifact(tmp_path), "dw/models/tiny/1")
    result = run.run([
        "--input", f"dicomweb://{orthanc_url.split('://', 1)[1]}/dicom-web?Modality=MR", "--write-back",
        "--output", f"gs://{BUCKET}/dw/out", "--model", f"gs://{BUCKET}/dw/models/tiny/1",
        "--runner", "DataflowRunner", "--dry_run=True", "--no_auth", "--project", "hospital-ml",
        "--region", "europe-west4", "--temp_location", f"gs://{BUCKET}/dw/tmp",
        "--staging_location", f"gs://{BUCKET}/dw/staging", "--sdk_location", "container",
        "--sdk_container_image", "us-central1-docker.pkg.dev/hospital-ml/screening/brain-screening-worker:0.1.0",
    ], save_main_session=False)
    names = {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}
    for step in ("ExpandInputs/SearchStudies", "ExpandInputs/ListStudyInstances", "DecodeImages/Decode",
                 "WriteResults/WriteBack/StoreReports", "WriteResults/Finalise/Promote"):
        assert any(n == step or n.startswith(step + "/") for n in names), step


def test_manifest_makes_pacs_nights_incremental_by_study(pacs, tmp_path):
    """--manifest with a DICOMweb input: a night scores only new studies and studies that gained images."""
    import json
    server, _ = pacs
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    first_study, first_series = generate_uid(), generate_uid()
    for n in range(4):
        upload(server, _instance(7, first_study, first_series, 0, n, "20261201")[1])
    mf, out = str(tmp_path / "manifest.json"), str(tmp_path / "out")
    argv = ["--input", f"dicomweb://{server.split('://', 1)[1]}/dicom-web?StudyDate=20261201",
            "--output", out, "--model", model_dir, "--manifest", mf]
    assert run.main(argv + ["--run-id", "night1"]) == 0
    assert run.read_summary(out)["rows"] == 4
    keys = json.load(open(mf))["inputs"]
    assert list(keys) == [f"http://{server.split('://', 1)[1]}/dicom-web#study={first_study}".replace(
        "http://", "dicomweb://")] and keys[next(iter(keys))]["instances"] == 4
    second_study = generate_uid()
    for n in range(2):
        upload(server, _instance(8, second_study, generate_uid(), 0, n, "20261201")[1])
    assert run.main(argv + ["--run-id", "night2"]) == 0
    summary = run.read_summary(out)
    assert summary["rows"] == 2 and summary["result"]["rows"] == 6  # only the new study scored tonight
    upload(server, _instance(7, first_study, first_series, 0, 4, "20261201")[1])  # a late image
    assert run.main(argv + ["--run-id", "night3"]) == 0
    assert run.read_summary(out)["rows"] == 5  # the study that changed, scored again
    studies = rows_mod.images(out, "studies-*.parquet")  # each study once, from its newest scoring
    assert sorted((s["study_instance_uid"] == first_study, s["n_images"]) for s in studies) == [(False, 2), (True, 5)]
    series = rows_mod.images(out, "series-*.parquet")
    assert len(series) == len({s["study_key"] for s in series}) == 3
    # each image once: the first study's four earlier rows are superseded by tonight's
    assert len(rows_mod.images(out)) == run.read_summary(out)["result"]["rows"] == 2 + 5
    assert run.main(argv + ["--run-id", "night4"]) == 0
    summary = run.read_summary(out)
    # nothing new tonight: the result stays night 3's, nothing lost
    assert summary["run_id"] == "night3" and summary["result"]["rows"] == 2 + 5


def test_write_back_never_writes_into_the_wrong_study(pacs, tmp_path):
    """Two patients' studies that share a series UID get no report (refused, counted); a local DICOM that
    claims a PACS study's UIDs gets none either, and does not change the PACS series' report."""
    import zipfile

    import highdicom as hd
    server, _ = pacs
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    host = server.split("://", 1)[1]
    shared_series = generate_uid()
    for patient in (7, 8):  # two studies, one series UID
        _, data = _instance(patient, generate_uid(), shared_series, 0, 0, "20250101")
        upload(server, data)
    own_study, own_series = generate_uid(), generate_uid()
    for n in range(2):
        _, data = _instance(9, own_study, own_series, 0, n, "20250102")
        upload(server, data)
    # A crafted file with that PACS series' UIDs, scored in the same night from a zip
    crafted = pydicom.dcmread(io.BytesIO(_instance(9, own_study, own_series, 0, 5, "20250102")[1]))
    with zipfile.ZipFile(tmp_path / "local.zip", "w") as zf:
        zf.writestr("crafted.dcm", _part10(crafted))
    client, before = _srs(server)
    out = tmp_path / "out"
    argv = ["--input", f"dicomweb://{host}/dicom-web?StudyDate=20250101-20250102", "--input",
            str(tmp_path / "local.zip"), "--output", str(out), "--model", model_dir, "--write-back",
            "--no-heatmaps"]
    assert run.main(argv) == 0
    wb = run.read_summary(str(out))["write_back"]
    assert wb["series_stored"] == 1 and wb["series_refused"] == 1 and wb["series_failed"] == 0
    assert any("series_spans_studies" in e for e in wb["errors"])
    _, after = _srs(server)
    new = [s for s in after if s not in before]
    assert [study for study, _, _ in new] == [own_study]
    (study, series, sop), = new
    sr = hd.sr.srread(io.BytesIO(_part10(client.retrieve_instance(study, series, sop))))
    source = {i.referenced_sop_instance_uid for i in sr.ContentSequence if i.name.meaning == "Source"}
    assert len(source) == 2 and crafted.SOPInstanceUID not in source


def test_a_rescored_series_supersedes_its_earlier_report(pacs, tmp_path):
    """A late image changes a series' result: the new SR names the old one as its predecessor, and the
    PACS's newest SR in that series says what the tables say."""
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient
    server, _ = pacs
    client = DICOMwebClient(f"{server}/dicom-web")
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    study, series = generate_uid(), generate_uid()
    for n in range(2):
        upload(server, _instance(9, study, series, 0, n, "20261202")[1])
    host = server.split("://", 1)[1]
    argv = ["--input", f"dicomweb://{host}/dicom-web?StudyInstanceUID={study}", "--model", model_dir,
            "--write-back", "--threshold", "0.001"]
    mf = tmp_path / "manifest.json"
    assert run.main(argv + ["--output", str(tmp_path / "n1"), "--manifest", str(mf)]) == 0
    assert [k.rpartition("#study=")[2] for k in json.loads(mf.read_text())["inputs"]] == [study]  # stored: done
    upload(server, _instance(9, study, series, 0, 2, "20261202")[1])  # a late image
    assert run.main(argv + ["--output", str(tmp_path / "n2")]) == 0
    wb = run.read_summary(str(tmp_path / "n2"))["write_back"]
    assert wb["series_stored"] == 1 and wb["superseded_kept"] == 1  # Orthanc's DICOMweb has no DELETE
    found = [i for i in client.search_for_instances(study_instance_uid=study, search_filters={"Modality": "SR"})]
    assert len(found) == 2
    srs = [hd.sr.srread(io.BytesIO(_part10(client.retrieve_instance(study, i["0020000E"]["Value"][0],
                                                                     i["00080018"]["Value"][0])))) for i in found]
    newest = max(srs, key=lambda sr: int(sr.InstanceNumber))
    older = min(srs, key=lambda sr: int(sr.InstanceNumber))
    predecessor = newest.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == older.SOPInstanceUID
    assert len([i for i in newest.ContentSequence if i.name.meaning == "Source"]) == 3
    assert run.main(argv + ["--output", str(tmp_path / "n3")]) == 0  # same content again: nothing new stored
    assert len(client.search_for_instances(study_instance_uid=study, search_filters={"Modality": "SR"})) == 2

"""Review outputs: the study/series table, heatmaps for flagged images only, and
the HTML report rendered in headless Chromium."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from beam_pipeline import report, run, sample_data
from tests import rows as rows_mod
from tests import synth, tiny_model


@pytest.fixture(scope="module")
def review_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    sample = sample_data.write_sample_archives(str(root / "in"), n_images=24)
    model_dir = tiny_model.write_tiny_artifact(root)
    probe = str(root / "probe")
    run.run(["--input", str(root / "in" / "*"), "--keep-paths", "--output", probe, "--model", model_dir, "--no-heatmaps",
             "--no-report"])
    probs = [r["tumor_probability"] for r in rows_mod.images(probe)
             if r["status"] == "ok"]
    threshold = float(np.percentile(probs, 70))  # flag roughly the top 30%
    out = str(root / "out")
    run.run(["--input", str(root / "in" / "*"), "--keep-paths", "--output", out, "--model", model_dir,
             "--threshold", repr(threshold), "--run-id", "review"])
    images = rows_mod.images(out)
    studies = rows_mod.images(out, "series-*.parquet")
    return out, images, studies, threshold, sample


def test_study_table_one_row_per_study_or_folder(review_run):
    out, images, series, threshold, _ = review_run
    studies = rows_mod.images(out, "studies-*.parquet")
    dicom = [s for s in studies if s["group_kind"] == "dicom_study"]
    assert len(dicom) == 2 and all(s["n_series"] == 1 and s["modalities"] == ["MR"] for s in dicom)
    for s in dicom:
        mine = [x for x in series if x["study_instance_uid"] == s["study_instance_uid"]]
        assert s["max_probability"] == pytest.approx(max(x["max_probability"] for x in mine))
        assert s["n_flagged"] == sum(x["n_flagged"] for x in mine)
    assert {s["folder"] for s in studies if s["group_kind"] == "folder"} == {"patient_00", "patient_01"}
    assert sum(s["n_images"] for s in studies) == sum(x["n_images"] for x in series)
    page = open(rows_mod.result_file(out, "report.html")).read()
    assert 'id="worklist"' in page and "flagged_studies.csv" in page
    assert " scored" in page and "{&quot;ok&quot;" not in page  # counts in words, not a raw dict
    headings = re.findall(r"<h3>(.*?)</h3>", page)
    assert headings and not any(s["study_instance_uid"] in h for h in headings for s in dicom)  # no UIDs
    worklist = page[page.index('id="worklist"'):page.index("</table>", page.index('id="worklist"'))]
    assert not any(x["series_instance_uid"] in worklist for x in series if x["series_instance_uid"])
    import csv
    flagged = list(csv.DictReader(open(rows_mod.result_file(out, "flagged_studies.csv"))))
    assert len(flagged) == sum(s["flagged"] for s in studies)
    assert [float(r["max_probability"]) for r in flagged] == sorted((float(r["max_probability"]) for r in flagged),
                                                                     reverse=True)


def test_series_table_aggregates_series_and_folders(review_run):
    _, images, studies, threshold, _ = review_run
    ok = [r for r in images if r["status"] == "ok"]
    dicom = [s for s in studies if s["study_instance_uid"]]
    assert len(dicom) == 2  # two generated DICOM studies, one series each
    for s in dicom:
        members = [r for r in ok if r["study_instance_uid"] == s["study_instance_uid"]]
        assert s["n_images"] == len(members) == 6
        assert s["modality"] == "MR"
        assert s["max_probability"] == pytest.approx(max(r["tumor_probability"] for r in members))
        assert s["n_flagged"] == sum(r["tumor_probability"] >= threshold for r in members)
        assert s["flagged"] == (s["n_flagged"] > 0)
        best = max(members, key=lambda r: r["tumor_probability"])
        assert s["top_members"][0] == best["member_path"]
    folders = {s["folder"] for s in studies if not s["study_instance_uid"]}
    assert folders == {"patient_00", "patient_01"}
    assert sum(s["n_images"] for s in studies) == len(ok)


def test_heatmaps_for_flagged_images_only(review_run):
    _, images, _, threshold, _ = review_run
    ok = [r for r in images if r["status"] == "ok"]
    flagged = [r for r in ok if r["tumor_probability"] >= threshold]
    assert flagged and len(flagged) < len(ok)
    for r in ok:
        if r in flagged:
            assert r["heatmap_path"] and open(r["heatmap_path"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        else:
            assert r["heatmap_path"] is None


def test_report_rebuilds_from_outputs(review_run):
    out = review_run[0]
    before = open(rows_mod.result_file(out, "report.html")).read()
    assert report.main([out]) == 0
    after = open(rows_mod.result_file(out, "report.html")).read()
    strip = lambda s: re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", s)  # noqa: E731
    assert strip(before) == strip(after)
    assert "http://" not in strip(after) and "https://" not in strip(after)  # self-contained


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]


def test_report_shows_a_bounded_page_and_says_so(review_run, monkeypatch):
    """The page lists the top studies and the first errors, with a notice, whatever the run's size."""
    out = review_run[0]
    folder = rows_mod.result_file(out, "")
    full = report.render(folder)
    n_shown = full.count('class="study"')
    assert n_shown >= 2 and "showing the" not in full
    monkeypatch.setattr(report, "MAX_FLAGGED_STUDIES", 1)
    monkeypatch.setattr(report, "MAX_ERRORS", 1)
    page = report.render(folder)
    assert page.count('class="study"') == 1 and "(showing the 1 highest)" in page
    assert "(showing the first 1)" in page
    top = max(float(m) for m in re.findall(r'data-max-probability="([0-9.]+)"', full))
    assert f'data-max-probability="{top:.4f}"' in page  # the highest study is the one kept


def test_top_rows_stream_in_batches_and_equal_a_full_sort(tmp_path, monkeypatch):
    """The page's top series/studies come from one pass in record batches (bounded memory at any run
    size); the result is the full sort's, ties in file order, across files and batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(3)
    n = 230
    table = pa.table({"id": list(range(n)), "max_probability": rng.choice([0.1, 0.5, 0.75, 0.9], n),
                      "flagged": rng.random(n) < 0.4})
    pq.write_table(table.slice(0, 100), tmp_path / "series-00000-of-00002.parquet", row_group_size=30)
    pq.write_table(table.slice(100), tmp_path / "series-00001-of-00002.parquet", row_group_size=30)
    monkeypatch.setattr(report, "BATCH_ROWS", 7)
    want = table.sort_by([("max_probability", "descending")])
    for flagged_only in (False, True):
        top, rows, flagged = report._top(str(tmp_path / "series-*.parquet"), 12, flagged_only)
        expected = want.filter(want.column("flagged")) if flagged_only else want
        assert [r["id"] for r in top] == expected.column("id").to_pylist()[:12]
        assert rows == n and flagged == sum(table.column("flagged").to_pylist())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs Debian's chromium)")
def test_report_renders_in_headless_chromium(review_run, tmp_path):
    out, _, studies, _, _ = review_run
    url = "file://" + os.path.abspath(rows_mod.result_file(out, "report.html"))
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    n_flagged = sum(s["flagged"] for s in studies)
    assert n_flagged > 0
    assert len(re.findall(r'<div class="study"', dom)) == n_flagged
    total = int(re.search(r'data-images-total="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert total >= 2 and loaded == total  # histogram + heatmaps all decoded by the browser
    assert "not a diagnostic device" in dom
    shot = tmp_path / "report.png"
    subprocess.run(common + ["--window-size=1200,1800", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    shutil.copy(shot, os.path.join(out, "report_screenshot.png"))


def test_loose_files_in_one_folder_are_one_series(tmp_path):
    """A folder of loose slices is one series and one worklist row, not one per image."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path, threshold=1e-6)  # every slice flagged, with a heatmap
    for folder, n in (("patient_a", 3), ("patient_b", 2)):
        (tmp_path / "in" / folder).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "in" / folder / f"{i}.png").write_bytes(synth.encode(synth.brain_slice(i, 32)))
    out = tmp_path / "out"
    assert run.main(["--input", str(tmp_path / "in"), "--keep-paths", "--output", str(out), "--model", model_dir]) == 0
    series = rows_mod.images(out, "series-*.parquet")
    assert sorted(s["n_images"] for s in series) == [2, 3]
    assert {os.path.basename(s["source_uri"]) for s in series} == {"patient_a", "patient_b"}
    studies = rows_mod.images(out, "studies-*.parquet")
    assert sorted(s["n_images"] for s in studies) == [2, 3]
    page = open(rows_mod.result_file(out, "report.html")).read()
    assert page.count('class="heatmap"') == 5  # the folder series show their slices' overlays


def test_same_named_class_folders_stay_apart_in_the_worklist(tmp_path):
    """`flair/tumor` and `t2/tumor` (a sample laid out by sequence and class) are two worklist rows that
    say which is which; a bare `tumor` made them indistinguishable."""
    from beam_pipeline import studies
    model_dir = tiny_model.write_tiny_artifact(tmp_path, threshold=1e-6)
    for seq in ("flair", "t2"):
        (tmp_path / "in" / seq / "tumor").mkdir(parents=True)
        for i in range(2):
            (tmp_path / "in" / seq / "tumor" / f"{i}.png").write_bytes(synth.encode(synth.brain_slice(i, 32)))
    out = tmp_path / "out"
    assert run.main(["--input", str(tmp_path / "in"), "--keep-paths", "--output", str(out), "--model", model_dir]) == 0
    worklist = rows_mod.images(out, "studies-*.parquet")
    assert sorted(studies.place_label(s) for s in worklist) == ["flair/tumor", "t2/tumor"]
    assert sorted(s["flagged_series"][0] for s in worklist) == ["flair/tumor", "t2/tumor"]
    page = open(rows_mod.result_file(out, "report.html")).read()
    assert "folder flair/tumor" in page and "folder t2/tumor" in page
    assert studies.place_label({"source_uri": "gs://b/night/a.zip", "folder": "p1/s2"}) == "night/a.zip : p1/s2"


def test_a_group_pattern_makes_one_study_per_patient(tmp_path, capsys):
    """Loose files of several patients in class folders (`tumor/P7_12.png`, `notumor/P7_3.png`): with
    --group-pattern each patient is one worklist row spanning both folders, named by a pseudonym."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path, threshold=1e-6)
    for label, n in (("tumor", 3), ("notumor", 2)):
        (tmp_path / "in" / label).mkdir(parents=True)
        for patient in ("SMITH7", "JONES8"):
            for i in range(n):
                (tmp_path / "in" / label / f"{patient}_{i}.png").write_bytes(synth.encode(synth.brain_slice(i, 32)))
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "in"), "--output", str(out), "--model", model_dir,
            "--pseudonym-key-file", str(tmp_path / "key")]
    assert run.main(argv + ["--group-pattern", r"^([A-Z]+\d+)_"]) == 0
    studies = rows_mod.images(out, "studies-*.parquet")
    assert sorted((s["group_kind"], s["n_images"], s["n_series"]) for s in studies) == [("patient", 5, 2)] * 2
    assert all(s["patient_group"].startswith("p-") for s in studies)
    series = rows_mod.images(out, "series-*.parquet")
    assert sorted(s["n_images"] for s in series) == [2, 2, 3, 3]  # a folder's patients are separate series
    page = open(rows_mod.result_file(out, "report.html")).read()
    assert f"patient {studies[0]['patient_group']}" in page and "SMITH" not in page
    assert run.main(argv + ["--output", str(tmp_path / "o2"), "--group-pattern", "(unclosed"]) == 2
    assert "--group-pattern '(unclosed' is not a regular expression" in capsys.readouterr().err


def test_a_flagged_series_in_another_plane_says_so_in_the_worklist_the_report_and_the_csv(tmp_path):
    """A sagittal series of a head without a tumor gets half its slices flagged by a model of axial slices
    (docs/model_v4_notes.md, row PL): its rows, its series row and its worklist entry name the plane, and the
    report and flagged_studies.csv carry the caveat beside it; an axial series beside it carries none."""
    import csv
    import io

    import pydicom
    from pydicom.uid import generate_uid
    model = tiny_model.write_tiny_artifact(tmp_path, lesion_bias=5.0)  # flags every slice
    study = generate_uid()
    os.makedirs(tmp_path / "in")
    for name, iop, desc in (("ax", [1, 0, 0, 0, 1, 0], "T2 AX"), ("sag", [0, 1, 0, 0, 0, -1], "T1 3D")):
        series = generate_uid()
        for i in range(3):
            ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(sample_data.synthetic_slice(i, 64), 0, study,
                                                                     series, i + 1)))
            ds.ImageOrientationPatient, ds.SeriesDescription = iop, desc
            ds.save_as(str(tmp_path / "in" / f"{name}{i}.dcm"), enforce_file_format=True)
    out = str(tmp_path / "out")
    assert run.main(["--input", str(tmp_path / "in"), "--output", out, "--model", model]) == 0
    assert sorted({(r["series_description"], r["plane"]) for r in rows_mod.images(out)}) == [
        ("T1 3D", "sagittal"), ("T2 AX", "axial")]
    assert sorted((s["series_description"], s["plane"]) for s in rows_mod.images(out, "series-*.parquet")) == [
        ("T1 3D", "sagittal"), ("T2 AX", "axial")]
    (s,) = rows_mod.images(out, "studies-*.parquet")
    assert s["flagged_series"] == ["T1 3D (sagittal)", "T2 AX"]
    page = open(rows_mod.result_file(out, "report.html")).read()
    assert page.count("(sagittal slices: the model was chosen on axial slices)") == 2  # worklist and series
    (row,) = csv.DictReader(open(rows_mod.result_file(out, "flagged_studies.csv")))
    assert row["look_caveats"] == "T1 3D (sagittal) (sagittal slices: the model was chosen on axial slices)"
    # where to look first: the slice with the largest lesion, as the study table names it (no pixel spacing: no mm²)
    assert (row["largest_lesion_series"], row["largest_lesion_member"]) == (s["largest_lesion_series"],
                                                                            s["largest_lesion_member"])
    assert row["largest_lesion_series"] in s["flagged_series"] and re.fullmatch(r"image [123]", row["largest_lesion_member"])
    assert f"({row['largest_lesion_series']}, {row['largest_lesion_member']})" in page  # the worklist says where
    assert float(row["max_lesion_area_px"]) == round(s["max_lesion_area_px"]) > 0 and row["max_lesion_area_mm2"] == ""
    # A site profile that validated axial series only: the sagittal flag says so, the axial one stays clean.
    from beam_pipeline import model_store, site_profile
    profile = site_profile.build(model_store.metadata(model), 0.01, 0.95, {
        "n_images": 200, "n_positive": 100, "meets": True, "forced": False, "validated_looks": ["t1", "t2"],
        "validated_planes": ["axial"]})
    site_profile.write(profile, str(tmp_path / "axial_only.json"))
    site = str(tmp_path / "site")
    assert run.main(["--input", str(tmp_path / "in"), "--output", site, "--model", model,
                     "--site-profile", str(tmp_path / "axial_only.json")]) == 0
    page = open(rows_mod.result_file(site, "report.html")).read()
    assert "Planes validated: axial; flagged series in other planes are marked." in page
    assert page.count("(sagittal slices: not validated at this site; the model was chosen on axial slices)") == 2
    (row,) = csv.DictReader(open(rows_mod.result_file(site, "flagged_studies.csv")))
    assert row["look_caveats"] == ("T1 3D (sagittal) (sagittal slices: not validated at this site; the model was "
                                   "chosen on axial slices)")
    md = {"tumor_free_probe": {"planes": {"sagittal": {"flagged": 0.57}}}}
    assert report.plane_caveat("sagittal", md).endswith("it flags 57% of sagittal slices of heads without a tumor")
    assert report.plane_caveat("axial", md) == report.plane_caveat(None, md) == ""


def test_the_worklist_says_how_many_tumor_free_heads_the_model_flagged():
    """The artifact's highest slice of each whole tumor-free series of its evaluation (the healthy heads) against
    its own threshold: the worklist quotes how many were flagged, so a reader does not take a flag for a finding."""
    md = {"threshold": 0.5, "lesion": {"tumor_free_series_max": {"flair": [0.2, 0.5, 0.9], "t1": [0.1, 0.6]}}}
    note = report.healthy_series_note(md)
    assert note.startswith("In its evaluation this model flagged 3 of 5 series of heads without a tumor")
    study = {"accession_number": "p-1", "study_date": None, "group_kind": "dicom_study", "flagged": True,
             "max_probability": 0.9, "modalities": ["MR"], "n_flagged": 1, "n_images": 2, "n_series": 1,
             "flagged_series": ["AX FLAIR"], "n_out_of_distribution": 0}
    assert note in report._worklist_html([study], 1, md)
    assert report.healthy_series_note({"threshold": 0.5}) == ""
    assert "heads without a tumor" not in report._worklist_html([study], 1, {"threshold": 0.5})


def test_each_flagged_study_says_how_many_tumor_free_heads_scored_as_high(review_run):
    """flagged_csv and the worklist rank a study's highest probability against the highest slice of each whole
    tumor-free series of the model's evaluation (lesion.tumor_free_series_max): '2 of 4' means two tumor-free
    heads reached it. Without those figures in the artifact the column is absent, not empty."""
    import csv
    import io
    folder = rows_mod.result_file(review_run[0], "")
    studies = [s for s in rows_mod.images(review_run[0], "studies-*.parquet") if s["flagged"]]
    top = max(s["max_probability"] for s in studies)
    md = {"lesion": {"tumor_free_series_max": {"flair": [0.0, top], "t1": [0.0, 1.0]}}}
    assert report.tumor_free_as_high(top, md) == "2 of 4" and report.tumor_free_as_high(top, {}) == ""
    assert report.tumor_free_as_high(top, md, ["AX FLAIR", "p-1/p-2 [T2]", "DWI b1000"]) == "2 of 4 (none of them DWI, T2)"
    rows = list(csv.DictReader(io.StringIO(report.flagged_csv(folder, md))))
    assert len(rows) == len(studies) and rows[0]["tumor_free_heads_as_high"] == "2 of 4"
    assert all(r["tumor_free_heads_as_high"].split(" (")[0] in ("1 of 4", "2 of 4") for r in rows)
    assert "tumor_free_heads_as_high" not in report.flagged_csv(folder, {"lesion": {}}).splitlines()[0]
    study = {**studies[0], "max_probability": top}
    assert "<th title=" in report._worklist_html([study], 1, md) and "<td>2 of 4</td>" in report._worklist_html([study], 1, md)
    assert "tumor-free heads as high" not in report._worklist_html([study], 1, {})
    quiet = {**study, "max_probability": 0.0, "flagged": False}  # below the threshold: every head was "as high"
    assert "<td>-</td>" in report._worklist_html([quiet], 1, md) and "4 of 4" not in report._worklist_html([quiet], 1, md)


def test_a_caption_says_when_the_model_turned_the_slice_upright_before_scoring():
    """turned_back_degrees (a model with an orientation network): the reader checks a turn that was the model's
    call; a slice scored as it came, or a row of a model without the network or from before the column, says
    nothing of it."""
    row = {"series_instance_uid": "1.2.3", "series_description": "T2 AX", "series_number": 4, "instance_number": 9,
           "member_path": "", "source_uri": "x", "tumor_probability": 0.81, "in_distribution": True}
    assert "turned" not in report._caption(row)
    for degrees in (0, None):
        assert "turned" not in report._caption({**row, "turned_back_degrees": degrees})
    caption = report._caption({**row, "turned_back_degrees": 270})
    assert caption.startswith("T2 AX (series 4), image 9 p=0.810") and "it came turned 270&deg;" in caption
    assert "negative" not in report._caption({**row, "taken_for_negative": False})
    assert "scored as its positive (the image is a negative)" in report._caption({**row, "taken_for_negative": True})


def test_a_series_counts_its_slices_scored_turned_upright_and_the_report_says_when_the_turn_is_mixed():
    """n_turned_back: a series comes in one orientation, so a turn on some of its slices and not others is the
    orientation network's error, and the report's flagged series say so; rows from before the column count 0."""
    from beam_pipeline import studies
    base = {"status": "ok", "predicted_label": "no_tumor", "in_distribution": True, "study_instance_uid": "1.2",
            "series_instance_uid": "1.2.3", "source_uri": "x.zip", "member_path": "a/1.dcm", "instance_number": 1}
    combine = studies.SeriesCombineFn()
    parts = []
    for turns in ((0, 90), (None, 270, 0)):
        acc = combine.create_accumulator()
        for i, t in enumerate(turns):
            acc = combine.add_input(acc, {**base, "tumor_probability": 0.1 * (i + 1), "turned_back_degrees": t})
        parts.append(acc)
    row = combine.extract_output(combine.merge_accumulators(parts))
    assert row["n_images"] == 5 and row["n_turned_back"] == 2
    assert studies.series_table_row(row)["n_turned_back"] == 2
    assert report._turned_note({"n_turned_back": 0, "n_images": 5}) == ""
    assert report._turned_note({"n_images": 5}) == ""  # a table written before the column
    assert "2 of 5 scored turned upright" in report._turned_note(row) and "the wrong way up" in report._turned_note(row)
    assert "the series came turned" in report._turned_note({"n_turned_back": 5, "n_images": 5})

"""trainer.tumor_free_probe: tumor-free volumes scored by brain-score itself, flagged slices by volume and fifth."""
import os
import random

import numpy as np
import pytest


def _row(source, frame=None, member="", flagged=False, status="ok", ood=False):
    return {"source_uri": source, "member_path": member, "frame_index": frame, "status": status,
            "predicted_label": "tumor" if flagged else "no_tumor", "in_distribution": not ood}


def test_slices_are_counted_per_volume_in_slice_order_and_unscored_rows_left_out():
    from trainer import tumor_free_probe
    rows = [_row("/d/vol.nii.gz", frame=i, flagged=i < 2, ood=i == 9) for i in range(10)]
    rows += [_row(f"/d/series/s{i}.png", flagged=i >= 9) for i in range(1, 11)]  # s10 after s9, not after s1
    rows += [_row("/d/vol.nii.gz", frame=10, status="error"), _row("/d/series/bad.png", status="skipped")]
    random.Random(0).shuffle(rows)
    out = tumor_free_probe.summarise(rows)
    assert out["vol.nii.gz"] == {"n": 10, "flagged": 0.2, "ood": 0.1, "by_fifth": [1.0, 0.0, 0.0, 0.0, 0.0]}
    assert out["series/"] == {"n": 10, "flagged": 0.2, "ood": 0.0, "by_fifth": [0.0, 0.0, 0.0, 0.0, 1.0]}
    dicom = [{**_row(f"/d/dcm/{name}", flagged=n == 1), "instance_number": n}  # numbered against the names
             for n, name in ((1, "z.dcm"), (2, "a.dcm"), (3, "m.dcm"), (4, "b.dcm"), (5, "c.dcm"))]
    assert tumor_free_probe.summarise(dicom)["dcm/"]["by_fifth"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    twins = [_row(f"/d/{who}/t1.nii.gz", frame=i, flagged=who == "a") for who in ("a", "b") for i in range(5)]
    both = tumor_free_probe.summarise(twins)  # two people's t1.nii.gz stay two volumes, named by their paths
    assert both == {"/d/a/t1.nii.gz": {"n": 5, "flagged": 1.0, "ood": 0.0, "by_fifth": [1.0] * 5},
                    "/d/b/t1.nii.gz": {"n": 5, "flagged": 0.0, "ood": 0.0, "by_fifth": [0.0] * 5}}
    md = tumor_free_probe.table({"m": out})
    assert "| m | vol.nii.gz | 10 | 20.0 % | 100 % | 0 % | 0 % | 0 % | 0 % | 10 % |" in md
    assert "| m | all (2 volumes) | 20 | 20.0 %" in md


def test_each_model_scores_the_volumes_through_brain_score_at_its_threshold(tmp_path, capsys):
    import nibabel as nib

    from tests import tiny_model
    from trainer import tumor_free_probe
    zz, yy, xx = np.meshgrid(*(np.arange(n) - n / 2 for n in (48, 56, 10)), indexing="ij")
    head = ((zz / 20) ** 2 + (yy / 24) ** 2 < 1.0) * (100 + 20 * np.cos(xx))
    os.makedirs(tmp_path / "in")
    nib.save(nib.Nifti1Image(head.astype(np.int16), np.eye(4)), str(tmp_path / "in" / "healthy.nii.gz"))
    everywhere = tiny_model.write_tiny_artifact(tmp_path / "a", lesion_bias=5.0)  # its map says lesion everywhere
    nowhere = tiny_model.write_tiny_artifact(tmp_path / "b", lesion_bias=-5.0)
    out_json = tmp_path / "probe.json"
    assert tumor_free_probe.main(["--input", str(tmp_path / "in"), "--model", everywhere, "--model", nowhere,
                                  "--json", str(out_json), "--output", str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    assert "| 1 | healthy.nii.gz | 10 | 100.0 % | 100 % |" in text
    assert "| 1 (2) | healthy.nii.gz | 10 | 0.0 % | 0 % |" in text
    result = __import__("json").loads(out_json.read_text())
    assert result["1"]["healthy.nii.gz"]["by_fifth"] == [1.0] * 5
    assert os.path.isdir(tmp_path / "runs" / "1-1" / "results")


def test_a_missing_folder_or_a_folder_that_is_no_model_is_refused(tmp_path, capsys):
    from trainer import tumor_free_probe
    with pytest.raises(SystemExit) as e:
        tumor_free_probe.main(["--input", str(tmp_path / "nope"), "--model", str(tmp_path)])
    assert e.value.code == 2 and "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        tumor_free_probe.main(["--input", str(tmp_path), "--model", str(tmp_path)])
    assert e.value.code == 2 and "not a model artifact" in capsys.readouterr().err


def test_the_look_of_a_volume_is_a_token_of_its_name_and_the_table_adds_each_look():
    from trainer import tumor_free_probe
    looks = {name: tumor_free_probe.look_of(name) for name in (
        "fpg_flair.nii.gz", "flair_subj17.nii.gz", "healthy_t2.nii.gz", "m2208_stroke_t2.nii.gz", "chris_pd.nii.gz",
        "otsu_t1.nii.gz", "/d/IXI012-HH-1211_T1.nii", "sub-01_T1w.nii.gz", "pat_t1ce/", "ax_t2flair.dcm", "head.nii.gz",
        "t2star.nii.gz")}
    assert looks == {"fpg_flair.nii.gz": "flair", "flair_subj17.nii.gz": "flair", "healthy_t2.nii.gz": "t2",
                     "m2208_stroke_t2.nii.gz": "t2", "chris_pd.nii.gz": "pd", "otsu_t1.nii.gz": "t1",
                     "/d/IXI012-HH-1211_T1.nii": "t1", "sub-01_T1w.nii.gz": "t1", "pat_t1ce/": "t1ce",
                     "ax_t2flair.dcm": "other", "head.nii.gz": "other", "t2star.nii.gz": "swi"}
    volumes = {"a_t2.nii.gz": {"n": 10, "flagged": 0.5, "ood": 0.0, "by_fifth": [0.5] * 5},
               "b_t2.nii.gz": {"n": 30, "flagged": 0.1, "ood": 0.0, "by_fifth": [0.1] * 5},
               "c_flair.nii.gz": {"n": 7, "flagged": 0.0, "ood": 0.0, "by_fifth": [0.0] * 5}}
    assert tumor_free_probe.by_look(volumes) == {
        "flair": {"volumes": 1, "slices": 7, "flagged": 0.0, "highest_volume": 0.0},
        "t2": {"volumes": 2, "slices": 40, "flagged": 0.2, "highest_volume": 0.5}}
    from beam_pipeline import report
    md = {"tumor_free_probe": {"looks": tumor_free_probe.by_look(volumes)}}
    assert report.look_caveat("ax_t2_tse", md) == \
        "T2: the model flags 20% of slices of heads without a tumor, 50% of one head's"
    calm = {"tumor_free_probe": {"looks": {"t2": {"volumes": 3, "slices": 90, "flagged": 0.1, "highest_volume": 0.3}}}}
    assert report.look_caveat("T2", calm) == "T2: the model flags 10% of slices of heads without a tumor, 30% of one head's"
    md = tumor_free_probe.table({"m": volumes})
    assert "| m | FLAIR (1 volumes) | 7 | 0.0 % |" in md and "| m | T2 (2 volumes) | 40 | 20.0 % |" in md


def test_write_stores_the_shares_by_look_in_the_sealed_artifact_and_the_report_quotes_them(tmp_path, capsys):
    import json

    import nibabel as nib

    from beam_pipeline import report
    from screening_core import artifact
    from tests import tiny_model
    from trainer import tumor_free_probe
    zz, yy, xx = np.meshgrid(*(np.arange(n) - n / 2 for n in (48, 56, 6)), indexing="ij")
    head = ((zz / 20) ** 2 + (yy / 24) ** 2 < 1.0) * (100 + 20 * np.cos(xx))
    os.makedirs(tmp_path / "in")
    nib.save(nib.Nifti1Image(head.astype(np.int16), np.eye(4)), str(tmp_path / "in" / "someone_t2.nii.gz"))
    model = tiny_model.write_tiny_artifact(tmp_path / "a", lesion_bias=5.0)
    assert tumor_free_probe.main(["--input", str(tmp_path / "in"), "--model", model, "--write"]) == 0
    assert "metadata.json" in capsys.readouterr().err
    md = artifact.verify(model)  # re-sealed: it still loads
    probe = md["tumor_free_probe"]
    assert probe["looks"] == {"t2": {"volumes": 1, "slices": 6, "flagged": 1.0, "highest_volume": 1.0}}
    assert probe["threshold"] == md["threshold"]
    assert "someone" not in json.dumps(probe)  # counts and shares only, no volume names
    banner = report._validation_html(set(), md)
    assert "Not validated at this site" in banner and "1 real heads without a tumor" in banner and "T2 100%" in banner
    from beam_pipeline import run
    from tests import rows as rows_mod
    from tests import synth
    for look in ("t2", "dwi", "t1"):  # folders a reader knows the look of (kept paths)
        os.makedirs(tmp_path / "night" / look)
        (tmp_path / "night" / look / "x.png").write_bytes(synth.encode(synth.brain_slice(3, 32)))
    assert run.main(["--input", str(tmp_path / "night"), "--output", str(tmp_path / "out"), "--model", model,
                     "--keep-paths"]) == 0
    page = open(rows_mod.result_file(tmp_path / "out", "report.html")).read()
    assert "(T2: the model flags 100% of slices of heads without a tumor)" in page  # beside its flagged series
    assert "(DWI: a look the model never trained on)" in page
    assert "(T1:" not in page  # a look the probe never measured gets no note
    import csv
    studies = list(csv.DictReader(open(rows_mod.result_file(tmp_path / "out", "flagged_studies.csv"))))
    caveats = {s["flagged_series"]: s["look_caveats"] for s in studies}  # the worklist file carries them too
    assert len(caveats) == 3 and caveats[next(k for k in caveats if k.endswith("/t1"))] == ""
    assert caveats[next(k for k in caveats if k.endswith("/t2"))].endswith(
        "/t2 (T2: the model flags 100% of slices of heads without a tumor)")
    assert caveats[next(k for k in caveats if k.endswith("/dwi"))].endswith("(DWI: a look the model never trained on)")
    stale = {**md, "threshold": md["threshold"] / 2}
    assert any("tumor-free probe" in p for p in artifact.contract_problems(stale))
    tiny_model.rethreshold_on_new_predictions(model, md)  # a re-threshold drops the stale figures
    assert "tumor_free_probe" not in md and not artifact.contract_problems(md)


def test_planes_are_cut_scored_and_stored_beside_the_looks(tmp_path, capsys):
    """--planes: the volumes cut sagittal and coronal, scored through brain-score as folder series, the share
    flagged per plane stored (sealed) for the report's caveat on a flagged series in another plane."""
    import nibabel as nib

    from beam_pipeline import report
    from screening_core import artifact
    from tests import tiny_model
    from trainer import tumor_free_probe
    xx, yy, zz = np.meshgrid(*(np.arange(n) - n / 2 for n in (36, 44, 30)), indexing="ij")
    head = (((xx / 15) ** 2 + (yy / 19) ** 2 + (zz / 12) ** 2) < 1.0) * (100 + 20 * np.cos(xx + yy))
    os.makedirs(tmp_path / "in")
    nib.save(nib.Nifti1Image(head.astype(np.int16), np.eye(4)), str(tmp_path / "in" / "someone_t1.nii.gz"))
    nib.save(nib.Nifti1Image(head.astype(np.int16), np.diag([1.0, 1.0, 5.0, 1.0])),
             str(tmp_path / "in" / "thick_flair.nii.gz"))  # 5 mm slices: not cut in another plane
    model = tiny_model.write_tiny_artifact(tmp_path / "a", lesion_bias=5.0)
    assert tumor_free_probe.main(["--input", str(tmp_path / "in"), "--model", model, "--write",
                                  "--planes", "sagittal,coronal", "--json", str(tmp_path / "probe.json")]) == 0
    out = capsys.readouterr().out
    assert "| 1 | sagittal (1 volumes) |" in out and "| 1 | coronal (1 volumes) |" in out
    planes = artifact.verify(model)["tumor_free_probe"]["planes"]
    written = __import__("json").loads((tmp_path / "probe.json").read_text())
    assert set(written) == {"1", "planes"} and written["planes"]["1"] == planes  # the JSON holds what was stored
    assert set(planes) == {"coronal", "sagittal"} and all(a["volumes"] == 1 and a["flagged"] == 1.0 for a in planes.values())
    assert 20 <= planes["sagittal"]["slices"] <= 36 and 25 <= planes["coronal"]["slices"] <= 44
    md = artifact.read_metadata(model)
    assert report.plane_caveat("coronal", md) == ("coronal slices: the model was chosen on axial slices; it flags "
                                                  "100% of coronal slices of heads without a tumor")
    os.remove(tmp_path / "in" / "someone_t1.nii.gz")
    with pytest.raises(SystemExit) as e:
        tumor_free_probe.main(["--input", str(tmp_path / "in"), "--model", model, "--planes", "coronal"])
    assert e.value.code == 2 and "2.5 mm or finer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        tumor_free_probe.main(["--input", str(tmp_path / "in"), "--model", model, "--planes", "axial"])
    assert e.value.code == 2
    banner = report._validation_html(set(), md)
    assert "and of the same heads cut in other planes <b>coronal 100%, sagittal 100%</b>" in banner

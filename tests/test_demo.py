"""The README's demo, end to end on a small generated input."""
import json
import os

import pyarrow.parquet as pq

from beam_pipeline import demo, results_store
from tests import tiny_model


def test_demo_runs_and_outputs_are_consistent(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--images", "12", "--model", model_dir]) == 0
    printed = capsys.readouterr().out
    assert "NOT a diagnostic device" in printed and "generated" in printed
    summary = json.load(open(out / "screening" / "results" / "_SUMMARY.json"))
    rows = pq.read_table(results_store.reader_glob(str(out / "screening"))).to_pylist()
    # 6 zip images + readme + corrupt jpeg; 2 studies x 3 DICOM + 1 bad upload
    assert summary["rows"] == len(rows) == 15
    assert summary["by_status"] == {"ok": 12, "error": 1, "skipped": 2}
    assert all(os.path.exists(p) for p in summary["output_files"])
    assert not any("DEMO^PATIENT" in repr(r) or "FAKE-" in repr(r) for r in rows)
    assert {r["study_instance_uid"] for r in rows if r["image_format"] == "dicom"} != {None}

"""End-to-end scoring on generated archives with a tiny model in the artifact format."""
import os

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import archives, decoding, results_store, run, schema
from beam_pipeline.stages.expand import ExpandInputs
from screening_core import artifact, preprocessing
from tests import corpus, tiny_model
from tests.rows import stable


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    inputs, expected = corpus.build(root)
    model_dir = tiny_model.write_tiny_artifact(root)
    return root, inputs, expected, model_dir


@pytest.fixture(scope="module")
def in_memory(setup):
    """The corpus scored once in a TestPipeline; the tests below read this one result."""
    root, inputs, _, model_dir = setup
    return _run(root, inputs, model_dir, "out_inmem")


def _run(root, inputs, model_dir, name, extra=()):
    out = str(root / name)
    argv = ["--input", os.path.join(inputs, "*.zip"), "--input", os.path.join(inputs, "*.tar*"),
            "--input", os.path.join(inputs, "loose.png"), "--input", os.path.join(inputs, "IM*"),
            "--keep-paths", "--output", out, "--model", model_dir, "--run-id", "test-run", "--chunk-size", "4",
            "--batch-size", "8", *extra]
    run.run(argv, test_pipeline=TestPipeline(argv=argv) if not extra else None)
    table = pq.read_table(results_store.reader_glob(out))
    assert table.schema.equals(schema.IMAGE_SCHEMA, check_metadata=False)
    return out, table.to_pylist()


def _direct_probability(model, spec, source, member, frame):
    if member:
        kind = archives.archive_kind(source)
        chunk = next(c for c in archives.list_chunks(source, os.path.getsize(source))
                     if any(r.path == member for r in c.refs))
        chunk = archives.Chunk(chunk.source_uri, kind, 0, [r for r in chunk.refs if r.path == member])
        _, data, _ = next(archives.read_members(chunk))
    else:
        data = open(source, "rb").read()
    gray = decoding.decode(data, member or source).frames[frame].gray
    return float(model.predict(preprocessing.prepare(gray, spec)[None], verbose=0)[0, 0])


def test_one_row_per_member_with_right_status(setup, in_memory):
    expected = setup[2]
    out, rows = in_memory
    got = {(r["source_uri"], r["member_path"], r["frame_index"]): (r["status"], r["error_code"]) for r in rows}
    assert len(rows) == len(got)  # no duplicates
    assert got == expected
    summary = run.read_summary(out)
    assert summary["rows"] == len(expected)
    assert summary["by_status"]["ok"] == sum(1 for s, _ in expected.values() if s == "ok")
    assert all(r["run_id"] == "test-run" and r["model_name"] == "tiny" for r in rows)


def test_probabilities_equal_direct_model_calls(setup, in_memory):
    model_dir = setup[3]
    _, rows = in_memory
    model, md = artifact.load(model_dir)
    spec = preprocessing.InputSpec.from_dict(md["input_spec"])
    ok_rows = [r for r in rows if r["status"] == "ok"]
    assert len(ok_rows) == 19
    for r in ok_rows:
        want = _direct_probability(model, spec, r["source_uri"], r["member_path"], r["frame_index"])
        assert r["tumor_probability"] == pytest.approx(want, abs=1e-5), r["member_path"]
        assert r["predicted_label"] == ("tumor" if r["tumor_probability"] >= md["threshold"] else "no_tumor")


def test_dicom_rows_carry_uids_but_no_patient_identifiers(in_memory):
    _, rows = in_memory
    mr = [r for r in rows if r["member_path"] == "series2/mr.dcm"][0]
    assert mr["image_format"] == "dicom" and mr["modality"] == "MR"
    assert mr["study_instance_uid"] and mr["sop_instance_uid"]
    # no DICOM patient field becomes a column; the one "patient" column is --group-pattern's pseudonym of
    # non-DICOM file names, empty for DICOM rows
    assert [k for k in rows[0] if k.startswith("patient")] == ["patient_group"] and mr["patient_group"] is None
    blob = repr(rows)
    assert "CompressedSamples^MR1" not in blob and "4MR1" not in blob


def test_multi_processing_matches_in_memory(setup, in_memory):
    root, inputs, _, model_dir = setup
    _, a = in_memory
    _, b = _run(root, inputs, model_dir, "out_b", extra=(
        "--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"))

    assert stable(a) == stable(b)


def test_expand_inputs_fans_out_member_chunks(setup):
    _, inputs, _, _ = setup
    with TestPipeline() as p:
        chunks = p | ExpandInputs([os.path.join(inputs, "study_a.zip")], archives.Limits(chunk_size=4))
        sizes = chunks | beam.Map(lambda c: (c.kind, len(c.refs)))
        assert_that(sizes, equal_to([("zip", 4), ("zip", 4), ("zip", 4), ("zip", 2)]))


def test_job_level_errors_stop_before_work(setup, tmp_path):
    root, inputs, _, model_dir = setup
    base = ["--keep-paths", "--output", str(tmp_path / "o"), "--model", model_dir]
    with pytest.raises(run.JobError, match="no input matched"):
        run.run(["--input", str(tmp_path / "nothing*.zip"), *base])
    with pytest.raises(run.JobError, match="model"):
        run.run(["--input", os.path.join(inputs, "*.zip"), "--keep-paths", "--output", str(tmp_path / "o"),
                 "--model", str(tmp_path / "no_model")])
    assert run.main(["--input", str(tmp_path / "nothing*.zip"), *base]) == 2

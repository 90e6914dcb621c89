"""Results are never lost: a run promotes its result in one step, or not at all.

Readers follow the contract in docs/reliability.md (glob <output>/**/images-*.parquet,
skip `_`/`.` paths), as `rows.images` does.
"""
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from beam_pipeline import results_store, run
from tests import rows as rows_mod
from tests import synth, tiny_model
from tests.rows import stable


def _zip(path, seeds, size=32):
    with zipfile.ZipFile(path, "w") as zf:
        for s in seeds:
            zf.writestr(f"img{s}.png", synth.encode(synth.brain_slice(s, size)))


def _cli(argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "beam_pipeline.run", *argv], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_promotion_is_atomic_for_a_reader(tmp_path):
    """A reader polling the contract glob never sees a mix, a partial or an empty result."""
    out = str(tmp_path / "out")
    os.makedirs(out)
    seen, stop = [], threading.Event()

    def stage(n):
        path = results_store.staging_dir(out, f"run{n}")
        os.makedirs(path)
        for shard in range(3):
            open(f"{path}/images-run{n}-{shard:05d}-of-00003.parquet", "wb").close()
        return path

    results_store.promote(out, stage(0))

    def reader():
        while not stop.is_set():
            seen.append(tuple(os.path.basename(p) for p in results_store.reader_glob(out)))

    t = threading.Thread(target=reader)
    t.start()
    for n in range(1, 80):
        results_store.promote(out, stage(n))
        # Runs are minutes apart; a reader gets one promotion's time to list. 50 ms, not 5: with the suite
        # in parallel processes a CPU-starved reader once held a listing across two promotions.
        time.sleep(0.05)
    stop.set()
    t.join()
    assert len(seen) > 100
    for files in seen:
        assert len(files) == 3 and len({f.split("-")[1] for f in files}) == 1, files
    assert not glob.glob(f"{out}/_staging/*")
    assert [os.path.basename(p) for p in glob.glob(f"{out}/_previous/*")] == ["run79"]  # only the last one kept


def _incremental_setup(tmp_path, first_zip, n, *extra):
    """(inputs folder, manifest, output, argv) for --manifest runs over inputs/*.zip."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    _zip(inputs / first_zip, range(n))
    mf, out = str(tmp_path / "manifest.json"), str(tmp_path / "out")
    argv = ["--input", str(inputs / "*.zip"), "--keep-paths", "--output", out, "--model", model_dir,
            "--manifest", mf, *extra]
    return inputs, mf, out, argv


def test_incremental_run_on_the_same_output_keeps_earlier_rows(tmp_path):
    inputs, mf, out, argv = _incremental_setup(tmp_path, "morning.zip", 4)
    run.run(argv + ["--run-id", "am"])
    first = rows_mod.images(out)
    _zip(inputs / "afternoon.zip", range(4, 7))
    run.run(argv + ["--run-id", "pm"])
    rows = rows_mod.images(out)
    assert len(rows) == 7 and {r["run_id"] for r in rows} == {"am", "pm"}
    assert stable([r for r in rows if r["run_id"] == "am"]) == stable(first)
    summary = run.read_summary(out)
    assert summary["run_id"] == "pm" and summary["rows"] == 3  # this run
    assert summary["result"]["rows"] == 7 and summary["result"]["run_ids"] == ["am", "pm"]
    assert sorted(summary["result"]["output_files"]) == sorted(results_store.reader_glob(out))
    assert "am, pm" in open(rows_mod.result_file(out, "report.html")).read()
    assert set(json.load(open(mf))["inputs"]) == {str(inputs / "morning.zip"), str(inputs / "afternoon.zip")}


def test_rerun_without_manifest_replaces_the_result(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    _zip(tmp_path / "a.zip", range(3))
    out = str(tmp_path / "out")
    argv = ["--input", str(tmp_path / "*.zip"), "--keep-paths", "--output", out, "--model", model_dir]
    run.run(argv + ["--run-id", "first"])
    run.run(argv + ["--run-id", "second"])
    rows = rows_mod.images(out)
    assert len(rows) == 3 and {r["run_id"] for r in rows} == {"second"}
    assert run.read_summary(out)["result"]["run_ids"] == ["second"]


def _wait_for(predicate, timeout, proc):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_kill_minus_9_mid_run_keeps_the_previous_result_and_the_rerun_scores_everything(tmp_path):
    inputs, mf, out, argv = _incremental_setup(tmp_path, "monday.zip", 3, "--chunk-size", "8")
    run.run(argv + ["--run-id", "monday"])
    before, manifest_before = stable(rows_mod.images(out)), open(mf).read()
    # Measured from beam-temp-* to exit: ~4 s at 400 images (6 s at 1,500), ample for a kill polled
    # every 50 ms; the assertions below fail if the run got to promote first.
    _zip(inputs / "tuesday.zip", range(3, 403), size=48)
    proc = _cli(argv + ["--run-id", "tuesday"])
    # Killed once it has begun writing its tables (Beam's sinks stage under beam-temp-*).
    started = _wait_for(lambda: glob.glob(f"{out}/_staging/tuesday-*/beam-temp-*"), 120, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert started, proc.stdout.read()
    assert stable(rows_mod.images(out)) == before  # the previous result, untouched
    assert run.read_summary(out)["run_id"] == "monday"
    assert open(mf).read() == manifest_before  # tuesday.zip is not recorded as scored
    run.run(argv + ["--run-id", "tuesday-again"])
    rows = rows_mod.images(out)
    assert len(rows) == 3 + 400
    assert {r["run_id"] for r in rows} == {"monday", "tuesday-again"}


def test_a_run_that_sees_another_claim_the_output_between_its_two_looks_goes_on(tmp_path, monkeypatch):
    """Two runs started at once on a new output: the other writes the ownership marker after this one found none
    and before it lists the folder, so the listing holds the marker. Seen in CI: the run exited 2 ("holds 1
    file(s) that this job did not write ... e.g. .../_BRAIN_SCREENING_OUTPUT"). A folder with someone else's files
    is still refused."""
    out = tmp_path / "out"
    out.mkdir()
    listing = results_store._match

    def other_run_claims_first(pattern):
        monkeypatch.setattr(results_store, "_match", listing)
        results_store.claim(str(out), "other")  # the racer's whole claim lands here
        return listing(pattern)
    monkeypatch.setattr(results_store, "_match", other_run_claims_first)
    results_store.claim(str(out), "this")
    assert json.loads((out / results_store.OWNER_MARKER).read_text())["first_run_id"] == "other"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    with pytest.raises(results_store.OutputError, match="did not write"):
        results_store.claim(str(foreign), "this")


def test_a_run_that_sees_another_still_writing_its_claim_goes_on(tmp_path, monkeypatch):
    """The other run has written its marker beside the final name but not yet moved it there when this run lists
    the folder. Seen in CI: exit 2, "holds 1 file(s) ... e.g. .../_BRAIN_SCREENING_OUTPUT.tmp-4014-2a7ed7c3"."""
    out = tmp_path / "out"
    out.mkdir()
    half_written = out / f"{results_store.OWNER_MARKER}.tmp-4014-2a7ed7c3"
    listing = results_store._match

    def other_run_mid_claim(pattern):
        half_written.write_text("{")
        try:
            return listing(pattern)
        finally:
            half_written.unlink()
    monkeypatch.setattr(results_store, "_match", other_run_mid_claim)
    results_store.claim(str(out), "this")
    assert json.loads((out / results_store.OWNER_MARKER).read_text())["first_run_id"] == "this"
    (out / "notes.txt").write_text("someone else's")
    (out / results_store.OWNER_MARKER).unlink()
    with pytest.raises(results_store.OutputError, match="did not write"):
        results_store.claim(str(out), "this")


def test_two_runs_racing_on_one_output_leave_one_consistent_result(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    _zip(tmp_path / "a.zip", range(40))
    out = str(tmp_path / "out")
    argv = ["--input", str(tmp_path / "*.zip"), "--keep-paths", "--output", out, "--model", model_dir]
    procs = [_cli(argv + ["--run-id", f"racer{i}"]) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stdout.read()
    rows = rows_mod.images(out)
    winner = run.read_summary(out)["run_id"]
    assert len(rows) == 40 and {r["run_id"] for r in rows} == {winner}
    assert len(rows_mod.images(out, "studies-*.parquet")) >= 1
    assert not glob.glob(f"{out}/_staging/*")

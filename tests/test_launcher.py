"""The launcher's exit code comes from the job and the runner's state, never from whether a file reads."""
import dataclasses

import pytest

from beam_pipeline import job as job_mod
from beam_pipeline import run


class _Result:
    def __init__(self, state, job):
        self.state, self.screening_job = state, job


def _job(tmp_path, wait=True):
    flags = type("Flags", (), {"max_error_fraction": 0.05, "manifest": None, "fail_on_drift": False,
                               "reading_room": None})()
    fields = {f.name: None for f in dataclasses.fields(job_mod.Job)}
    return job_mod.Job(**{**fields, "output": str(tmp_path / "out"), "run_id": "night", "inputs": (),
                          "wait": wait, "flags": flags, "nothing_to_do": False})


@pytest.mark.parametrize("state, wait, code, says", [
    ("RUNNING", False, run.EXIT_OK, "Submitted"),  # a Flex Template launcher: submitted, counts not ours
    ("FAILED", True, run.EXIT_JOB_ERROR, "state FAILED"),
    ("CANCELLED", True, run.EXIT_JOB_ERROR, "state CANCELLED"),
    ("DONE", True, run.EXIT_JOB_ERROR, "cannot be read"),  # finished, no summary: never a success
])
def test_exit_code_follows_the_runner_state(tmp_path, monkeypatch, capsys, state, wait, code, says):
    job = _job(tmp_path, wait)
    monkeypatch.setattr(run, "run", lambda argv: _Result(state, job))
    assert run.main(["--input", "x", "--output", job.output]) == code
    out = capsys.readouterr()
    assert says in out.out + out.err


def test_the_job_is_frozen(tmp_path):
    job = _job(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.output = "elsewhere"


@pytest.mark.parametrize("argv, size, mode, workers", [
    ([], 1 << 20, job_mod.DEFAULT_DIRECT_MODE, "default"),  # nothing said: the measured default, printed
    ([], 2 << 30, "multi_processing", "cores"),  # a large input: one worker process per vCPU (on 2+ vCPUs)
    (["--direct_running_mode", "in_memory"], 2 << 30, "in_memory", 1),  # the user's choice stays
    (["--direct_num_workers=3"], 2 << 30, "in_memory", 3),
    (["--runner", "DataflowRunner"], 2 << 30, "in_memory", 1),  # not a DirectRunner: nothing to fill in
])
def test_directrunner_flags_left_out_get_the_measured_default(argv, size, mode, workers, monkeypatch):
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
    monkeypatch.setattr(job_mod.os, "cpu_count", lambda: 2)
    options = PipelineOptions(argv)
    note = job_mod._direct_defaults(argv, options, size)
    direct = options.view_as(DirectOptions)
    assert direct.direct_running_mode == mode
    assert direct.direct_num_workers == {"default": job_mod.DEFAULT_DIRECT_WORKERS, "cores": 2}.get(workers, workers)
    assert (note is not None) == (workers in ("default", "cores"))
    if note:
        assert mode in note and "--direct_running_mode" in note and "MiB of input" in note


def test_large_inputs_run_one_process_per_vcpu_only_where_there_are_two():
    big = job_mod.LARGE_INPUT_BYTES
    assert job_mod.direct_mode_for(big, 2) == ("multi_processing", 2)
    assert job_mod.direct_mode_for(big, 1) == (job_mod.DEFAULT_DIRECT_MODE, 1)
    assert job_mod.direct_mode_for(big - 1, 16) == (job_mod.DEFAULT_DIRECT_MODE, 1)


def test_the_input_size_counts_every_local_file(tmp_path):
    for i in range(3):
        (tmp_path / f"a{i}.zip").write_bytes(b"x" * 1000)
    pattern = str(tmp_path / "*.zip")
    matched = job_mod._match_inputs([pattern], full=False)  # a local pattern is listed whole (a remote one: once)
    assert len(matched) == 3 and job_mod._input_bytes(matched) == 3000

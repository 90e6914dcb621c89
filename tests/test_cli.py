"""The command line: our own help, typos rejected, values validated, exit codes cron can trust."""
import os
import zipfile

import pytest

from beam_pipeline import cli, run
from tests import bad_inputs, synth, tiny_model
from tests import rows as rows_mod


def test_help_lists_our_flags_with_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        cli.check_flags(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--input", "--output", "--model", "--threshold", "--batch-size", "--max-error-fraction",
                 "--help-beam"):
        assert flag in text, flag
    assert "(default: 64)" in text and "Exit codes" in text
    assert "--temp_location TEMP_LOCATION" not in text  # Beam's own flags stay behind --help-beam


def test_beam_help_lists_beam_flags(capsys):
    with pytest.raises(SystemExit):
        cli.check_flags(["--help-beam"])
    assert "--runner" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--treshold", "0.5"], "did you mean --threshold"),
    (["--inptu", "x"], "did you mean --input"),
    (["--threshold", "2"], "strictly between 0 and 1"),
    (["--threshold", "nan"], "strictly between 0 and 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--chunk-size", "-1"], "--chunk-size must be >= 1"),
    (["--max-member-bytes", "-1"], "--max-member-bytes must be >= 1"),
    (["--max-error-fraction", "1.5"], "--max-error-fraction"),
    (["stray"], "unexpected argument"),
])
def test_bad_flags_and_values_exit_2_before_work(tmp_path, capsys, argv, message):
    code = run.main(["--input", str(tmp_path / "none.png"), "--output", str(tmp_path / "out")] + argv)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_beam_flags_still_pass(tmp_path):
    cli.check_flags(["--runner", "DirectRunner", "--direct_num_workers", "2", "--input", "x"])


def test_folder_input_means_every_file_under_it_and_exit_codes(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    tree = tmp_path / "export" / "day1" / "series"
    tree.mkdir(parents=True)
    for i in range(3):
        (tree / f"img{i}.png").write_bytes(synth.encode(synth.brain_slice(i, 32)))
    with zipfile.ZipFile(tmp_path / "export" / "more.zip", "w") as zf:
        zf.writestr("a.png", synth.encode(synth.brain_slice(9, 32)))
    out = str(tmp_path / "out")
    assert run.main(["--input", str(tmp_path / "export"), "--output", out, "--model", model_dir]) == 0
    assert run.read_summary(out)["rows"] == 4 and run.read_summary(out)["by_status"] == {"ok": 4}
    printed = capsys.readouterr().out
    assert "report.html" in printed and "Exit 0" in printed
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"broken{i}.png").write_bytes(bad_inputs._img("L")[:100])
    (bad / "ok.png").write_bytes(synth.encode(synth.brain_slice(1, 32)))
    out2 = str(tmp_path / "out2")
    assert run.main(["--input", str(bad), "--output", out2, "--model", model_dir]) == 3
    assert "3 of 4 rows are errors" in capsys.readouterr().out
    assert run.main(["--input", str(bad), "--output", out2, "--model", model_dir,
                     "--max-error-fraction", "0.8"]) == 0


def test_model_given_as_file_or_name_folder(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(1, 32)))
    out = str(tmp_path / "o")
    assert run.main(["--input", str(img), "--output", out, "--model",
                     os.path.join(model_dir, "model.keras")]) == 0
    name_dir = os.path.dirname(model_dir)
    assert run.main(["--input", str(img), "--output", out, "--model", name_dir]) == 0
    assert "using the newest" in capsys.readouterr().out
    empty = tmp_path / "empty_models"
    empty.mkdir()
    assert run.main(["--input", str(img), "--output", out, "--model", str(empty)]) == 2
    assert "no version folders" in capsys.readouterr().err


def test_output_owned_by_someone_else_is_refused(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(1, 32)))
    theirs = tmp_path / "shared_folder"
    theirs.mkdir()
    (theirs / "images-00000-of-00001.parquet").write_bytes(b"someone else's table")
    (theirs / "report.html").write_text("their report")
    assert run.main(["--input", str(img), "--output", str(theirs), "--model", model_dir]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (theirs / "images-00000-of-00001.parquet").read_bytes() == b"someone else's table"
    assert (theirs / "report.html").read_text() == "their report"
    ours = tmp_path / "ours"
    assert run.main(["--input", str(img), "--output", str(ours), "--model", model_dir]) == 0
    assert run.main(["--input", str(img), "--output", str(ours), "--model", model_dir]) == 0  # our own: rerun ok


def test_corrupt_manifest_is_a_job_error_that_touches_nothing(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(1, 32)))
    out = tmp_path / "out"
    mf = tmp_path / "manifest.json"
    assert run.main(["--input", str(img), "--output", str(out), "--model", model_dir, "--manifest", str(mf)]) == 0
    before = sorted(os.listdir(out))
    for bad in ('{"inputs": {"a": 1', '["a", "b"]', '{"inputs": [1, 2]}'):
        mf.write_text(bad)
        assert run.main(["--input", str(img), "--output", str(out), "--model", model_dir,
                         "--manifest", str(mf)]) == 2
        assert "manifest" in capsys.readouterr().err
        assert sorted(os.listdir(out)) == before


def test_report_cli_explains_itself(capsys):
    from beam_pipeline import report
    with pytest.raises(SystemExit) as e:
        report.main(["--help"])
    assert e.value.code == 0 and "report.html" in capsys.readouterr().out


def test_artifact_integrity_covers_metadata_and_the_model_input_shape(tmp_path, capsys):
    """An edited threshold, an unsealed artifact or a metadata input size the model does not take: exit 2."""
    import json

    from screening_core import artifact
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(1, 32)))
    argv = ["--input", str(img), "--output", str(tmp_path / "o"), "--model", model_dir]
    md_path = os.path.join(model_dir, "metadata.json")
    md = json.load(open(md_path))
    json.dump({**md, "threshold": 0.01}, open(md_path, "w"))
    assert run.main(argv) == 2
    assert "metadata.json was changed after the artifact was sealed" in capsys.readouterr().err
    json.dump({**md, "input_spec": {**md["input_spec"], "height": 64, "width": 64}}, open(md_path, "w"))
    artifact.seal(model_dir)  # consistent sums, inconsistent content
    assert run.main(argv) == 2
    assert "declares (64, 64, 1)" in capsys.readouterr().err
    json.dump(md, open(md_path, "w"))
    os.remove(os.path.join(model_dir, "SHA256SUMS"))
    assert run.main(argv) == 2
    assert "python -m screening_core.artifact seal" in capsys.readouterr().err
    artifact.seal(model_dir)
    assert run.main(argv) == 0
    assert run.read_summary(str(tmp_path / "o"))["rows"] == 1


def test_json_log_format_gives_one_parseable_object_per_line(tmp_path, capsys):
    import json
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    img = tmp_path / "x.png"
    img.write_bytes(synth.encode(synth.brain_slice(1, 32)))
    assert run.main(["--input", str(img), "--output", str(tmp_path / "o"), "--model", model_dir,
                     "--log-format", "json"]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines()]
    events = [r["event"] for r in records]
    assert events[0] == "start" and events[-3:] == ["summary", "outputs", "exit"]
    assert records[-1]["exit_code"] == 0 and records[-2]["outputs"]["report"].endswith("results/report.html")
    assert run.main(["--input", str(tmp_path / "nothing-*.zip"), "--output", str(tmp_path / "o"),
                     "--model", model_dir, "--log-format", "json"]) == 2
    err = json.loads(capsys.readouterr().err)
    assert err["level"] == "error" and err["exit_code"] == 2 and "no input matched" in err["message"]


def test_progress_line_reports_counts_and_rate(capsys):
    import time

    from beam_pipeline import console
    with console.Progress(interval=0.05):
        console.COUNTS.add(listed=120, scored=100, errors=3)
        time.sleep(0.2)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "members listed" in ln]
    assert lines and "120 members listed, 100 images scored, 3 errors" in lines[-1]


def test_progress_line_adds_up_the_counts_of_worker_processes():
    """A large input runs one worker process per vCPU (DirectRunner multi_processing); the launcher's
    line must still count what they score. Two processes stand in for the workers."""
    import subprocess
    import sys

    from beam_pipeline import console
    add = "from beam_pipeline import console; console.COUNTS.add(listed={0}, scored={1})"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with console.Progress(interval=3600) as progress:
        console.COUNTS.add(listed=5, scored=4)  # the launcher's own process (in_memory) counts as before
        for listed, scored in ((100, 90), (50, 40)):
            subprocess.run([sys.executable, "-c", add.format(listed, scored)], check=True, cwd=root)
        text, fields = progress.line()
    assert fields["members_listed"] == 155 and fields["images_scored"] == 134, text
    assert console._SHARED_ENV not in os.environ  # the job is over: workers started later share nothing


def test_progress_line_says_how_far_the_largest_pacs_study_is_without_naming_it():
    from beam_pipeline import console
    uid = "1.2.826.0.1.3680043.8.498.777"
    with console.Progress(interval=3600) as progress:
        console.STUDIES.listed("dicomweb://pacs/dicom-web/studies/1.2.3", 4)
        console.STUDIES.listed(f"dicomweb://pacs/dicom-web/studies/{uid}", 60_000)
        console.STUDIES.listed(f"dicomweb://pacs/dicom-web/studies/{uid}", 40_000)  # a second chunk of listing
        console.STUDIES.listed("dicomweb://pacs/dicom-web/studies/1.2.4", 10)
        console.STUDIES.retrieved("dicomweb://pacs/dicom-web/studies/1.2.3", 4)
        console.STUDIES.retrieved(f"dicomweb://pacs/dicom-web/studies/{uid}", 25_000)
        console.STUDIES.retrieved("dicomweb://pacs/dicom-web/studies/1.2.4", 3)
        text, fields = progress.line()
    assert "1 of 3 studies retrieved; study #2: 25,000 of 100,000 instances (25 %)" in text
    assert fields["largest_study_under_way"] == {"number": 2, "instances_retrieved": 25_000, "instances": 100_000}
    assert uid not in text and "1.2.3" not in text and "pacs" not in text
    with console.Progress(interval=3600) as progress:  # a new job starts from nothing; file inputs add nothing
        assert "studies" not in progress.line()[0]


def test_config_file_and_comma_separated_inputs(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(synth.encode(synth.brain_slice(len(name), 32)))
    out = tmp_path / "o"
    config = tmp_path / "nightly.yaml"
    config.write_text(f"input:\n  - {tmp_path / 'a.png'},{tmp_path / 'b.png'}\noutput: {out}\nmodel: {model_dir}\n"
                      "threshold: 0.9\nheatmaps: false\nkeep-paths: true\n")
    assert run.main(["--config", str(config), "--threshold", "0.7"]) == 0  # the command line wins
    summary = run.read_summary(str(out))
    assert summary["rows"] == 2
    rows = rows_mod.images(out)
    assert {round(r["threshold"], 5) for r in rows} == {0.7} and not any(r["heatmap_path"] for r in rows)
    assert {os.path.basename(r["source_uri"]) for r in rows} == {"a.png", "b.png"}
    config.write_text("treshold: 0.5\n")
    assert run.main(["--config", str(config)]) == 2
    assert "did you mean --threshold" in capsys.readouterr().err
    config.write_text("- just\n- a list\n")
    assert run.main(["--config", str(config)]) == 2
    assert "expected a mapping" in capsys.readouterr().err
    config.write_text(f"run-id: NO\noutput: {out}\nmodel: {model_dir}\ninput: {tmp_path / 'a.png'}\n")
    assert run.main(["--config", str(config)]) == 2  # YAML reads NO as false: never silently dropped
    assert "run-id was read by YAML as the boolean False" in capsys.readouterr().err
    config.write_text(f"keep-paths: sometimes\noutput: {out}\n")
    assert run.main(["--config", str(config)]) == 2
    assert "keep-paths is a switch" in capsys.readouterr().err
    config.write_text(f"input: {tmp_path / 'a.png'}\noutput: {out}\nmodel: {model_dir}\n")
    assert run.main(["--config", str(config), "--input", str(tmp_path / "b.png")]) == 0
    assert "Inputs: 1 from --config" in capsys.readouterr().out and run.read_summary(str(out))["rows"] == 2


def test_a_night_that_scored_no_image_does_not_exit_ok(tmp_path, capsys):
    """Five text files named .jpg: every row skipped, nothing screened; exit 3, not 0."""
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    for i in range(5):
        (tmp_path / f"scan{i}.jpg").write_text("not an image at all\n")
    code = run.main(["--input", str(tmp_path / "*.jpg"), "--output", str(tmp_path / "out"), "--model", model_dir])
    assert code == run.EXIT_TOO_MANY_ERRORS
    assert "Exit 3: no image was scored" in capsys.readouterr().out


def test_json_logs_stay_json_when_libraries_log(tmp_path, capsys):
    """pydicom logs a decoder traceback at ERROR before it raises (the member becomes a coded row): with
    --log-format json every console line, library records included, is one JSON object."""
    import json

    from tests import bad_inputs
    inputs, _, _, _ = bad_inputs.build(tmp_path)
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    argv = ["--input", os.path.join(inputs, "*"), "--output", str(tmp_path / "o"), "--model", model_dir,
            "--log-format", "json", "--max-error-fraction", "1"]
    run.main(argv)
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    outputs = next(r for r in map(json.loads, lines) if r["event"] == "outputs")["outputs"]
    assert {"heatmaps", "report", "summary"} <= set(outputs)
    # verbose: the library records shown; without heatmaps and report the outputs name neither
    run.main(argv + ["--verbose", "--no-heatmaps", "--no-report", "--output", str(tmp_path / "o2")])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in (captured.out + captured.err).splitlines() if line.startswith("{")]
    assert any(r["event"] == "library_log" and r["logger"].startswith("pydicom") for r in records)
    outputs = next(r for r in records if r["event"] == "outputs")["outputs"]
    assert "heatmaps" not in outputs and "report" not in outputs and "summary" in outputs


def test_the_jobs_own_errors_share_one_base():
    """So the launcher tells a problem to explain (exit 2, one sentence) from a bug (a traceback)."""
    import importlib
    import inspect
    import pkgutil

    import beam_pipeline
    from beam_pipeline import errors
    found = []
    for info in pkgutil.walk_packages(beam_pipeline.__path__, "beam_pipeline."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, Exception):
                found.append(name)
                assert issubclass(cls, errors.ScreeningError), f"{info.name}.{name}"
    assert len(found) >= 10


def test_the_console_summary_is_a_sentence_not_a_json_dump():
    line = run.summary_line({"run_id": "night1", "rows": 1234, "by_status": {"ok": 1200, "error": 30, "skipped": 4},
                             "by_error_code": {f"code_{i}": i + 1 for i in range(7)}, "flagged": 56,
                             "out_of_distribution": 3, "images_per_second": 151.26})
    assert line.splitlines() == [
        "Run night1: 1,234 rows (1,200 ok, 30 error, 4 skipped); 56 flagged; 3 out of distribution; 151.3 images/s",
        "Codes: code_6 7, code_5 6, code_4 5, code_3 4, code_2 3 and 2 more (_SUMMARY.json)"]
    empty = run.summary_line({"run_id": "n", "rows": 0, "by_status": {}, "by_error_code": {}, "flagged": 0,
                              "out_of_distribution": 0, "images_per_second": 0})
    assert empty == "Run n: 0 rows; 0 flagged; 0 out of distribution" and "{" not in line

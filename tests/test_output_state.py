"""State the job cannot be turned against: links in its output, an output inside an input, a misplaced
manifest, a lost pseudonym key. Each is refused at launch (exit 2, a sentence) and touches nothing."""
import os

from beam_pipeline import run
from tests import synth, tiny_model


def _setup(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(synth.encode(synth.brain_slice(1, 32)))
    return str(data), tiny_model.write_tiny_artifact(tmp_path)


def test_a_symlinked_previous_or_staging_folder_is_refused_and_its_target_kept(tmp_path, capsys):
    data, model_dir = _setup(tmp_path)
    out, key = tmp_path / "out", str(tmp_path / "key")
    argv = ["--input", data, "--output", str(out), "--model", model_dir, "--pseudonym-key-file", key]
    assert run.main(argv) == 0
    victim = tmp_path / "precious"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "file").write_text("keep me")
    for name in ("_previous", "_staging"):
        link = out / name
        if link.is_dir() and not link.is_symlink():
            os.rename(link, tmp_path / f"{name}-moved")
        link.symlink_to(victim, target_is_directory=True)
        assert run.main(argv) == 2
        assert f"{name} is a symbolic link" in capsys.readouterr().err
        link.unlink()
    assert (victim / "sub" / "file").read_text() == "keep me"


def test_an_output_inside_a_folder_input_is_refused(tmp_path, capsys):
    data, model_dir = _setup(tmp_path)
    argv = ["--output", os.path.join(data, "out"), "--model", model_dir, "--pseudonym-key-file", str(tmp_path / "k")]
    assert run.main(["--input", data, *argv]) == 2
    assert "is inside the input" in capsys.readouterr().err
    assert run.main(["--input", os.path.join(data, "**"), *argv]) == 2
    assert not os.path.exists(os.path.join(data, "out", "results"))
    assert run.main(["--input", os.path.join(data, "*.png"), *argv]) == 0  # not recursive: its files never match


def test_a_manifest_in_results_or_in_a_missing_folder_is_refused_before_work(tmp_path, capsys):
    data, model_dir = _setup(tmp_path)
    out = tmp_path / "out"
    argv = ["--input", data, "--output", str(out), "--model", model_dir, "--pseudonym-key-file", str(tmp_path / "k")]
    assert run.main(argv + ["--manifest", str(out / "results" / "manifest.json")]) == 2
    assert "inside the output's results/" in capsys.readouterr().err
    assert run.main(argv + ["--manifest", str(tmp_path / "nowhere" / "manifest.json")]) == 2
    assert "does not exist or is not writable" in capsys.readouterr().err
    assert not (out / "results").exists()
    assert run.main(argv + ["--manifest", str(out / "manifest.json")]) == 0


def test_a_lost_or_different_pseudonym_key_is_an_error_once_results_exist(tmp_path, capsys):
    data, model_dir = _setup(tmp_path)
    out, key = tmp_path / "out", tmp_path / "key"
    argv = ["--input", data, "--output", str(out), "--model", model_dir, "--pseudonym-key-file", str(key)]
    assert run.main(argv) == 0
    first = key.read_text()
    key.unlink()
    assert run.main(argv) == 2
    assert "is missing, but results" in capsys.readouterr().err and not key.exists()
    key.write_text("ab" * 32 + "\n")
    assert run.main(argv) == 2
    assert "is not the key the results" in capsys.readouterr().err
    key.write_text(first)
    assert run.main(argv) == 0


def test_a_dead_runs_staging_never_blocks_the_next_night(tmp_path, monkeypatch):
    """A run that fails (here: the disk fills while finalising) takes its own staging with it and leaves the
    previous result; a dead run's staging older than a day is cleared before the next run does any work."""
    import pytest

    from beam_pipeline import finalise, results_store
    data, model_dir = _setup(tmp_path)
    out = tmp_path / "out"
    argv = ["--input", data, "--output", str(out), "--model", model_dir, "--pseudonym-key-file",
            str(tmp_path / "key"), "--run-id", "night1"]
    assert run.main(argv) == 0
    before = sorted(os.listdir(out / "results"))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(finalise, "finalise", disk_full)
    with pytest.raises(Exception, match="No space left on device"):
        run.run(argv[:-1] + ["night2"])
    monkeypatch.undo()
    assert os.listdir(out / "_staging") == [] and sorted(os.listdir(out / "results")) == before
    dead = out / "_staging" / "night0-deadbeef"
    (dead / "heatmaps").mkdir(parents=True)
    (dead / "heatmaps" / "big.png").write_bytes(b"\0" * 1024)
    old = results_store.STALE_STAGING_SECONDS + 60
    for p in (dead / "heatmaps" / "big.png", dead / "heatmaps", dead):
        os.utime(p, (os.path.getmtime(p) - old, os.path.getmtime(p) - old))
    seen = []
    real = finalise.finalise
    monkeypatch.setattr(finalise, "finalise", lambda *a, **k: (seen.append(dead.exists()), real(*a, **k))[1])
    assert run.main(argv[:-1] + ["night3"]) == 0
    assert seen == [False]  # gone before the run's work, not only after a successful promotion

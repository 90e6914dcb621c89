"""No patient identifier from folder or file names reaches any output by default."""
import os
import zipfile

import pytest

from beam_pipeline import pseudonym, run
from tests import rows as rows_mod
from tests import synth, tiny_model

IDENTIFIERS = ("MRN123456", "SMITH_JOHN", "19610203", "ACC998877")


def _tree(root):
    d = root / "exports" / "MRN123456" / "SMITH_JOHN_19610203"
    d.mkdir(parents=True)
    for i in range(3):
        (d / f"ACC998877_{i}.png").write_bytes(synth.encode(synth.brain_slice(i, 32, lesion=i == 0)))
    (d / "ACC998877_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with zipfile.ZipFile(root / "exports" / "MRN123456" / "SMITH_JOHN.zip", "w") as zf:
        zf.writestr("SMITH_JOHN/MRN123456/slice1.png", synth.encode(synth.brain_slice(7, 32)))
        zf.writestr("SMITH_JOHN/MRN123456/cut.png", synth.encode(synth.brain_slice(8, 32))[:60])
    return root / "exports"


def test_outputs_carry_no_identifiers_from_paths(tmp_path, capsys):
    model_dir = tiny_model.write_tiny_artifact(tmp_path, threshold=0.01)  # flags everything: heatmaps too
    inputs = _tree(tmp_path / "in")
    out = tmp_path / "out"
    assert run.main(["--input", str(inputs), "--output", str(out), "--model", model_dir,
                     "--max-error-fraction", "1"]) == 0
    printed = capsys.readouterr()
    rows = rows_mod.images(out)
    assert len(rows) == 6
    texts = [repr(rows), repr(rows_mod.images(out, "studies-*.parquet")), repr(rows_mod.images(out, "series-*.parquet")),
             open(rows_mod.result_file(out, "report.html")).read(), open(rows_mod.result_file(out, "_SUMMARY.json")).read(),
             open(rows_mod.result_file(out, "flagged_studies.csv")).read(),
             " ".join(os.listdir(rows_mod.result_file(out, "heatmaps"))), printed.out, printed.err]
    assert os.listdir(rows_mod.result_file(out, "heatmaps"))
    for text in texts:
        for ident in IDENTIFIERS:
            assert ident not in text, ident
    # Stable pseudonyms: the same folder gets the same pseudonym; extensions are kept.
    members = sorted(r["member_path"] for r in rows if r["member_path"])
    assert len(members) == 2 and members[0].split("/")[:2] == members[1].split("/")[:2]
    assert all(m.endswith(".png") and m.startswith(pseudonym.PREFIX) for m in members)
    # The key's holder can find the real file again.
    key_file = os.environ["BRAIN_SCREENING_PSEUDONYM_KEY"]
    zip_row = next(r for r in rows if r["member_path"])
    leaf = zip_row["source_uri"].rsplit("/", 1)[1]
    assert pseudonym.main(["--key-file", key_file, "--find", leaf, str(inputs)]) == 0
    assert capsys.readouterr().out.strip().endswith("SMITH_JOHN.zip")


def test_keep_paths_opts_in(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    inputs = _tree(tmp_path / "in")
    out = tmp_path / "out"
    run.run(["--input", str(inputs), "--output", str(out), "--model", model_dir, "--keep-paths"])
    rows = rows_mod.images(out)
    assert any("MRN123456" in r["source_uri"] for r in rows)


def test_pseudonyms_are_keyed():
    a, b = pseudonym.Pseudonymiser("11" * 32), pseudonym.Pseudonymiser("22" * 32)
    assert a.uri("/x/MRN1/scan.tar.gz") == a.uri("/x/MRN1/scan.tar.gz")
    assert a.uri("/x/MRN1/scan.tar.gz").endswith(".tar.gz")
    assert a.uri("/x/MRN1/scan.tar.gz") != b.uri("/x/MRN1/scan.tar.gz")
    assert a.uri("gs://bucket/MRN1/a.dcm").startswith("gs://bucket/p-")
    assert pseudonym.Pseudonymiser(None).member("MRN1/a.png") == "MRN1/a.png"


def test_the_key_never_travels_in_the_pickled_job_graph(tmp_path):
    """Workers get the key file's path and the key's public id, and read the key themselves: the graph
    (uploaded and kept by Dataflow) holds no key; a worker with another key in that file refuses."""
    import pickle

    from apache_beam.internal import pickler

    from beam_pipeline import errors
    from beam_pipeline.stages.decode import DecodeImages
    key_file = tmp_path / "key"
    key = pseudonym.load_or_create_key(str(key_file))
    ref = pseudonym.KeyRef(str(key_file), key)
    transform = DecodeImages("r", {"height": 32, "width": 32, "channels": 1, "dtype": "float32",
                                   "preprocessing": "gray-headcrop-pnorm-v1"}, {}, ref, accession_key=ref)
    graph = pickler.dumps(transform)
    assert key.encode() not in graph and key.encode() not in pickle.dumps(ref)
    fn = pickler.loads(graph)._fn
    fn.setup()
    assert fn._ps.component("SMITH_JOHN") == pseudonym.Pseudonymiser(key).component("SMITH_JOHN")
    key_file.write_text("cd" * 32 + "\n")
    other = pickler.loads(graph)._fn
    with pytest.raises(errors.ScreeningError, match="holds another key"):
        other.setup()


def _racer(args):
    start, output, key_file = args
    start.wait()
    return pseudonym.key_id(pseudonym.load_key_for(output, key_file))


def test_runs_starting_at_once_agree_on_one_key_and_never_read_a_cut_marker(tmp_path):
    """CI once saw a second run read `_PSEUDONYM_KEY_ID` while the first was still writing it (an empty id)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    racers = 12
    for attempt in range(40):
        output, key_file = str(tmp_path / f"out{attempt}"), str(tmp_path / f"keys{attempt}" / "key")
        os.makedirs(output)
        if attempt % 2:  # the key exists already: only the output's key-id marker is raced for
            pseudonym.load_or_create_key(key_file)
        start = threading.Barrier(racers)

        with ThreadPoolExecutor(racers) as pool:
            ids = set(pool.map(_racer, [(start, output, key_file)] * racers))
        assert len(ids) == 1, f"attempt {attempt}: {ids}"
        with open(os.path.join(output, pseudonym.KEY_ID_FILE)) as f:
            assert f.read() == next(iter(ids))
        assert pseudonym.key_id(pseudonym.read_key(key_file)) in ids
        assert os.listdir(os.path.dirname(key_file)) == ["key"]  # no temporary files left
        assert os.listdir(output) == [pseudonym.KEY_ID_FILE]

def test_a_key_file_is_created_once_and_never_overwritten(tmp_path):
    from beam_pipeline import whole_file
    path = str(tmp_path / "k")
    assert whole_file.create_new(path, b"first\n")
    assert not whole_file.create_new(path, b"second\n")
    assert open(path).read() == "first\n" and os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["k"]


def test_confirm_key_refuses_a_result_published_meanwhile_with_another_key(tmp_path):
    """The output's key-id marker at finalisation: rewritten to this run's key while no result exists
    (the other run stopped at its own key check), a refusal once a result holds another key's rows."""
    output, key_file = str(tmp_path / "out"), str(tmp_path / "key")
    os.makedirs(output)
    ref = pseudonym.KeyRef(key_file, pseudonym.load_or_create_key(key_file))
    marker = os.path.join(output, pseudonym.KEY_ID_FILE)
    with open(marker, "w") as f:
        f.write("0123456789abcdef")  # another run's key, written at its start
    pseudonym.confirm_key(output, ref, result_exists=False)
    assert open(marker).read() == ref.key_id
    with open(marker, "w") as f:
        f.write("0123456789abcdef")
    with pytest.raises(pseudonym.KeyChanged, match="meanwhile published with another pseudonym key"):
        pseudonym.confirm_key(output, ref, result_exists=True)
    os.remove(key_file)
    with pytest.raises(pseudonym.KeyChanged, match="no longer holds the key this run used"):
        pseudonym.confirm_key(output, ref, result_exists=True)

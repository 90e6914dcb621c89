"""Every kind of bad input gets exactly one row with a specific error code,
and nothing else in the run is lost."""
import collections
import os

import pytest

from beam_pipeline import archives, error_codes, run
from beam_pipeline.stages.decode import _DecodeChunk
from tests import bad_inputs, tiny_model
from tests import rows as rows_mod

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    inputs, expected, latin, tgz = bad_inputs.build(root)
    model_dir = tiny_model.write_tiny_artifact(root)
    out = str(root / "out")
    run.run(["--input", os.path.join(inputs, "*"), "--keep-paths", "--output", out, "--model", model_dir, "--chunk-size", "5"])
    rows = rows_mod.images(out)
    return rows, expected, latin, tgz


def test_each_bad_member_has_its_code(scored):
    rows, expected, _, _ = scored
    got = {(r["source_uri"], r["member_path"], r["frame_index"]): (r["status"], r["error_code"]) for r in rows}
    for key, want in expected.items():
        assert got.get(key) == want, key
    for r in rows:
        if r["status"] != "ok":
            assert r["error_code"] in error_codes.CODES
            assert error_codes.status_of(r["error_code"]) == r["status"]
            assert r["error_message"]


def test_truncated_tar_gz_keeps_members_before_the_cut(scored):
    rows, _, _, tgz = scored
    from_tgz = [r for r in rows if r["source_uri"] == tgz]
    assert [r["error_code"] for r in from_tgz if r["status"] == "error"] == ["archive_truncated"]
    assert sum(r["status"] == "ok" for r in from_tgz) >= 1


def test_odd_member_names_are_recorded_safely(scored):
    rows, _, latin, _ = scored
    names = collections.Counter(r["member_path"] for r in rows if r["source_uri"] == latin)
    assert names["dup.png"] == 2  # duplicates are two members, two rows
    (odd,) = [n for n in names if n.startswith("caf")]
    odd.encode("utf-8")  # valid UTF-8 in Parquet
    assert "\\x" in odd or "é" in odd
    assert not os.path.exists("../escape.png") and not os.path.exists("/absolute/path.png")


def test_unreadable_input_gets_a_row():
    fn = _DecodeChunk("r", {"height": 32, "width": 32, "channels": 1, "dtype": "float32",
                            "preprocessing": "gray-headcrop-pnorm-v1"}, {})
    chunk = archives.list_chunks("/nonexistent/dir/scan.png", 10)[0]
    (out,) = list(fn.process(chunk))
    assert out.value["error_code"] == "input_unreadable" and out.value["status"] == "error"


def test_job_level_problems(tmp_path):
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    img = tmp_path / "x.png"
    img.write_bytes(bad_inputs._img("L"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(run.JobError, match="not writable"):
        run.run(["--input", str(img), "--keep-paths", "--output", str(blocker / "out"), "--model", model_dir])
    with open(os.path.join(model_dir, "model.keras"), "ab") as f:
        f.write(b"tampered")
    with pytest.raises(run.JobError, match="sha256"):
        run.run(["--input", str(img), "--keep-paths", "--output", str(tmp_path / "o"), "--model", model_dir])


def test_every_error_code_is_documented():
    """Both tables name every code: the schema's (what a reader meets) and reliability's (with its status and
    the test that produces it); five codes added after the second table was written were missing there."""
    import re
    doc = open(os.path.join(DOCS, "output_schema.md")).read()
    for code in error_codes.CODES:
        assert f"`{code}`" in doc, code
    reliability = open(os.path.join(DOCS, "reliability.md")).read()
    rows = dict(re.findall(r"^\| `([a-z_0-9]+)` \| (\w+) \|", reliability, re.M))
    assert rows == {code: status for code, (status, _) in error_codes.CODES.items()}


def test_concatenated_tars_keep_every_member_and_an_empty_archive_gets_a_row(tmp_path):
    """`cat a.tar b.tar` holds an end-of-archive block in the middle: GNU `tar -i` reads on, and so do
    we; an all-zero .tar and a zip with no entry each get one row instead of none."""
    import io
    import tarfile
    import zipfile

    from tests import synth

    def tar_of(names):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for n in names:
                data = synth.encode(synth.brain_slice(len(n), 32))
                info = tarfile.TarInfo(n)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cat.tar").write_bytes(tar_of(["a1.png", "a2.png"]) + tar_of(["b1.png", "b2.png"]))
    (tmp_path / "in" / "zeros.tar").write_bytes(b"\0" * 10240)
    with zipfile.ZipFile(tmp_path / "in" / "none.zip", "w"):
        pass
    refs = [r.path for c in archives.list_chunks(str(tmp_path / "in" / "cat.tar"), 0) for r in c.refs]
    assert refs == ["a1.png", "a2.png", "b1.png", "b2.png"]
    out = tmp_path / "out"
    run.main(["--input", str(tmp_path / "in"), "--keep-paths", "--output", str(out),
              "--model", tiny_model.write_tiny_artifact(tmp_path)])
    rows = rows_mod.images(out)
    by_source = collections.Counter(os.path.basename(r["source_uri"]) for r in rows)
    assert by_source == {"cat.tar": 4, "zeros.tar": 1, "none.zip": 1}
    assert sorted(r["error_code"] for r in rows if r["status"] != "ok") == ["archive_empty", "archive_empty"]


def test_an_error_message_is_one_line_of_bounded_length():
    from beam_pipeline.stages.decode import one_sentence
    assert one_sentence("ValueError: bad\nTraceback (most recent call last):\n  File ...") == "ValueError: bad"
    assert len(one_sentence("x" * 5000)) == 300 and one_sentence("") == ""


def test_an_image_with_no_head_is_not_judged(tmp_path):
    """A blank slice, or one with a few hundred pixels above the vertex (a brats-sample 'tumor' slice has
    0.4 % non-zero pixels), prepares to an all-zero input: scored it would be a confident 0.000, a miss
    nobody sees. It gets a skipped row instead."""
    import numpy as np

    from tests import synth
    blank, speck = np.zeros((240, 240), np.uint8), np.zeros((240, 240), np.uint8)
    speck[100:115, 100:115] = 180
    for name, arr in (("blank.png", blank), ("speck.png", speck), ("head.png", synth.brain_slice(1, 64))):
        (tmp_path / name).write_bytes(synth.encode(arr))
    out = tmp_path / "out"
    run.main(["--input", str(tmp_path / "*.png"), "--keep-paths", "--output", str(out),
              "--model", tiny_model.write_tiny_artifact(tmp_path)])
    rows = {os.path.basename(r["source_uri"]): r for r in rows_mod.images(out)}
    assert (rows["blank.png"]["status"], rows["blank.png"]["error_code"]) == ("skipped", "blank_image")
    assert rows["speck.png"]["error_code"] == "blank_image" and rows["speck.png"]["tumor_probability"] is None
    assert rows["head.png"]["status"] == "ok"

"""Conservation over a few thousand mixed members: rows out == members in, per source."""
import collections
import tarfile
import zipfile

from beam_pipeline import run
from beam_pipeline.sample_data import tar_add
from tests import rows as rows_mod
from tests import synth, tiny_model

GOOD = [synth.encode(synth.brain_slice(i, 32, lesion=i % 2 == 0)) for i in range(16)]
BAD = [b"", b"plain text", b"\x89PNG\r\n\x1a\n garbage", b"\xff\xd8\xff\xe0 cut"]


def _member(i):
    return BAD[i % len(BAD)] if i % 7 == 0 else GOOD[i % len(GOOD)]


def test_rows_equal_members_per_source(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    members_in = {}
    for a in range(3):
        path = str(inputs / f"z{a}.zip")
        with zipfile.ZipFile(path, "w") as zf:
            for i in range(800):
                zf.writestr(f"s{a}/m{i:05d}.png", _member(i + a))
        members_in[path] = 800
    path = str(inputs / "t.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for i in range(700):
            tar_add(tar, f"t/m{i:05d}.png", _member(i))
    members_in[path] = 700
    model_dir = tiny_model.write_tiny_artifact(tmp_path)
    out = str(tmp_path / "out")
    run.run(["--input", str(inputs / "*"), "--keep-paths", "--output", out, "--model", model_dir, "--batch-size", "128"])
    rows = rows_mod.images(out, columns=["source_uri", "member_path", "frame_index", "status"])
    keys = [(r["source_uri"], r["member_path"], r["frame_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == sum(members_in.values()) == 3100
    assert dict(collections.Counter(r["source_uri"] for r in rows)) == members_in
    statuses = collections.Counter(r["status"] for r in rows)
    assert statuses["ok"] > 2500 and statuses["error"] > 0 and statuses["skipped"] > 0

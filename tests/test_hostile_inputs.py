"""Hostile inputs: nothing crashes, hangs, blows memory, or disappears.

One real pipeline run over tests/hostile_inputs.py (every member or frame gets
exactly its expected row), a fuzz test of the list and decode steps, and the
worst single members decoded under a memory cap in a subprocess.
"""
import collections
import io
import os
import random
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest

from beam_pipeline import archives, error_codes, run, sample_data
from beam_pipeline.stages.decode import _DecodeChunk
from tests import hostile_inputs, synth, tiny_model
from tests import rows as rows_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    inputs, expected = hostile_inputs.build(root)
    model_dir = tiny_model.write_tiny_artifact(root)
    out = str(root / "out")
    # The zip is matched twice (two globs): it must still be scored once.
    run.run(["--input", os.path.join(inputs, "*"), "--input", os.path.join(inputs, "hostile.zip"),
             "--keep-paths", "--output", out, "--model", model_dir, "--chunk-size", "4"])
    rows = rows_mod.images(out)
    return rows, expected


def test_every_hostile_member_gets_exactly_its_rows(hostile_run):
    rows, expected = hostile_run
    got = collections.defaultdict(list)
    for r in rows:
        got[(r["source_uri"], r["member_path"])].append((r["frame_index"], r["status"], r["error_code"]))
    for (uri, member), want in expected.items():
        key = (uri, archives.safe_name(member))
        assert sorted(got.get(key, []), key=str) == sorted(want, key=str), (uri, member, got.get(key))
    assert len(rows) == sum(len(v) for v in expected.values())  # nothing extra, nothing twice
    for r in rows:
        if r["status"] != "ok":
            assert error_codes.status_of(r["error_code"]) == r["status"] and r["error_message"]


def test_control_characters_are_escaped(hostile_run):
    rows, _ = hostile_run
    (odd,) = [r["member_path"] for r in rows if r["member_path"].startswith("bell")]
    assert not any(c in odd for c in "\x07\x1b\u202e\n")
    assert "\\x07" in odd and "\\u202e" in odd


def _valid_members():
    import pydicom.data
    return {
        "a.png": synth.encode(synth.brain_slice(1, 48)),
        "b.jpg": synth.encode(synth.brain_slice(2, 48), "JPEG"),
        "c.dcm": open(pydicom.data.get_testdata_file("MR_small.dcm"), "rb").read(),
        "d.dcm": sample_data.dicom_bytes(synth.brain_slice(3, 32), 0, "1.2", "1.2.3", 1),
        "e.tif": hostile_inputs._multipage_tiff(2),
    }


def _mutations(data, rng, n):
    for _ in range(n):
        b = bytearray(data)
        kind = rng.random()
        if kind < 0.4:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif kind < 0.7:
            b = b[:rng.randrange(1, len(b))]
        else:
            i = rng.randrange(len(b))
            b[i:i + rng.randint(1, 64)] = os.urandom(rng.randint(0, 64))
        yield bytes(b)


def _spec():
    return {"height": 32, "width": 32, "channels": 1, "dtype": "float32",
            "preprocessing": "gray-headcrop-pnorm-v1"}


def _outputs(fn, chunk):
    """(rows, images) the decode DoFn gives for one chunk; any exception fails the test."""
    n_rows = n_images = 0
    for out in fn.process(chunk):
        if hasattr(out, "tag"):
            n_rows += 1
        else:
            n_images += len(out[0])
    return n_rows, n_images


def test_fuzzed_members_and_archives_never_raise(tmp_path):
    """Byte flips and cuts of valid PNG/JPEG/DICOM/TIFF members and of zip/tar(.gz) archives."""
    rng = random.Random(1234)
    fn = _DecodeChunk("fuzz", _spec(), {})
    members = _valid_members()
    fuzzed = 0
    for name, data in members.items():
        for i, bad in enumerate(_mutations(data, rng, 60)):
            p = tmp_path / f"m{i}_{name}"
            p.write_bytes(bad)
            (chunk,) = archives.list_chunks(str(p), len(bad))
            n_rows, n_images = _outputs(fn, chunk)
            assert n_rows + n_images >= 1  # one row per member (several frames may give several)
            fuzzed += 1
    zbuf, tbuf = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with tarfile.open(fileobj=tbuf, mode="w:gz") as tar:
        for name, data in members.items():
            sample_data.tar_add(tar, name, data)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        for name, data in members.items():
            sample_data.tar_add(tar, name, data)
    for suffix, data in ((".zip", zbuf.getvalue()), (".tar.gz", tbuf.getvalue()), (".tar", plain.getvalue())):
        for i, bad in enumerate(_mutations(data, rng, 40)):
            p = tmp_path / f"a{i}{suffix}"
            p.write_bytes(bad)
            refs = 0
            n = 0
            for chunk in archives.list_chunks(str(p), len(bad)):
                refs += len(chunk.refs)
                r, im = _outputs(fn, chunk)
                n += r + im
            assert n >= refs >= 1
            fuzzed += 1
    assert fuzzed == 5 * 60 + 3 * 40


_MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {root!r})
    from tests import hostile_inputs
    from beam_pipeline import decoding
    from screening_core import preprocessing
    data = hostile_inputs.ZIP_MEMBERS[sys.argv[1]][0]()
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    try:
        d = decoding.decode(data, sys.argv[1])
        xs = [preprocessing.prepare(f.gray) for f in d.frames]
        print("ok" if xs[0].any() else "blank_image")  # the decode stage's rule for frame 0
    except decoding.DecodeError as e:
        print(e.code)
""")

# Address space for one member's decode, interpreter and numpy/pydicom/Pillow included.
MEMORY_CAP = 1536 << 20


@pytest.mark.parametrize("member", ["strip_1x20000.png", "strip_20000x1.png", "huge_deflated.dcm",
                                    "many_frames.dcm", "zeros.dcm", "window_width_zero.dcm"])
def test_worst_members_decode_under_a_memory_cap(member):
    code = _MEMORY_PROBE.format(root=ROOT, cap=MEMORY_CAP)
    out = subprocess.run([sys.executable, "-c", code, member], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    (_, rows) = hostile_inputs.ZIP_MEMBERS[member]
    assert out.stdout.strip() == (rows[0][2] or "ok")


_BOMB_PROBE = textwrap.dedent("""
    import os, resource, sys, tarfile, tempfile
    sys.path.insert(0, {root!r})
    from beam_pipeline import archives, sample_data
    path = os.path.join(tempfile.mkdtemp(), "zeros.tar.bz2")
    with tarfile.open(path, "w:bz2") as tar:  # ~200 bytes on disk
        sample_data.tar_add(tar, "zeros.dcm", bytes(210 << 20))
        sample_data.tar_add(tar, "after.png", b"png")
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    refs = [r for c in archives.list_chunks(path, os.path.getsize(path)) for r in c.refs]
    print([(r.path, r.error_code) for r in refs])
""")


def test_a_tiny_tar_bz2_bomb_is_listed_quickly_in_bounded_memory():
    """A few hundred bytes of tar.bz2 that inflate to 210 MiB: coded, and listed in about a second.
    tarfile's own "r|bz2" stream inflated it in one piece and copied the rest on every 10 KiB read:
    minutes of CPU per file (a night's worker lost to one e-mail attachment)."""
    code = _BOMB_PROBE.format(root=ROOT, cap=MEMORY_CAP)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str([("zeros.dcm", "suspicious_compression_ratio"),
                                      ("after.png", "suspicious_compression_ratio")])

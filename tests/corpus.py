"""A generated mixed input set: archives of every kind, loose files, DICOM.

`build(root)` writes the files and returns the expected (source, member,
frame) -> (status, error_code) table, so tests can check one row per member.
"""
import io
import os
import shutil
import tarfile
import zipfile

from pydicom.data import get_testdata_file

from beam_pipeline.sample_data import tar_add
from tests import synth


def _dicom(name):
    with open(get_testdata_file(name, download=False), "rb") as f:
        return f.read()



def build(root):
    root = str(root)
    inputs = os.path.join(root, "inputs")
    os.makedirs(inputs, exist_ok=True)
    expected = {}

    def ok(src, member, frames=1):
        for i in range(frames):
            expected[(src, member, i)] = ("ok", None)

    def bad(src, member, status, code):
        expected[(src, member, 0)] = (status, code)

    z = os.path.join(inputs, "study_a.zip")
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):
            zf.writestr(f"series1/img{i}.png", synth.encode(synth.brain_slice(i, 64, lesion=i % 2 == 0)))
            ok(z, f"series1/img{i}.png")
        zf.writestr("series2/mr.dcm", _dicom("MR_small.dcm"))
        ok(z, "series2/mr.dcm")
        zf.writestr("series2/rgb_2frame.dcm", _dicom("SC_rgb_rle_2frame.dcm"))
        ok(z, "series2/rgb_2frame.dcm", frames=2)
        zf.writestr("README.txt", b"scanned 2026-11-01")
        bad(z, "README.txt", "skipped", "not_an_image")
        zf.writestr("broken.jpg", synth.encode(synth.brain_slice(9, 64), "JPEG")[:300])
        bad(z, "broken.jpg", "error", "undecodable_image")
        zf.writestr("__MACOSX/series1/._img0.png", b"\x00\x05\x16\x07 resource fork")
        bad(z, "__MACOSX/series1/._img0.png", "skipped", "resource_fork")
        zf.writestr("inner.zip", _zip_bytes({"x.png": synth.encode(synth.brain_slice(1, 32))}))
        bad(z, "inner.zip", "skipped", "nested_archive")
        zf.writestr("empty.png", b"")
        bad(z, "empty.png", "error", "empty_file")
        zf.writestr("DICOMDIR", _dicom("rtplan.dcm"))
        bad(z, "DICOMDIR", "skipped", "dicom_no_pixel_data")

    t = os.path.join(inputs, "study_b.tar.gz")
    with tarfile.open(t, "w:gz") as tar:
        for i in range(4):
            tar_add(tar, f"b/{i}.jpg", synth.encode(synth.brain_slice(20 + i, 80), "JPEG"))
            ok(t, f"b/{i}.jpg")
        tar_add(tar, "b/ct.dcm", _dicom("CT_small.dcm"))
        ok(t, "b/ct.dcm")
        tar_add(tar, "b/truncated.dcm", _dicom("MR_truncated.dcm"))
        bad(t, "b/truncated.dcm", "error", "dicom_corrupt")

    p = os.path.join(inputs, "study_c.tar")
    with tarfile.open(p, "w") as tar:
        tar_add(tar, "c/a.bmp", synth.encode(synth.brain_slice(30, 64), "BMP"))
        ok(p, "c/a.bmp")
        tar_add(tar, "c/b.tif", synth.encode(synth.brain_slice(31, 64), "TIFF"))
        ok(p, "c/b.tif")
        tar_add(tar, "c/png_named.dcm", synth.encode(synth.brain_slice(32, 64)))
        ok(p, "c/png_named.dcm")

    loose = os.path.join(inputs, "loose.png")
    with open(loose, "wb") as f:
        f.write(synth.encode(synth.brain_slice(40, 96, lesion=True)))
    ok(loose, "")
    noext = os.path.join(inputs, "IM000123")
    shutil.copy(get_testdata_file("MR_small.dcm", download=False), noext)
    ok(noext, "")
    return inputs, expected


def _zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()

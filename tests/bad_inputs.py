"""Generated bad inputs, one per kind, each with the row it must produce.

Built byte by byte where a library refuses to write the bad thing (an
encrypted-flag zip member, a decompression-bomb PNG header).
"""
import io
import os
import struct
import tarfile
import zipfile
import zlib

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file

from beam_pipeline.sample_data import tar_add
from tests import synth


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side=30000):
    """A valid PNG header declaring side x side pixels; a few KB on disk."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 4, 9)  # four rows of data, the rest missing
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _img(mode, size=64, **kw):
    arr = synth.brain_slice(7, size)
    if mode == "I;16":
        im = Image.fromarray(arr.astype(np.uint16) * 200)
    else:
        im = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=kw.pop("fmt", "PNG"), **kw)
    return buf.getvalue()


def _dicom(name):
    with open(get_testdata_file(name, download=False), "rb") as f:
        return f.read()


def mpeg2_dicom():
    """A DICOM whose pixel data claims MPEG-2 video: a transfer syntax no installed decoder handles."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    from beam_pipeline import sample_data
    ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(synth.brain_slice(5, 32), 0, "1.2", "1.2.3", 1)))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _set_encrypted_flag(zip_bytes, member_name):
    """Set general-purpose bit 0 (encrypted) on one member's local and central headers."""
    data = bytearray(zip_bytes)
    name = member_name.encode()
    for sig, flag_off, name_len_off, name_off in ((b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46)):
        pos = data.find(sig)
        while pos != -1:
            n = struct.unpack("<H", data[pos + name_len_off:pos + name_len_off + 2])[0]
            if bytes(data[pos + name_off:pos + name_off + n]) == name:
                data[pos + flag_off] |= 0x1
            pos = data.find(sig, pos + 4)
    return bytes(data)


# member name -> (status, error_code) inside the main bad zip
ZIP_MEMBERS = {
    "corrupt.jpg": (b"\xff\xd8\xff\xe0" + os.urandom(500), "error", "undecodable_image"),
    "truncated.png": (_img("L")[:200], "error", "undecodable_image"),
    "truncated.jpg": (_img("L", fmt="JPEG")[:300], "error", "undecodable_image"),
    "zero.png": (b"", "error", "empty_file"),
    "png_named.dcm": (_img("L"), "ok", None),
    "dicom_named.jpg": (_dicom("MR_small.dcm"), "ok", None),
    "notes.txt": (b"ward 7 export, 2026-11-01\n", "skipped", "not_an_image"),
    "DICOMDIR": (_dicom("rtplan.dcm"), "skipped", "dicom_no_pixel_data"),
    "__MACOSX/._scan.png": (b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X", "skipped", "resource_fork"),
    "sixteen_bit.png": (_img("I;16"), "ok", None),
    "rgba.png": (_img("RGBA"), "ok", None),
    "palette.png": (_img("P"), "ok", None),
    "cmyk.jpg": (_img("CMYK", fmt="JPEG"), "ok", None),
    "one_pixel.png": (_img("L", size=1), "skipped", "blank_image"),  # nothing to judge: not a confident 0
    "bomb.png": (bomb_png(), "error", "image_too_large"),
    "nested.zip": (b"PK\x03\x04" + b"\x00" * 60, "skipped", "nested_archive"),
    "nested.tar.gz": (b"\x1f\x8b\x08\x00" + b"\x00" * 60, "skipped", "nested_archive"),
    "../escape.png": (_img("L"), "ok", None),
    "/absolute/path.png": (_img("L"), "ok", None),
    "no_pixels.dcm": (_dicom("rtstruct.dcm"), "skipped", "dicom_no_pixel_data"),
    "truncated.dcm": (_dicom("MR_truncated.dcm"), "error", "dicom_corrupt"),
    "lossy_bad_stream.dcm": (_dicom("JPEG-lossy.dcm"), "error", "dicom_unsupported_transfer_syntax"),
    "mpeg2.dcm": (mpeg2_dicom(), "error", "dicom_unsupported_transfer_syntax"),
    "secret.png": (_img("L"), "error", "encrypted_member"),
    "zip_bomb.dcm": (b"\x00" * (64 << 20), "error", "suspicious_compression_ratio"),
}


def build(root):
    """Write the bad-input set under root/bad; returns (inputs_dir, expected rows)."""
    inputs = os.path.join(str(root), "bad")
    os.makedirs(inputs, exist_ok=True)
    expected = {}
    z = os.path.join(inputs, "mixed_bad.zip")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (data, status, code) in ZIP_MEMBERS.items():
            zf.writestr(name, data)
            expected[(z, name, 0)] = (status, code)
    open(z, "wb").write(_set_encrypted_flag(buf.getvalue(), "secret.png"))

    corrupt = os.path.join(inputs, "corrupt.zip")
    open(corrupt, "wb").write(b"PK\x03\x04 this is not really a zip file" + os.urandom(200))
    expected[(corrupt, "", 0)] = ("error", "archive_corrupt")

    tgz = os.path.join(inputs, "truncated.tar.gz")
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w:gz") as tar:
        for i in range(6):
            tar_add(tar, f"t/{i}.png", synth.encode(synth.brain_slice(50 + i, 64), "PNG") + os.urandom(20000))
    raw = tbuf.getvalue()
    open(tgz, "wb").write(raw[: len(raw) // 2])  # cut in the middle of the gzip stream
    expected[(tgz, "", 0)] = ("error", "archive_truncated")

    latin = os.path.join(inputs, "names.tar")
    with tarfile.open(latin, "w", encoding="latin-1") as tar:
        for name in ("caf\xe9/scan.png", "dup.png", "dup.png"):
            tar_add(tar, name, synth.encode(synth.brain_slice(len(name), 64)))
    return inputs, expected, latin, tgz

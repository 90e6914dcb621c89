"""Crafted hostile inputs (issue "Hostile inputs"): each with the rows it must give.

Kept apart from bad_inputs.py (the everyday bad-input corpus): these are
built to crash, hang, exhaust memory or fool the job, byte by byte where a
library refuses to write them.
"""
import gzip
import io
import os
import struct
import tarfile
import zipfile

import numpy as np
from PIL import Image

from beam_pipeline import sample_data
from beam_pipeline.sample_data import tar_add
from tests import synth


def _dicom(mutate=None, arr=None, **kw):
    """A small valid MR DICOM, changed by `mutate(ds)` before saving."""
    import pydicom
    arr = synth.brain_slice(3, 32) if arr is None else arr
    ds = pydicom.dcmread(io.BytesIO(sample_data.dicom_bytes(arr, 0, "1.2.3", "1.2.3.4", 1, **kw)))
    if mutate:
        mutate(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _testdata(name):
    from pydicom.data import get_testdata_file
    return get_testdata_file(name, download=False)


def _set(**attrs):
    def mutate(ds):
        for k, v in attrs.items():
            setattr(ds, k, v)
    return mutate


def _raw_value(keyword, value_bytes):
    """Overwrite an element with raw bytes (pydicom refuses to write an invalid DS/IS itself)."""
    def mutate(ds):
        from pydicom.datadict import tag_for_keyword
        from pydicom.dataelem import RawDataElement
        tag = tag_for_keyword(keyword)
        ds[tag] = RawDataElement(tag, "DS", len(value_bytes), value_bytes, 0, False, True)
    return mutate


def _modality_lut_without_descriptor(ds):
    from pydicom.dataset import Dataset
    item = Dataset()
    item.ModalityLUTType = "HU"
    item.add_new(0x00283006, "US", [0, 1, 2, 3])  # LUTData
    ds.ModalityLUTSequence = [item]
    del ds.RescaleSlope
    del ds.RescaleIntercept


def _short_voi_lut(ds):
    from pydicom.dataset import Dataset
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUTDescriptor
    item.add_new(0x00283006, "US", [0, 1, 2])  # LUTData, far shorter than described
    ds.VOILUTSequence = [item]


def _palette_with_window(ds):
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) // 16).astype(np.uint8).tobytes()
    ds.add_new(0x00281101, "US", [256, 0, 8])  # Red descriptor only: green/blue and the data are missing


def _huge_deflated_dicom():
    """12000 x 12000 of zeros, deflated: tiny on disk, 144 Mpx declared."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    def mutate(ds):
        ds.Rows = ds.Columns = 12000
        ds.PixelData = b"\x00" * (12000 * 12000 * 2)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return _dicom(mutate)


# member name -> (bytes factory, rows it must give: [(frame_index, status, code)]); built on use
ZIP_MEMBERS = {
    "window_width_zero.dcm": (lambda: _dicom(_set(WindowWidth=0)), [(0, "ok", None)]),
    "window_width_negative.dcm": (lambda: _dicom(_set(WindowWidth=-5)), [(0, "ok", None)]),
    "window_center_text.dcm": (lambda: _dicom(_raw_value("WindowCenter", b"abc ")), [(0, "ok", None)]),
    "rescale_slope_text.dcm": (lambda: _dicom(_raw_value("RescaleSlope", b"x1")), [(0, "error", "dicom_invalid_lut")]),
    "modality_lut_no_descriptor.dcm": (lambda: _dicom(_modality_lut_without_descriptor),
                                       [(0, "error", "dicom_invalid_lut")]),
    "short_voi_lut.dcm": (lambda: _dicom(_short_voi_lut), [(0, "ok", None)]),
    "unknown_voi_function.dcm": (lambda: _dicom(_set(VOILUTFunction="WEIRD")), [(0, "ok", None)]),
    "palette_with_window.dcm": (lambda: _dicom(_palette_with_window), [(0, "error", "dicom_invalid_lut")]),
    "strip_1x20000.png": (lambda: synth.encode(np.full((1, 20000), 200, np.uint8)), [(0, "skipped", "blank_image")]),  # flat: no head to judge
    "strip_20000x1.png": (lambda: synth.encode(np.full((20000, 1), 200, np.uint8)),
                          [(0, "skipped", "blank_image")]),  # flat: no head to judge
    "huge_deflated.dcm": (lambda: _huge_deflated_dicom(), [(0, "error", "suspicious_compression_ratio")]),
    "real_deflated.dcm": (lambda: open(_testdata("image_dfl.dcm"), "rb").read(), [(0, "ok", None)]),
    "zeros.dcm": (lambda: b"\x00" * (2 << 20), [(0, "skipped", "not_an_image")]),
}


def _many_frames():
    def mutate(ds):
        ds.Rows = ds.Columns = 16
        ds.NumberOfFrames = 20000
        ds.PixelData = b"\x01\x00" * (16 * 16 * 20000)
    return _dicom(mutate)


def _multipage_tiff(pages=3):
    frames = [Image.fromarray(synth.brain_slice(40 + i, 48)) for i in range(pages)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


ZIP_MEMBERS["many_frames.dcm"] = (_many_frames, [(0, "error", "too_many_frames")])
ZIP_MEMBERS["three_pages.tif"] = (_multipage_tiff, [(i, "ok", None) for i in range(3)])
ZIP_MEMBERS["bell\x07\x1b[31m\u202egnp.png"] = (lambda: synth.encode(synth.brain_slice(9, 32)),
                                                  [(0, "ok", None)])


def _nifti(volume, affine=None):
    """Single-file NIfTI-1 bytes of `volume` (x, y, z[, t]), RAS voxel axes unless `affine` says otherwise."""
    import nibabel as nib
    return nib.Nifti1Image(volume, np.diag([1.0, 1.0, 3.0, 1.0]) if affine is None else affine).to_bytes()


def _brain_volume(slices=3, size=48, volumes=0):
    v = np.stack([synth.brain_slice(60 + i, size).T[::-1, ::-1] for i in range(slices)], axis=-1).astype(np.int16)
    return np.stack([v] * volumes, axis=-1) if volumes else v


def _nifti_claiming_huge():
    """A header declaring 4000 x 4000 x 1000 voxels, 1 KiB of data behind it."""
    import nibabel as nib
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 1000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\x00" * 4
    return raw + b"\x00" * 1024


ZIP_MEMBERS["volume.nii"] = (lambda: _nifti(_brain_volume()), [(i, "ok", None) for i in range(3)])
ZIP_MEMBERS["volume.nii.gz"] = (lambda: gzip.compress(_nifti(_brain_volume())), [(i, "ok", None) for i in range(3)])
ZIP_MEMBERS["diffusion_4d.nii.gz"] = (lambda: gzip.compress(_nifti(_brain_volume(2, volumes=3))),
                                      [(i, "ok", None) for i in range(2)])  # the first volume's slices
ZIP_MEMBERS["cut.nii"] = (lambda: _nifti(_brain_volume())[:2000], [(0, "error", "undecodable_image")])
ZIP_MEMBERS["claims_huge.nii"] = (_nifti_claiming_huge, [(0, "error", "image_too_large")])
ZIP_MEMBERS["zeros_bomb.nii.gz"] = (lambda: gzip.compress(_nifti(np.zeros((128, 128, 100), np.int16))),
                                    [(0, "error", "suspicious_compression_ratio")])


def _zip_with_odd_entries():
    """Empty member name, data under a name ending in '/', and 100 entries sharing one member."""
    buf = io.BytesIO()
    png = synth.encode(synth.brain_slice(11, 48))
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("first.png", png)
        info = zipfile.ZipInfo("")
        zf.writestr(info, png)
        zf.writestr("data_in_a_dir_name/", png)
    data = bytearray(buf.getvalue())
    # Append 3 more central-directory entries pointing at first.png's local header (offset 0).
    eocd = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", data[eocd + 12:eocd + 20])
    first_cd = data[cd_offset:cd_offset + 46 + len("first.png")]
    extra = b"".join(first_cd[:46 - 0][:28] + struct.pack("<H", len(f"copy{i}.png")) + first_cd[30:46]
                     + f"copy{i}.png".encode() for i in range(3))
    n = struct.unpack("<H", data[eocd + 10:eocd + 12])[0]
    new_cd = data[cd_offset:cd_offset + cd_size] + extra
    tail = data[eocd:]
    tail[8:10] = struct.pack("<H", n + 3)
    tail[10:12] = struct.pack("<H", n + 3)
    tail[12:16] = struct.pack("<I", len(new_cd))
    out = bytes(data[:cd_offset]) + bytes(new_cd) + bytes(tail)
    rows = {"first.png": [(0, "ok", None)], "(unnamed member 1)": [(0, "ok", None)],
            "data_in_a_dir_name/": [(0, "ok", None)]}
    rows.update({f"copy{i}.png": [(0, "error", "overlapping_member")] for i in range(3)})
    return out, rows


def _zip_lying_size():
    """A member whose central directory claims a compressed size far past the archive's end."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("liar.png", synth.encode(synth.brain_slice(12, 48)))
    data = bytearray(buf.getvalue())
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 20:cd + 24] = struct.pack("<I", 50 << 20)
    return bytes(data), {"liar.png": [(0, "error", "member_size_mismatch")]}


def _tar_entry_types(path):
    """Regular file, symlink, hardlink, FIFO, char device, directory and a sparse member."""
    png = synth.encode(synth.brain_slice(13, 48))
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        tar_add(tar, "scans/a.png", png)
        for name, kind, link in (("scans/sym.png", tarfile.SYMTYPE, "a.png"),
                                 ("scans/hard.png", tarfile.LNKTYPE, "scans/a.png"),
                                 ("scans/fifo", tarfile.FIFOTYPE, ""), ("scans/tty", tarfile.CHRTYPE, "")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            tar.addfile(info)
        d = tarfile.TarInfo("scans/sub")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        # A GNU sparse member ('S'; an empty sparse map) with the PNG as its stored data:
        # read as plain bytes, it would score the wrong content.
        info = tarfile.TarInfo("scans/sparse.png")
        info.size = len(png)
        header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
        header[156] = ord("S")
        header[483:495] = f"{len(png):011o}\0".encode()  # realsize
        header[148:156] = b" " * 8
        header[148:155] = f"{sum(header):06o}\0".encode()
        tar.fileobj.write(bytes(header) + png + b"\0" * ((512 - len(png) % 512) % 512))
        tar.offset += len(header) + len(png) + (512 - len(png) % 512) % 512
    return {"scans/a.png": [(0, "ok", None)], "scans/sym.png": [(0, "skipped", "link_member")],
            "scans/hard.png": [(0, "skipped", "link_member")], "scans/fifo": [(0, "skipped", "special_member")],
            "scans/tty": [(0, "skipped", "special_member")], "scans/sparse.png": [(0, "error", "sparse_member")]}


def build(root):
    """Write the hostile inputs under root/hostile; returns (dir, {(uri, member): rows})."""
    d = os.path.join(str(root), "hostile")
    os.makedirs(d, exist_ok=True)
    expected = {}
    z = os.path.join(d, "hostile.zip")
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (make, rows) in ZIP_MEMBERS.items():
            # stored, not deflated: these test the decoders, not the zip-bomb guard
            zf.writestr(name, make(), compress_type=zipfile.ZIP_STORED)
            expected[(z, name)] = rows
    for fname, make in (("odd_entries.zip", _zip_with_odd_entries), ("lying.zip", _zip_lying_size)):
        data, rows = make()
        p = os.path.join(d, fname)
        open(p, "wb").write(data)
        expected.update({(p, k): v for k, v in rows.items()})
    t = os.path.join(d, "entry_types.tar")
    expected.update({(t, k): v for k, v in _tar_entry_types(t).items()})
    for suffix, mode in ((".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")):
        p = os.path.join(d, "compressed" + suffix)
        with tarfile.open(p, mode) as tar:
            tar_add(tar, "x/scan.png", synth.encode(synth.brain_slice(14, 48)))
        expected[(p, "x/scan.png")] = [(0, "ok", None)]
    bomb = os.path.join(d, "zeros.tar.gz")
    with tarfile.open(bomb, "w:gz") as tar:
        tar_add(tar, "zeros.dcm", b"\x00" * (210 << 20))  # > 200 x the 1 MiB floor
    expected[(bomb, "zeros.dcm")] = [(0, "error", "suspicious_compression_ratio")]
    fifo = os.path.join(d, "pipe.png")
    os.mkfifo(fifo)
    expected[(fifo, "")] = [(0, "error", "not_a_regular_file")]
    return d, expected

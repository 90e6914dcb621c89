"""Bytes of one member -> grayscale frames, or a coded reason why not.

The format is sniffed from the content, not the name, so a PNG called .dcm or
a DICOM called .jpg decode correctly. Raster formats go through the trainer's
`preprocessing.decode_raster` (one decoder for training and scoring); DICOM
goes through pydicom with its modality and VOI LUTs.
"""
import dataclasses
import io
import os

import numpy as np

from trainer import preprocessing

_RASTER_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"BM", "bmp"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
)
_ARCHIVE_MAGIC = ((b"PK\x03\x04", "zip"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"),
                  (b"7z\xbc\xaf\x27\x1c", "7z"), (b"Rar!", "rar"))
_DICOM_EXTENSIONS = (".dcm", ".dicom", "")


class DecodeError(Exception):
    def __init__(self, code, message, image_format=None):
        super().__init__(message)
        self.code = code
        self.image_format = image_format


@dataclasses.dataclass
class Frame:
    gray: np.ndarray
    frame_index: int = 0


@dataclasses.dataclass
class Decoded:
    image_format: str
    width: int
    height: int
    frames: list
    dicom: dict = dataclasses.field(default_factory=dict)  # UIDs and modality only


def sniff(data, name=""):
    """'png', 'jpeg', 'bmp', 'tiff', 'dicom', 'dicom?' (worth a forced read), archive kinds, or None."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"  # checked first: a DICOM preamble may itself look like TIFF
    for magic, fmt in _RASTER_MAGIC:
        if data.startswith(magic):
            return fmt
    for magic, fmt in _ARCHIVE_MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) > 262 and data[257:262] == b"ustar":
        return "tar"
    if os.path.splitext(name)[1].lower() in _DICOM_EXTENSIONS:
        return "dicom?"
    return None


def decode(data, name=""):
    """Decoded frames of one image; raises DecodeError with a code from error_codes."""
    if not data:
        raise DecodeError("empty_file", "zero-byte file")
    fmt = sniff(data, name)
    if fmt in ("png", "jpeg", "bmp", "tiff"):
        try:
            gray = preprocessing.decode_raster(data)
        except preprocessing.ImageDecodeError as e:
            raise DecodeError(e.code, str(e), fmt) from e
        return Decoded(fmt, gray.shape[1], gray.shape[0], [Frame(gray)])
    if fmt in ("dicom", "dicom?"):
        return _decode_dicom(data, force=fmt == "dicom?")
    if fmt in ("zip", "gzip", "bzip2", "7z", "rar", "tar"):
        raise DecodeError("nested_archive", f"{fmt} archive inside an archive is not expanded", fmt)
    raise DecodeError("not_an_image", "content is not PNG, JPEG, BMP, TIFF or DICOM", "unknown")


_UID_FIELDS = {"StudyInstanceUID": "study_instance_uid", "SeriesInstanceUID": "series_instance_uid",
               "SOPInstanceUID": "sop_instance_uid", "Modality": "modality"}


def _decode_dicom(data, force):
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
        ds.ensure_file_meta() if hasattr(ds, "ensure_file_meta") else None
        _ = ds.get("PixelData"), ds.get("StudyInstanceUID")  # parse up to pixel data
    except Exception as e:
        if force:
            raise DecodeError("not_an_image", "content is not PNG, JPEG, BMP, TIFF or DICOM", "unknown") from e
        raise DecodeError("dicom_corrupt", f"pydicom cannot parse: {type(e).__name__}: {e}", "dicom") from e
    if force and "SOPClassUID" not in ds and "PixelData" not in ds:
        raise DecodeError("not_an_image", "content is not PNG, JPEG, BMP, TIFF or DICOM", "unknown")
    uids = {col: str(ds.get(tag)) if ds.get(tag) is not None else None for tag, col in _UID_FIELDS.items()}
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DecodeError("dicom_no_pixel_data", "DICOM has no pixel data", "dicom")
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise DecodeError("dicom_unsupported_transfer_syntax",
                          f"no decoder for transfer syntax {name}: {e}", "dicom") from e
    except Exception as e:
        raise DecodeError("dicom_corrupt", f"pixel data unreadable: {type(e).__name__}: {e}", "dicom") from e
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = pixels if n_frames > 1 else pixels[None]
    out = []
    for i, frame in enumerate(frames):
        if samples > 1:
            gray = np.asarray(frame, np.float32).mean(axis=-1)
        else:
            gray = apply_modality_lut(frame, ds)
            if "WindowCenter" in ds or "VOILUTSequence" in ds:
                gray = apply_voi_lut(gray, ds, index=0, prefer_lut=True)
            gray = np.asarray(gray, np.float32)
            if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
                gray = gray.max() - gray
        out.append(Frame(gray, i))
    h, w = out[0].gray.shape[:2]
    return Decoded("dicom", int(w), int(h), out, uids)

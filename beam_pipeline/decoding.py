"""Bytes of one member -> grayscale frames, or a coded reason why not.

The format is sniffed from the content, not the name, so a PNG called .dcm or
a DICOM called .jpg decode correctly. Raster formats go through the trainer's
`preprocessing.decode_raster` (one decoder for training and scoring); DICOM
goes through pydicom with its modality and VOI LUTs.
"""
import dataclasses
import io
import os
import zlib

import numpy as np

from beam_pipeline import errors, nifti
from screening_core import preprocessing

_RASTER_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"BM", "bmp"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
)
_ARCHIVE_MAGIC = ((b"PK\x03\x04", "zip"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"),
                  (b"7z\xbc\xaf\x27\x1c", "7z"), (b"Rar!", "rar"))
_DICOM_EXTENSIONS = (".dcm", ".dicom", "")
# A DICOM without the 128-byte preamble starts with an element of group 0002 or
# 0008 (little-endian); anything else is not worth a forced parse (pydicom
# crawls through a file of zeros at ~0.7 s/MiB).
_BARE_DICOM_STARTS = (b"\x02\x00", b"\x08\x00")

# Resource limits, decided once and checked before any pixel buffer exists.
MAX_FRAME_PIXELS = preprocessing.MAX_IMAGE_PIXELS  # rows x columns x samples of one frame
MAX_FRAMES = 1024                                   # frames (DICOM) or pages (TIFF) per member
MAX_MEMBER_PIXELS = 128 * 1024 * 1024               # all frames of one member together
# A Deflated-transfer-syntax DICOM is inflated whole by pydicom before any
# header can be read, so its inflated size is checked first, like a zip member's.
MAX_INFLATE_RATIO = 200.0
_DEFLATED_UID = b"1.2.840.10008.1.2.1.99"


class DecodeError(errors.ScreeningError):
    def __init__(self, code, message, image_format=None, fields=None):
        super().__init__(message)
        self.code = code
        self.image_format = image_format
        self.fields = fields or {}  # DICOM header fields read before the failure (UIDs, ...)


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
    dicom: dict = dataclasses.field(default_factory=dict)  # header fields of _DICOM_FIELDS only


def sniff(data, name=""):
    """'png', 'jpeg', 'bmp', 'tiff', 'dicom', 'dicom?' (worth a forced read), 'nifti' (.nii or .nii.gz),
    archive kinds, or None."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"  # checked first: a DICOM preamble may itself look like TIFF
    for magic, fmt in _RASTER_MAGIC:
        if data.startswith(magic):
            return fmt
    if nifti.is_nifti(data[:540]) or (data.startswith(b"\x1f\x8b") and nifti.is_nifti(nifti.gzip_head(data))):
        return "nifti"
    for magic, fmt in _ARCHIVE_MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) > 262 and data[257:262] == b"ustar":
        return "tar"
    if os.path.splitext(name)[1].lower() in _DICOM_EXTENSIONS and data[:2] in _BARE_DICOM_STARTS:
        return "dicom?"
    return None


def decode(data, name=""):
    """Decoded frames of one image; raises DecodeError with a code from error_codes.

    No other exception escapes: a decoder bug or an input nobody anticipated
    becomes that member's coded row, never a failed bundle.
    """
    try:
        return _decode(data, name)
    except DecodeError:
        raise
    except MemoryError as e:
        raise DecodeError("image_too_large", "decoding ran out of memory", sniff(data, name)) from e
    except Exception as e:
        fmt = sniff(data, name)
        code = "dicom_corrupt" if fmt in ("dicom", "dicom?") else "undecodable_image"
        raise DecodeError(code, f"unexpected decoder failure: {type(e).__name__}: {e}", fmt) from e


def _decode(data, name):
    if not data:
        raise DecodeError("empty_file", "zero-byte file")
    fmt = sniff(data, name)
    if fmt == "tiff":
        return _decode_tiff(data)
    if fmt in ("png", "jpeg", "bmp"):
        try:
            gray = preprocessing.decode_raster(data)
        except preprocessing.ImageDecodeError as e:
            raise DecodeError(e.code, str(e), fmt) from e
        return Decoded(fmt, gray.shape[1], gray.shape[0], [Frame(gray)])
    if fmt in ("dicom", "dicom?"):
        return _decode_dicom(data, force=fmt == "dicom?")
    if fmt == "nifti":
        return _decode_nifti(data)
    if fmt in ("zip", "gzip", "bzip2", "7z", "rar", "tar"):
        raise DecodeError("nested_archive", f"{fmt} archive inside an archive is not expanded", fmt)
    raise DecodeError("not_an_image", "content is not PNG, JPEG, BMP, TIFF, DICOM or NIfTI", "unknown")


def _decode_nifti(data):
    """Every axial slice of a NIfTI volume is a frame, as for multi-frame DICOM (beam_pipeline.nifti)."""
    try:
        if data.startswith(b"\x1f\x8b"):
            data = nifti.inflate(data, MAX_INFLATE_RATIO)
        frames, area = nifti.slices(data, MAX_FRAME_PIXELS, MAX_FRAMES, MAX_MEMBER_PIXELS)
    except nifti.NiftiError as e:
        raise DecodeError(e.code, str(e), "nifti") from e
    h, w = frames[0].shape
    fields = {"pixel_area_mm2": area} if area else {}  # row fields, as DICOM's PixelSpacing gives them
    fields["plane"] = "axial"  # beam_pipeline.nifti cuts every volume axially, whatever its acquisition plane
    return Decoded("nifti", w, h, [Frame(g, i) for i, g in enumerate(frames)], fields)


def _decode_tiff(data):
    """Every page of a (multi-page) TIFF is a frame, as for multi-frame DICOM."""
    from PIL import Image, ImageSequence
    try:
        im = Image.open(io.BytesIO(data))
        n = getattr(im, "n_frames", 1)
    except Exception as e:
        raise DecodeError("undecodable_image", f"not a readable image: {e}", "tiff") from e
    if n > MAX_FRAMES:
        raise DecodeError("too_many_frames", f"{n} pages > limit {MAX_FRAMES}", "tiff")
    frames, total = [], 0
    with im:
        for i, page in enumerate(ImageSequence.Iterator(im)):
            w, h = page.size
            total += w * h
            if total > MAX_MEMBER_PIXELS:
                raise DecodeError("image_too_large", f"pages hold more than {MAX_MEMBER_PIXELS} pixels", "tiff")
            buf = io.BytesIO()
            try:
                page.save(buf, format="TIFF")
                gray = preprocessing.decode_raster(buf.getvalue())
            except preprocessing.ImageDecodeError as e:
                raise DecodeError(e.code, f"page {i}: {e}", "tiff") from e
            except Exception as e:
                raise DecodeError("undecodable_image", f"page {i}: {e}", "tiff") from e
            frames.append(Frame(gray, i))
    h, w = frames[0].gray.shape
    return Decoded("tiff", w, h, frames)


def _check_dicom_size(ds):
    """Refuse pixel data whose declared size breaks a limit, before pydicom allocates it."""
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as e:
        raise DecodeError("dicom_corrupt", f"unreadable image dimensions: {e}", "dicom") from e
    if min(rows, cols, samples, frames) < 1:
        raise DecodeError("dicom_corrupt", f"image dimensions {rows}x{cols}x{samples}, {frames} frames",
                          "dicom")
    if rows * cols * samples > MAX_FRAME_PIXELS:
        raise DecodeError("image_too_large", f"{cols}x{rows}x{samples} samples per frame exceeds the limit "
                          f"of {MAX_FRAME_PIXELS}", "dicom")
    if frames > MAX_FRAMES:
        raise DecodeError("too_many_frames", f"{frames} frames > limit {MAX_FRAMES}", "dicom")
    if rows * cols * samples * frames > MAX_MEMBER_PIXELS:
        raise DecodeError("image_too_large", f"{frames} frames of {cols}x{rows} exceed the limit of "
                          f"{MAX_MEMBER_PIXELS} pixels per member", "dicom")


def _dicom_gray(frame, ds):
    """One frame as float32 grayscale through the modality LUT and, where valid, the VOI LUT.

    Windowing is for display; `prepare` normalises intensities itself, so an
    invalid window (WindowWidth 0, common in secondary captures) is ignored
    rather than failing the image. An invalid modality LUT changes what the
    values mean and is an error.
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        try:
            return np.asarray(apply_color_lut(frame, ds), np.float32).mean(axis=-1)
        except Exception as e:
            raise DecodeError("dicom_invalid_lut", f"palette colour LUT unusable: {type(e).__name__}: {e}",
                              "dicom") from e
    if frame.ndim == 3:
        return np.asarray(frame, np.float32).mean(axis=-1)
    try:
        gray = np.asarray(apply_modality_lut(frame, ds), np.float32)
    except Exception as e:
        raise DecodeError("dicom_invalid_lut", f"modality LUT/rescale unusable: {type(e).__name__}: {e}",
                          "dicom") from e
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        try:
            windowed = np.asarray(apply_voi_lut(gray, ds, index=0, prefer_lut=True), np.float32)
            if windowed.shape == gray.shape and np.isfinite(windowed).all():
                gray = windowed
        except Exception:
            pass  # invalid window: keep the modality values (see docstring)
    if photometric == "MONOCHROME1":
        gray = gray.max() - gray
    return gray


def _pixel_area(spacing):
    """PixelSpacing (row, column spacing in mm) -> the area of one pixel in mm²; ValueError when not two
    positive finite numbers (the row is kept, the area left unknown)."""
    values = [float(v) for v in spacing]
    if len(values) != 2 or not all(0 < v < 1e3 for v in values):
        raise ValueError(f"PixelSpacing {spacing!r}")
    return values[0] * values[1]


def plane_of(orientation, tolerance=0.8):
    """'axial', 'sagittal', 'coronal' or 'oblique' of an ImageOrientationPatient (row and column direction
    cosines): the patient axis the slice's normal runs along, 'oblique' when it leans more than ~37 degrees from
    every axis. ValueError when not six finite numbers. Why: the model reads axial slices; a sagittal or coronal
    series of a head without a tumor gets half its slices flagged (docs/model_v4_notes.md, row PL)."""
    v = np.asarray([float(x) for x in orientation], np.float64)
    if v.shape != (6,) or not np.isfinite(v).all():
        raise ValueError(f"ImageOrientationPatient {orientation!r}")
    normal = np.cross(v[:3], v[3:])
    size = np.linalg.norm(normal)
    if size < 1e-3:
        raise ValueError(f"ImageOrientationPatient {orientation!r}: row and column directions are parallel")
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) / size < tolerance:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]  # DICOM patient axes: x right->left, y front->back, z feet->head


# Header fields copied into rows: what a worklist needs to find the image, never a patient identifier
# (the accession number is pseudonymised by the pipeline unless --keep-accession-numbers).
_DICOM_FIELDS = {"StudyInstanceUID": ("study_instance_uid", str), "SeriesInstanceUID": ("series_instance_uid", str),
                 "SOPInstanceUID": ("sop_instance_uid", str), "Modality": ("modality", str),
                 "AccessionNumber": ("accession_number", str), "StudyDate": ("study_date", str),
                 "SeriesDescription": ("series_description", str), "SeriesNumber": ("series_number", int),
                 "InstanceNumber": ("instance_number", int), "PixelSpacing": ("pixel_area_mm2", _pixel_area),
                 "ImageOrientationPatient": ("plane", plane_of)}


def _header_fields(ds):
    out = {}
    for keyword, (col, cast) in _DICOM_FIELDS.items():
        try:
            value = ds.get(keyword)
            out[col] = cast(value) if value not in (None, "") else None
        except Exception:  # a malformed value (e.g. SeriesNumber "A1") is left out, never fatal
            out[col] = None
    if out["plane"] is None:  # an enhanced multi-frame image keeps its orientation in functional groups
        try:
            out["plane"] = plane_of(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                                    .ImageOrientationPatient)
        except Exception:
            pass
    return out


def _meta_end(data):
    """Offset where the dataset starts after the 128-byte preamble, 'DICM' and group 0002."""
    pos = 132
    while pos + 8 <= len(data):
        group = int.from_bytes(data[pos:pos + 2], "little")
        if group != 0x0002:
            return pos
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(data[pos + 8:pos + 12], "little")
            pos += 12 + length
        else:
            pos += 8 + int.from_bytes(data[pos + 6:pos + 8], "little")
    return len(data)


def _check_deflated(data):
    """Refuse a deflated DICOM whose dataset would inflate past the ratio limit (never held whole)."""
    end = _meta_end(data)
    if _DEFLATED_UID not in data[:end]:
        return
    limit = int(max(1 << 20, MAX_INFLATE_RATIO * len(data)))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = 0
        chunk = inflater.decompress(data[end:], 1 << 20)
        while chunk:
            inflated += len(chunk)
            if inflated > limit:
                raise DecodeError("suspicious_compression_ratio",
                                  f"deflated DICOM inflates past {limit} bytes from {len(data)} "
                                  f"(ratio > {MAX_INFLATE_RATIO:g})", "dicom")
            chunk = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
    except zlib.error as e:
        raise DecodeError("dicom_corrupt", f"deflated dataset unreadable: {e}", "dicom") from e


def _quiet_pydicom():
    """pydicom warns about invalid header values by quoting them ("Invalid value for VR CS: 'SMITH^JOHN'")
    on stderr and in its log: reading validation off and its logger at ERROR, so no value reaches a log.
    The rows' error codes say what was wrong."""
    import logging

    import pydicom
    if pydicom.config.settings.reading_validation_mode != pydicom.config.IGNORE:
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        logging.getLogger("pydicom").setLevel(logging.ERROR)


def _decode_dicom(data, force):
    import pydicom
    _quiet_pydicom()
    if not force:
        _check_deflated(data)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
        ds.ensure_file_meta() if hasattr(ds, "ensure_file_meta") else None
        _ = ds.get("PixelData"), ds.get("StudyInstanceUID")  # parse up to pixel data
    except Exception as e:
        if force:
            raise DecodeError("not_an_image", "content is not PNG, JPEG, BMP, TIFF, DICOM or NIfTI", "unknown") from e
        raise DecodeError("dicom_corrupt", f"pydicom cannot parse: {type(e).__name__}: {e}", "dicom") from e
    if force and "SOPClassUID" not in ds and "PixelData" not in ds:
        raise DecodeError("not_an_image", "content is not PNG, JPEG, BMP, TIFF, DICOM or NIfTI", "unknown")
    uids = _header_fields(ds)
    try:
        return _decode_dicom_pixels(ds, uids)
    except DecodeError as e:
        e.fields = uids  # an error row still says which instance it is
        raise


def _decode_dicom_pixels(ds, uids):
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DecodeError("dicom_no_pixel_data", "DICOM has no pixel data", "dicom")
    _check_dicom_size(ds)
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise DecodeError("dicom_unsupported_transfer_syntax",
                          f"no decoder for transfer syntax {name}: {e}", "dicom") from e
    except Exception as e:
        raise DecodeError("dicom_corrupt", f"pixel data unreadable: {type(e).__name__}: {e}", "dicom") from e
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = np.asarray(pixels)
    while frames.ndim < 3 + (samples > 1):  # single frames come without the frame axis
        frames = frames[None]
    out = []
    for i, frame in enumerate(frames):
        out.append(Frame(_dicom_gray(np.asarray(frame), ds), i))
    h, w = out[0].gray.shape[:2]
    return Decoded("dicom", int(w), int(h), out, uids)

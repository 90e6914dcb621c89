"""NIfTI volumes (.nii, .nii.gz) -> axial slices, one frame each.

Research archives (BraTS, MS and healthy-volunteer collections, anything that went through a
conversion tool) store MRI as NIfTI volumes rather than DICOM series. Every axial slice becomes a frame as a
DICOM viewer shows an axial series (screening_core.volumes, which the trainer cuts its slices with too). A 4-D
file (diffusion, perfusion, fMRI) gives the slices of its first volume only.

Limits are checked on the header's dimensions before any voxel is read, and a gzip'd volume is
inflated under the same ratio limit as a zip member, so a small hostile file cannot claim memory.
"""
import gzip
import io
import zlib

import numpy as np

from beam_pipeline import errors
from screening_core import volumes

_SINGLE_FILE_MAGIC = ((344, b"n+1\x00"), (4, b"n+2\x00"))  # NIfTI-1 / NIfTI-2, header and data in one file
_HEADER_BYTES = 540  # a NIfTI-2 header; NIfTI-1's is 348


class NiftiError(errors.ScreeningError):
    """`code` is an error code of beam_pipeline.error_codes."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def is_nifti(head):
    """True when `head` (the first bytes, inflated) is a single-file NIfTI-1 or NIfTI-2 header."""
    return any(head[at:at + len(magic)] == magic for at, magic in _SINGLE_FILE_MAGIC)


def gzip_head(data, n=_HEADER_BYTES):
    """The first `n` inflated bytes of a gzip stream (b"" when it is not one)."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:64 * 1024], n)
    except zlib.error:
        return b""


def inflate(data, max_ratio):
    """A gzip'd volume, inflated; refused past `max_ratio` times its size (never held whole)."""
    limit = int(max(1 << 20, max_ratio * len(data)))
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            while chunk := f.read(1 << 20):
                out.write(chunk)
                if out.tell() > limit:
                    raise NiftiError("suspicious_compression_ratio",
                                     f"gzip'd NIfTI inflates past {limit} bytes from {len(data)} "
                                     f"(ratio > {max_ratio:g})")
    except (OSError, EOFError, zlib.error) as e:
        raise NiftiError("undecodable_image", f"gzip'd NIfTI unreadable: {e}") from e
    return out.getvalue()


def _image(data):
    import nibabel as nib
    cls = nib.Nifti2Image if data[4:8] == b"n+2\x00" else nib.Nifti1Image
    try:
        return cls.from_bytes(data)
    except Exception as e:
        raise NiftiError("undecodable_image", f"NIfTI header unreadable: {type(e).__name__}") from e


def slices(data, max_frame_pixels, max_frames, max_member_pixels):
    """(list of 2-D float32 axial slices, area of one slice pixel in mm² or None) of a single-file NIfTI
    volume. The area comes from the canonical voxel size (pixdim) when the file says its unit is mm
    (or says none, as many converters do)."""
    img = _image(data)
    shape = tuple(int(d) for d in img.header.get_data_shape())
    if len(shape) < 2 or min(shape) < 1:
        raise NiftiError("undecodable_image", f"NIfTI dimensions {shape} hold no image")
    if len(shape) == 2:
        shape = shape + (1,)
    x, y, z = shape[:3]
    if x * y > max_frame_pixels:
        raise NiftiError("image_too_large", f"{x}x{y} voxels per slice exceeds the limit of {max_frame_pixels}")
    if z > max_frames:
        raise NiftiError("too_many_frames", f"{z} slices > limit {max_frames}")
    if x * y * z > max_member_pixels:
        raise NiftiError("image_too_large", f"{z} slices of {x}x{y} exceed the limit of {max_member_pixels} "
                                            "voxels per member")
    needed = int(np.prod(shape)) * img.header.get_data_dtype().itemsize
    if len(data) < int(img.header["vox_offset"]) + needed:
        raise NiftiError("undecodable_image", f"NIfTI voxel data cut: {len(data)} bytes hold less than the "
                                              f"{needed} the header declares")
    try:
        frames, dx, dy = volumes.axial_frames(img)
    except Exception as e:
        raise NiftiError("undecodable_image", f"NIfTI voxels unreadable: {type(e).__name__}: {e}") from e
    frames, dx, dy = volumes.square_pixels(frames, dx, dy, max_frame_pixels)
    if sum(f.size for f in frames) > max_member_pixels:
        raise NiftiError("image_too_large", f"{len(frames)} slices resampled to square pixels exceed the "
                                            f"limit of {max_member_pixels} voxels per member")
    return frames, _pixel_area_mm2(img.header, dx, dy)


def _pixel_area_mm2(header, dx, dy):
    unit = header.get_xyzt_units()[0]
    scale = {"mm": 1.0, "meter": 1e3, "micron": 1e-3, "unknown": 1.0}.get(unit)
    if scale is None or not (0 < dx * scale < 1e3 and 0 < dy * scale < 1e3):
        return None
    return dx * dy * scale * scale

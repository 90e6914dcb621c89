"""Every `error_code` a row can carry, with its status and meaning.

docs/output_schema.md and docs/reliability.md list every code here with its status (and reliability.md the test
that produces it); tests/test_bad_inputs.py::test_every_error_code_is_documented holds them equal.
"""
from beam_pipeline.schema import STATUS_ERROR, STATUS_SKIPPED

CODES = {
    # member content
    "empty_file": (STATUS_ERROR, "zero-byte file or member"),
    "undecodable_image": (STATUS_ERROR, "looks like an image (magic bytes) but Pillow cannot decode it: corrupt or truncated"),
    "image_too_large": (STATUS_ERROR, "pixel count above the decompression-bomb limit; never decoded"),
    "dicom_corrupt": (STATUS_ERROR, "DICOM that pydicom cannot parse or whose pixel data is truncated"),
    "dicom_invalid_lut": (STATUS_ERROR, "DICOM modality LUT/rescale or palette that cannot be applied (an invalid VOI window is ignored instead)"),
    "too_many_frames": (STATUS_ERROR, "more frames (DICOM), pages (TIFF) or slices (NIfTI) than the per-member limit; never decoded"),
    "dicom_unsupported_transfer_syntax": (STATUS_ERROR, "DICOM pixel data in a transfer syntax no installed decoder handles"),
    "blank_image": (STATUS_SKIPPED, "an image with no head the preprocessing could find (blank, or a few "
                                    "hundred pixels above the vertex): not judged rather than scored 0"),
    "not_an_image": (STATUS_SKIPPED, "content is not PNG/JPEG/BMP/TIFF/DICOM/NIfTI (text, other binary)"),
    "dicom_no_pixel_data": (STATUS_SKIPPED, "DICOM without pixel data (DICOMDIR, structured report, ...)"),
    "nested_archive": (STATUS_SKIPPED, "an archive inside an archive; policy: not expanded, reported"),
    "resource_fork": (STATUS_SKIPPED, "macOS metadata (__MACOSX/ or ._ files), not an image"),
    # member container
    "member_too_large": (STATUS_ERROR, "uncompressed member size above --max-member-bytes; never read"),
    "suspicious_compression_ratio": (STATUS_ERROR, "zip member, compressed-tar member, deflated DICOM or gzip'd NIfTI whose inflated/compressed ratio exceeds the zip-bomb limit (200x); never held whole"),
    "encrypted_member": (STATUS_ERROR, "password-protected zip member"),
    "overlapping_member": (STATUS_ERROR, "zip entry that shares its data with an earlier entry (overlapping-entry zip bomb); never inflated"),
    "member_size_mismatch": (STATUS_ERROR, "zip entry whose declared compressed size runs past the next member or the archive's end"),
    "sparse_member": (STATUS_ERROR, "sparse tar member: its stored bytes are not the file's content; not decoded"),
    "link_member": (STATUS_SKIPPED, "tar symbolic or hard link; links are never followed"),
    "special_member": (STATUS_SKIPPED, "tar device or FIFO entry, not a file"),
    "member_read_error": (STATUS_ERROR, "member bytes could not be read (CRC mismatch, truncated data)"),
    "dicomweb_timeout": (STATUS_ERROR, "a DICOMweb instance did not arrive within the retrieval deadline "
                                       "(120 s per instance, however the server paces its bytes), or was not "
                                       "requested because the PACS had left 8 requests in a row unanswered; "
                                       "the study is tried again next night"),
    "dicomweb_uid_mismatch": (STATUS_ERROR, "a DICOMweb answer whose Study, Series or SOP Instance UID is not the "
                                            "one asked for (a proxy or cache mixing answers up); not scored, never "
                                            "written back, the study tried again next night"),
    # whole input
    "archive_corrupt": (STATUS_ERROR, "the archive's index cannot be read; one row for the whole archive"),
    "archive_truncated": (STATUS_ERROR, "the archive ends early; members before the cut are scored, this row marks the cut"),
    "not_a_regular_file": (STATUS_ERROR, "the input is a FIFO, socket or device; never opened (a FIFO would block forever)"),
    "input_unreadable": (STATUS_ERROR, "the input file could not be opened or read"),
    "archive_empty": (STATUS_SKIPPED, "an archive (zip, tar, ...) that holds no file; one row for the whole archive"),
    "study_empty": (STATUS_ERROR, "a DICOMweb study listed by QIDO-RS without any series; not recorded in the "
                                  "manifest, so the next night tries it again"),
    "no_image_series": (STATUS_SKIPPED, "a DICOMweb study whose series are all non-images (SR, KO, PR, ...) or "
                                        "this job's own write-back"),
}


def status_of(code):
    return CODES[code][0]

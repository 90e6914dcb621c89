"""The image-level Parquet schema: one row per input image (per frame for
multi-frame DICOM), including images that failed or were skipped.

Defined once here; docs/output_schema.md documents it and the tests read it.
No patient name, ID or birth date is ever a column.
"""
import datetime

import pyarrow as pa

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"

LABEL_TUMOR = "tumor"
LABEL_NO_TUMOR = "no_tumor"
LABEL_OOD = "out_of_distribution"  # below threshold, but unlike the training images: never a silent negative


def label(probability, threshold, in_distribution=True):
    """The one place a row's label is decided (report, studies and summary read it)."""
    if probability >= threshold:
        return LABEL_TUMOR
    return LABEL_NO_TUMOR if in_distribution is not False else LABEL_OOD

IMAGE_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("source_uri", pa.string()),          # the archive or loose file
    ("member_path", pa.string()),         # path inside the archive; "" for a loose file
    ("member_size", pa.int64()),          # uncompressed bytes
    ("content_sha256", pa.string()),
    ("image_format", pa.string()),        # png, jpeg, bmp, tiff, dicom, or what was sniffed
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("frame_index", pa.int32()),          # 0 unless multi-frame DICOM
    ("study_instance_uid", pa.string()),
    ("series_instance_uid", pa.string()),
    ("sop_instance_uid", pa.string()),
    ("modality", pa.string()),
    ("accession_number", pa.string()),    # keyed pseudonym (p-...) unless --keep-accession-numbers
    ("study_date", pa.string()),          # DICOM DA, YYYYMMDD
    ("series_description", pa.string()),
    ("series_number", pa.int32()),
    ("instance_number", pa.int32()),
    ("plane", pa.string()),               # axial / sagittal / coronal / oblique (DICOM orientation; NIfTI axial), else null
    ("look", pa.string()),                # flair / t1ce / t2 / pd / t1 / dwi / swi (screening_core.looks), else null
    ("patient_group", pa.string()),       # --group-pattern's patient of a non-DICOM image (keyed pseudonym), else null
    ("status", pa.string()),              # ok / error / skipped
    ("error_code", pa.string()),          # see beam_pipeline/error_codes.py
    ("error_message", pa.string()),
    ("tumor_probability", pa.float32()),
    ("predicted_label", pa.string()),     # tumor / no_tumor / out_of_distribution (null unless ok)
    ("ood_score", pa.float32()),          # distance from the training images (trainer/ood.py); null without a reference
    ("in_distribution", pa.bool_()),      # ood_score <= the artifact's OOD threshold
    ("threshold", pa.float32()),
    ("threshold_source", pa.string()),    # artifact / flag / site_profile:<profile sha256[:12]> (ok rows)
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("model_sha256", pa.string()),
    ("heatmap_path", pa.string()),        # review overlay PNG (lesion map or Grad-CAM) for flagged images, else null
    ("input_scale", pa.float32()),        # source pixels per model-input pixel (the head crop's side / input side)
    ("pixel_area_mm2", pa.float32()),     # DICOM PixelSpacing row x column, NIfTI voxel size, else null
    ("lesion_area_px", pa.float32()),     # lesion-map area >= 0.5, in source pixels; null unless a lesion-map model
    ("lesion_area_mm2", pa.float32()),    # the same in mm² where the pixel spacing is known
    ("scored_at", pa.timestamp("us", tz="UTC")),
    # 90 / 270: the model's orientation network turned the slice upright before scoring; 0: scored as it came; null:
    # a model without one. Last, so that a result carried from before it (incremental runs) lines up column by column.
    ("turned_back_degrees", pa.int16()),
    # true: the image was a negative (bright background) and was scored as its positive (preprocessing v4); null:
    # a model on an earlier preprocessing, which does not ask
    ("taken_for_negative", pa.bool_()),
])

COLUMNS = IMAGE_SCHEMA.names

# One row per DICOM series; non-DICOM images are grouped by archive and folder, loose files by the folder
# that holds them (how exports lay out a series).
SERIES_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("study_key", pa.string()),           # study/series UIDs, source_uri!folder for archives, <folder>/ for loose files
    ("study_instance_uid", pa.string()),
    ("series_instance_uid", pa.string()),
    ("source_uri", pa.string()),          # an input holding the group's images (the first seen; loose files: their folder)
    ("folder", pa.string()),              # member folder for non-DICOM groups, else null
    ("patient_group", pa.string()),       # --group-pattern's patient (keyed pseudonym) of non-DICOM images, else null
    ("modality", pa.string()),
    ("series_description", pa.string()),
    ("series_number", pa.int32()),
    ("plane", pa.string()),               # the series' slice plane (its first image's), null where unknown
    ("look", pa.string()),                # the series' MRI look (its first image's), null where unknown
    ("accession_number", pa.string()),    # keyed pseudonym unless --keep-accession-numbers
    ("study_date", pa.string()),
    ("n_images", pa.int64()),             # ok (scored) images
    ("n_flagged", pa.int64()),
    ("n_out_of_distribution", pa.int64()),  # scored images the OOD guard found unlike the training images
    ("max_probability", pa.float32()),
    ("mean_probability", pa.float32()),
    ("flagged", pa.bool_()),              # any image at or above threshold
    ("top_members", pa.list_(pa.string())),  # member paths of the highest-probability images
    ("max_lesion_area_px", pa.float32()),  # largest lesion-map area of one slice (source pixels); null without
    ("max_lesion_area_mm2", pa.float32()),  # the same slice's area in mm² where the pixel spacing is known
    ("largest_lesion_member", pa.string()),  # the slice with that largest lesion (as in top_members)
    ("threshold", pa.float32()),
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("n_turned_back", pa.int64()),        # ok images the model's orientation network turned upright before scoring
])

# One row per DICOM study (StudyInstanceUID), the unit a radiologist's worklist shows; a non-DICOM
# archive folder is its own row, labelled group_kind = "folder".
STUDY_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("study_key", pa.string()),           # StudyInstanceUID, or source_uri!folder for non-DICOM
    ("group_kind", pa.string()),          # dicom_study / patient (--group-pattern) / folder
    ("study_instance_uid", pa.string()),
    ("accession_number", pa.string()),    # keyed pseudonym unless --keep-accession-numbers
    ("study_date", pa.string()),
    ("source_uri", pa.string()),
    ("folder", pa.string()),
    ("patient_group", pa.string()),       # group_kind patient: the --group-pattern patient (keyed pseudonym)
    ("modalities", pa.list_(pa.string())),
    ("n_series", pa.int64()),
    ("n_images", pa.int64()),
    ("n_flagged", pa.int64()),            # flagged slices
    ("n_out_of_distribution", pa.int64()),  # scored slices the OOD guard found unlike the training images
    ("max_probability", pa.float32()),
    ("flagged", pa.bool_()),
    ("flagged_series", pa.list_(pa.string())),  # series descriptions (or UIDs / folders) with a flagged slice
    ("max_lesion_area_px", pa.float32()),  # the largest lesion-map area of one slice in the study
    ("max_lesion_area_mm2", pa.float32()),
    ("largest_lesion_series", pa.string()),  # series label of the slice with the largest lesion
    ("largest_lesion_member", pa.string()),
    ("threshold", pa.float32()),
    ("model_name", pa.string()),
    ("model_version", pa.string()),
])


def empty_row(**fields):
    """A row with every column present (nulls where unknown)."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not schema columns: {sorted(unknown)}")
    row = dict.fromkeys(COLUMNS)
    row["frame_index"] = 0
    row.update(fields)
    return row


def now():
    return datetime.datetime.now(datetime.timezone.utc)

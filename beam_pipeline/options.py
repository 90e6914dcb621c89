"""The scoring job's own flags; every other flag is a standard Beam option."""
import argparse
import os

from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import archives, model_store, pseudonym


class ScreeningOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", action="append", default=None,
                            help="glob of archives (.zip .tar .tar.gz .tgz .tar.bz2 .tar.xz) and loose images "
                                 "(.png .jpg .bmp .tif .dcm, extension-less DICOM); local or gs://; a folder "
                                 "(or a gs:// prefix ending in /) means every file under it, recursively; "
                                 "dicomweb[s]://host/path?StudyDate=20261101-20261126&Modality=MR searches a "
                                 "PACS (QIDO-RS) and retrieves every matching instance (WADO-RS); "
                                 "repeatable, or a comma-separated list")
        parser.add_argument("--dicomweb-max-parallel", dest="dicomweb_max_parallel", type=int,
                            default=4,
                            help="concurrent WADO-RS retrievals per worker process for dicomweb:// inputs, so "
                                 "a PACS is never flooded")
        parser.add_argument("--dicomweb-credentials", dest="dicomweb_credentials", default=None,
                            help="file (mode 600) with one line 'user:password' or 'Bearer <token>' for a "
                                 "DICOMweb server that needs a login; never put credentials in the URI "
                                 "(default: none; Google Healthcare API uses application-default credentials)")
        parser.add_argument("--write-back", dest="write_back", action="store_true", default=False,
                            help="store a DICOM Structured Report per scored series into its study in the PACS "
                                 "(STOW-RS; needs exactly one dicomweb:// input)")
        parser.add_argument("--output", default=None,
                            help="output folder (local or gs://); the finished result is <output>/results/ (tables, "
                                 "heatmaps, report, _SUMMARY.json), replaced in one step when a run completes; "
                                 "{date} becomes the UTC date (for schedules)")
        parser.add_argument("--model", default=model_store.DEFAULT_MODEL,
                            help="model artifact: its version folder (local or gs://), its model.keras, "
                                 "or a local name folder (the newest version is used)")
        parser.add_argument("--engine", choices=("auto", "tensorflow", "onnxruntime"), default="auto",
                            help="inference engine: auto = ONNX Runtime on CPU workers when the artifact has "
                                 "model.onnx (measured faster, docs/performance.md), TensorFlow on GPU workers")
        parser.add_argument("--model-copies", dest="model_copies", type=int, default=0,
                            help="GPU workers: load this many model copies per worker VM, shared by its SDK "
                                 "processes (Beam's large-model mode), instead of one per process; 0 = per process")
        parser.add_argument("--inference-threads", dest="inference_threads", type=int, default=0,
                            help="CPU threads of each worker process's engine (ONNX Runtime, or TensorFlow "
                                 "without a GPU); 0 = auto: the "
                                 "machine's vCPUs divided by the SDK processes the runner starts on it (one "
                                 "per vCPU on Dataflow and DirectRunner multi_processing), so that decoding in "
                                 "one process overlaps scoring in another instead of threads competing")
        parser.add_argument("--batch-size", dest="batch_size", type=int, default=64,
                            help="images per model call")
        parser.add_argument("--threshold", type=float, default=None,
                            help="operating threshold; default: the artifact's")
        parser.add_argument("--site-profile", dest="site_profile", default=None,
                            help="site_profile.json from brain-validate: use the threshold this site validated "
                                 "(refused for another model); rows record it in threshold_source")
        parser.add_argument("--force-site-profile", dest="force_site_profile", action="store_true", default=False,
                            help="apply a --site-profile whose validation did not meet its checks (warned, and "
                                 "recorded as site_profile:<id>:forced in every row)")
        parser.add_argument("--run-id", dest="run_id", default=None,
                            help="identifier stored in every row; default: UTC start time")
        parser.add_argument("--chunk-size", dest="chunk_size", type=int,
                            default=archives.Limits.chunk_size,
                            help="archive members per pipeline element")
        parser.add_argument("--max-member-bytes", dest="max_member_bytes", type=int,
                            default=archives.Limits.max_member_bytes,
                            help="members larger than this (uncompressed) are reported, never read")
        parser.add_argument("--manifest", default=None,
                            help="JSON manifest (local or gs://) of inputs already scored; with it, only "
                                 "new or changed inputs are scored and the manifest is updated on success")
        parser.add_argument("--heatmaps", action=argparse.BooleanOptionalAction, default=True,
                            help="write a review overlay PNG (the model's own lesion map; Grad-CAM for slice classifiers) under "
                                 "<output>/results/heatmaps/ for each flagged image")
        parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                            help="write <output>/results/report.html after the run (rebuild any time with "
                                 "python -m beam_pipeline.report <output>)")
        parser.add_argument("--num-shards", dest="num_shards", type=int, default=0,
                            help="Parquet output shards (0 = runner decides)")
        parser.add_argument("--max-error-fraction", dest="max_error_fraction", type=float, default=0.05,
                            help="exit 3 when more than this share of rows has status error (skipped rows, "
                                 "such as text files, do not count)")
        parser.add_argument("--fail-on-drift", dest="fail_on_drift", action=argparse.BooleanOptionalAction,
                            default=True,
                            help="exit 4 when the night's input drifted from the model's validation data "
                                 "(share of out-of-distribution images; docs/new_site.md): its scores are not "
                                 "to be trusted as they stand; --no-fail-on-drift reports the drift and exits 0")
        parser.add_argument("--allow-member-model", dest="allow_member_model", action="store_true", default=False,
                            help="score with a model artifact marked as an ensemble's member (metadata member_of, "
                                 "e.g. v28: a lesion map that alone ranks brain-mri below chance); refused by "
                                 "default, and the report says so when allowed")
        parser.add_argument("--keep-paths", dest="keep_paths", action="store_true", default=False,
                            help="write real input and member paths into the outputs; by default every path "
                                 "component becomes a keyed pseudonym (folder and file names of exports often "
                                 "hold patient names or MRNs)")
        parser.add_argument("--keep-accession-numbers", dest="keep_accession_numbers", action="store_true",
                            default=False,
                            help="write DICOM accession numbers in clear; by default each is a keyed pseudonym "
                                 "(the same key as paths), so a night's rows can still be grouped by exam")
        parser.add_argument("--group-pattern", dest="group_pattern", default=None,
                            help="regex on the file name of non-DICOM images whose first group names the patient "
                                 "(as in brain-validate and the trainer), e.g. '^(TCGA_\\w+?_\\d+)_'; series and "
                                 "study rows then group by patient instead of by folder. DICOM groups by its UIDs (default: none: "
                                 "non-DICOM images group by the folder holding them)")
        parser.add_argument("--reading-room", dest="reading_room", default=None,
                            help="after the run, also write a reading-room copy of the report with clear "
                                 "accession numbers and paths to this local file, outside --output (for use "
                                 "inside the hospital; the tables and results/report.html stay pseudonymised; "
                                 "python -m beam_pipeline.reidentify does the same later) (default: none)")
        parser.add_argument("--keep-series-descriptions", dest="keep_series_descriptions", action="store_true",
                            default=False,
                            help="write DICOM series descriptions as the scanner wrote them; by default only MRI "
                                 "vocabulary (AX, FLAIR, T1, POST, GAD, ...) is kept, so a name or MRN typed into "
                                 "the description reaches no output")
        parser.add_argument("--pseudonym-key-file", dest="pseudonym_key_file",
                            default=os.environ.get("BRAIN_SCREENING_PSEUDONYM_KEY", pseudonym.DEFAULT_KEY_FILE),
                            help="secret key for path pseudonyms, created on first use; keep it to map "
                                 "pseudonyms back (python -m beam_pipeline.reidentify)")
        parser.add_argument("--log-format", dest="log_format", choices=("text", "json"), default="text",
                            help="console messages as short text lines, or one JSON object per line "
                                 "(ts, level, event, message, fields) for log collectors")
        parser.add_argument("--config", default=None,
                            help="YAML file of flag: value pairs (lists for repeatable flags), read before "
                                 "the command line's flags, which win")
        parser.add_argument("--verbose", action="store_true", default=False,
                            help="show TensorFlow and Beam logging")

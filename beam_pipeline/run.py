"""Score brain-MRI image archives and write one Parquet row per image.

  python -m beam_pipeline.run --input 'archives/*.zip' --output out/run1
  python -m beam_pipeline.run --input 'gs://bucket/archives/*' --output gs://bucket/out/run1 \\
      --model gs://bucket/models/brain-tumor-cnn/3 --runner DataflowRunner ...

Job-level problems (missing or tampered model, no input matched, output not
writable) stop the job with a clear message before any work starts.
"""
import datetime
import json
import logging
import os
import shutil
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from beam_pipeline import archives, cli, manifest, model_store, pseudonym, report, summary
from beam_pipeline.options import ScreeningOptions
from beam_pipeline.transforms import DecodeImages, ExpandInputs, ROWS_TAG, ScoreImages, WriteResults
from trainer import artifact


class JobError(RuntimeError):
    """A problem with the job's inputs that must stop it before it starts."""


def _match_inputs(patterns, full):
    """FileMetadata of the input files; fails if a pattern matches nothing.

    Unless `full`, one match per pattern is enough: the pipeline's own
    MatchAll lists the inputs, so a large bucket is not listed twice.
    """
    if not patterns:
        raise JobError("no --input given")
    matched, empty = {}, []
    limits = None if full else [1] * len(patterns)
    for pattern, result in zip(patterns, FileSystems.match(list(patterns), limits)):
        if not result.metadata_list:
            empty.append(pattern)
        matched.update({m.path: m for m in result.metadata_list})
    if empty:
        raise JobError(f"no input matched {empty}")
    return [matched[p] for p in sorted(matched)]


def _check_output_writable(output):
    probe = f"{output.rstrip('/')}/_write_probe_{uuid.uuid4().hex}"
    try:
        with FileSystems.create(probe, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as e:
        raise JobError(f"output {output} is not writable: {e}") from e


OWNER_MARKER = "_BRAIN_SCREENING_OUTPUT"


def _claim_output(output, run_id):
    """Refuse a non-empty output this job did not create; mark a new one as ours.

    Reruns replace this job's own tables, heatmaps and report, so pointing
    --output at a folder that holds someone else's `images-*.parquet` or
    `report.html` would delete them.
    """
    prefix = output.rstrip("/")
    marker = f"{prefix}/{OWNER_MARKER}"
    if FileSystems.exists(marker):
        return
    try:
        present = [m.path for m in FileSystems.match([f"{prefix}/*"])[0].metadata_list]
    except Exception:  # a missing folder matches nothing
        present = []
    present = [p for p in present if "/_write_probe_" not in p]
    if present:
        raise JobError(f"output {output} already holds {len(present)} file(s) that this job did not write "
                       f"(no {OWNER_MARKER} marker), e.g. {sorted(present)[0]}; choose a new or empty output")
    with FileSystems.create(marker, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(json.dumps({"created_by": "brain-mri-screening", "first_run_id": run_id}).encode())


def _clear_previous_output(output):
    """A rerun replaces its own results instead of mixing shards of two runs."""
    prefix = output.rstrip("/")
    old = [m.path for r in FileSystems.match([f"{prefix}/images-*.parquet", f"{prefix}/studies-*.parquet",
                                              f"{prefix}/heatmaps/*.png"]) for m in r.metadata_list]
    old += [p for p in (f"{prefix}/_SUMMARY.json", f"{prefix}/report.html") if FileSystems.exists(p)]
    # Write-in-progress shards a killed run left behind (Beam's file sinks stage under beam-temp-*):
    # objects on GCS, folders on local disk.
    if "://" in prefix:
        old += [m.path for m in FileSystems.match([f"{prefix}/beam-temp-*/**"])[0].metadata_list]
    elif os.path.isdir(prefix):
        for name in os.listdir(prefix):
            if name.startswith("beam-temp-") and os.path.isdir(os.path.join(prefix, name)):
                shutil.rmtree(os.path.join(prefix, name), ignore_errors=True)
    if old:
        FileSystems.delete(old)


def _model_info(metadata):
    return {"model_name": metadata["name"], "model_version": str(metadata["version"]),
            "model_sha256": metadata["model_sha256"]}


def build(pipeline, opts, metadata, started_at, pseudonym_key=None):
    """Wire the stages into `pipeline`; returns the summary PCollection."""
    run_id = opts.run_id
    threshold = opts.threshold if opts.threshold is not None else metadata["threshold"]
    limits = archives.Limits(max_member_bytes=opts.max_member_bytes, chunk_size=opts.chunk_size)
    info = _model_info(metadata)
    chunks = pipeline | "ExpandArchives" >> ExpandInputs(opts.input, limits)
    decoded = chunks | "DecodeImages" >> DecodeImages(run_id, metadata["input_spec"], info, pseudonym_key)
    scored = decoded.images | "ScoreImages" >> ScoreImages(
        opts.model, threshold, opts.batch_size, opts.chunk_size,
        heatmap_output=opts.output if opts.heatmaps else None)
    rows = (scored, decoded[ROWS_TAG]) | "AllRows" >> beam.Flatten()
    return rows | "WriteResults" >> WriteResults(opts.output, run_id, started_at, info, opts.model, opts.num_shards)


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Build and run the job; returns the PipelineResult (after it finishes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.check_flags(argv)
        options = PipelineOptions(argv)
        opts = options.view_as(ScreeningOptions)
        cli.validate(opts)
    except cli.UsageError as e:
        raise JobError(str(e)) from e
    options.view_as(SetupOptions).save_main_session = save_main_session
    if not opts.output:
        raise JobError("no --output given")
    opts.input = cli.expand_folders(opts.input)
    try:
        opts.model, note = model_store.resolve(opts.model)
    except artifact.ArtifactError as e:
        raise JobError(f"model: {e}") from e
    if note:
        print(note)
    now = datetime.datetime.now(datetime.timezone.utc)
    if not opts.run_id:
        opts.run_id = now.strftime("%Y%m%dT%H%M%SZ")
    opts.output = opts.output.replace("{date}", now.strftime("%Y-%m-%d"))  # nightly schedules
    try:
        metadata = model_store.metadata(opts.model)
    except (artifact.ArtifactError, ValueError) as e:
        raise JobError(f"model: {e}") from e
    matched = _match_inputs(opts.input, full=bool(opts.manifest))
    _check_output_writable(opts.output)
    _claim_output(opts.output, opts.run_id)
    try:
        key = None if opts.keep_paths else pseudonym.load_or_create_key(opts.pseudonym_key_file)
    except (OSError, ValueError) as e:
        raise JobError(f"pseudonym key: {e} (or pass --keep-paths)") from e
    try:
        known = manifest.load(opts.manifest) if opts.manifest else {}
    except manifest.ManifestError as e:
        raise JobError(str(e)) from e
    todo = manifest.new_or_changed(matched, known) if opts.manifest else matched
    if opts.manifest:
        print(f"Manifest {opts.manifest}: {len(matched) - len(todo)} input(s) unchanged and skipped, "
              f"{len(todo)} new or changed")
        opts.input = [m.path for m in todo]
    started_at = time.time()
    if not todo:
        # Nothing new: earlier results at this output stay as they are.
        if not summary.exists(opts.output):
            summary.write(opts.output, opts.run_id, summary.EMPTY_COUNTS, _model_info(metadata), opts.model, 0.0)
            if opts.report:
                report.write_report(opts.output)
        else:
            print(f"Nothing new to score; the results already in {opts.output} are left as they are")
        return _NothingToDo(opts.output, opts.max_error_fraction)
    _clear_previous_output(opts.output)
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build(pipeline, opts, metadata, started_at, key)
    result = pipeline.run()
    if not os.environ.get("BRAIN_SCREENING_NO_WAIT"):  # a Flex Template launcher only submits
        result.wait_until_finish()
        finished = summary.exists(opts.output)  # not after --dry_run
        if opts.report and finished:
            report.write_report(opts.output)
        if opts.manifest and finished:
            manifest.save(opts.manifest, {**known, **{m.path: manifest.fingerprint(m) for m in todo}})
    result.output = opts.output
    result.max_error_fraction = opts.max_error_fraction
    return result


class _NothingToDo:
    state = "DONE"

    def __init__(self, output, max_error_fraction):
        self.output = output
        self.max_error_fraction = max_error_fraction

    def wait_until_finish(self, duration=None):
        return self.state


def read_summary(output):
    return summary.read(output)


EXIT_OK, EXIT_JOB_ERROR, EXIT_TOO_MANY_ERRORS = 0, 2, 3


def exit_code(counts, max_error_fraction):
    """(code, reason) from a run's summary counts."""
    rows = counts.get("rows", 0)
    errors = counts.get("by_status", {}).get("error", 0)
    fraction = errors / rows if rows else 0.0
    if fraction > max_error_fraction:
        return EXIT_TOO_MANY_ERRORS, (f"{errors} of {rows} rows are errors ({fraction:.1%} > "
                                      f"--max-error-fraction {max_error_fraction:.1%})")
    return EXIT_OK, f"{rows} rows, {errors} errors ({fraction:.1%} <= {max_error_fraction:.1%})"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    if not verbose:
        cli.quiet_tensorflow()
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR)
    try:
        result = run(argv)
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_JOB_ERROR
    try:
        counts = summary.read(result.output)
    except Exception:  # e.g. a Dataflow job launched without waiting
        print(f"Submitted; results will be written under {result.output}")
        return EXIT_OK
    print(json.dumps({k: counts[k] for k in ("run_id", "rows", "by_status", "by_error_code", "flagged",
                                              "images_per_second", "output_files")}, indent=2))
    code, reason = exit_code(counts, result.max_error_fraction)
    prefix = result.output.rstrip("/")
    print("Outputs:")
    for label, path in (("image table", f"{prefix}/images-*.parquet"), ("study table", f"{prefix}/studies-*.parquet"),
                        ("heatmaps", f"{prefix}/heatmaps/"), ("report", f"{prefix}/report.html"),
                        ("summary", f"{prefix}/_SUMMARY.json")):
        print(f"  {label:12s} {path}")
    print(f"Exit {code}: {reason}")
    return code


if __name__ == "__main__":
    sys.exit(main())

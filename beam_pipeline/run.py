"""Score brain-MRI image archives and write one Parquet row per image.

  python -m beam_pipeline.run --input 'archives/*.zip' --output out/run1
  python -m beam_pipeline.run --input 'gs://bucket/archives/*' --output gs://bucket/out/run1 \\
      --model gs://bucket/models/brain-tumor-cnn/3 --runner DataflowRunner ...

Job-level problems (missing or tampered model, no input matched, output not
writable) stop the job with a clear message before any work starts.
"""
import datetime
import json
import os
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions

from beam_pipeline import (
    archives,
    cli,
    console,
    dicomweb,
    drift,
    errors,
    finalise,
    inference,
    manifest,
    model_store,
    pseudonym,
    results_store,
    site_profile,
    storage_access,
    summary,
)
from beam_pipeline.options import ScreeningOptions
from beam_pipeline.stages.decode import ERROR_ROWS_TAG, PENDING_TAG, DecodeImages
from beam_pipeline.stages.expand import ExpandInputs
from beam_pipeline.stages.heatmaps import AddHeatmaps
from beam_pipeline.stages.score import FLAGGED_TAG, ScoreImages
from beam_pipeline.stages.tables import WriteResults
from screening_core import artifact, gradcam


class JobError(errors.ScreeningError, RuntimeError):
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
    for pattern, result in zip(patterns, FileSystems.match(list(patterns), limits), strict=True):
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


def _check_manifest_location(path, output):
    """The manifest is written after promotion: a folder that does not exist would fail every night
    after the result was promoted, and one inside the output's managed folders is replaced by the
    promotion itself (and re-read as empty)."""
    out = output.rstrip("/")
    managed = [f"{out}/{name}/" for name in (results_store.RESULTS, results_store.STAGING, results_store.PREVIOUS)]
    target = path if "://" in path else os.path.abspath(path)
    if any(target.startswith(m if "://" in m else os.path.abspath(m) + "/") for m in managed):
        raise JobError(f"--manifest {path} is inside the output's results/, _staging/ or _previous/, which each "
                       f"promotion replaces; keep it beside the output (e.g. {output.rstrip('/')}/manifest.json)")
    if "://" not in path:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise JobError(f"--manifest {path}: its folder {folder} does not exist or is not writable")


def _model_info(metadata):
    return {"model_name": metadata["name"], "model_version": str(metadata["version"]),
            "model_sha256": metadata["model_sha256"]}


def _threshold(opts, metadata):
    """(threshold, source) from --threshold, --site-profile or the artifact; a profile must match the model."""
    if opts.site_profile:
        if opts.threshold is not None:
            raise JobError("--threshold and --site-profile both set a threshold; give one")
        try:
            profile, profile_id = site_profile.load(opts.site_profile, force=opts.force_site_profile)
            site_profile.check_model(profile, metadata, opts.site_profile)
        except site_profile.ProfileError as e:
            raise JobError(str(e)) from e
        if opts.force_site_profile and (not profile["meets"] or profile.get("forced")):
            print(f"WARNING: --force-site-profile: applying {opts.site_profile}, whose validation did not meet "
                  "its checks; every row records it", file=sys.stderr)
            return float(profile["threshold"]), f"site_profile:{profile_id}:forced"
        return float(profile["threshold"]), f"site_profile:{profile_id}"
    if opts.threshold is not None:
        return opts.threshold, "flag"
    return metadata["threshold"], "artifact"


def _inference_threads(requested, options):
    """Engine threads per scoring process (ONNX Runtime; TensorFlow on CPU): `requested`, else the vCPUs
    shared out among the processes (or threads) that score at once on one machine; 0 = the engine's
    default, every core.

    With one SDK process per vCPU (Dataflow, DirectRunner multi_processing), every process
    taking every core makes threads compete with the other processes' decoding instead of
    overlapping it (bench/scoring.py)."""
    from apache_beam.options.pipeline_options import DebugOptions, DirectOptions, StandardOptions
    if requested:
        return requested
    runner = str(options.view_as(StandardOptions).runner or "DirectRunner")
    if "Dataflow" in runner:  # one SDK process per vCPU of the worker, unless told to run one process
        single = "no_use_multiple_sdk_containers" in (options.view_as(DebugOptions).experiments or [])
        return 0 if single else 1
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode in ("multi_threading", "multi_processing"):
        cores = os.cpu_count() or 1
        return max(1, cores // (direct.direct_num_workers or cores))
    return 0


def build(pipeline, opts, metadata, plan, pseudonym_key=None, accession_key=None, known_studies=None,
          threshold=None):
    """Wire the stages (beam_pipeline/stages/) into `pipeline`; returns the PCollection of the promoted
    run summary. Reads as the data flow: expand -> decode -> score -> heatmaps -> rows -> tables + finalise.

    `threshold`: the (value, source) pair run() already decided, so a site profile is read once."""
    threshold, threshold_source = threshold or _threshold(opts, metadata)
    limits = archives.Limits(max_member_bytes=opts.max_member_bytes, chunk_size=opts.chunk_size)
    expander = ExpandInputs(opts.input, limits, known_studies, credentials_file=opts.dicomweb_credentials)
    chunks = pipeline | "ExpandInputs" >> expander
    decoded = chunks | "DecodeImages" >> DecodeImages(plan.run_id, metadata["input_spec"], plan.model_info,
                                                      pseudonym_key, opts.dicomweb_max_parallel, accession_key,
                                                      keep_descriptions=opts.keep_series_descriptions,
                                                      credentials_file=opts.dicomweb_credentials,
                                                      group_pattern=opts.group_pattern)
    scored = decoded.images | "ScoreImages" >> ScoreImages(
        opts.model, threshold, opts.batch_size, opts.chunk_size, heatmaps=opts.heatmaps,
        ood_threshold=(metadata.get("ood") or {}).get("threshold"), threshold_source=threshold_source,
        engine=opts.engine, model_copies=opts.model_copies, threads=opts.inference_threads,
        lesion_map=metadata.get("head") == "lesion_map", map_level=gradcam.map_level(metadata))
    parts = [scored.rows, decoded[ERROR_ROWS_TAG]]
    heatmap_dir = f"{plan.staging}/heatmaps" if opts.heatmaps else None
    if opts.heatmaps:
        parts.append(scored[FLAGGED_TAG] | "AddHeatmaps" >> AddHeatmaps(
            opts.model, heatmap_dir, f"{results_store.results_dir(opts.output)}/heatmaps",
            lesion_map=metadata.get("head") == "lesion_map", map_level=gradcam.map_level(metadata)))
    rows = tuple(parts) | "AllRows" >> beam.Flatten()
    back = None
    if opts.write_back:
        from beam_pipeline import write_back
        back = write_back.WriteBack(next(p for p in opts.input if dicomweb.is_dicomweb(p)), plan.model_info,
                                    threshold, heatmap_dir, credentials_file=opts.dicomweb_credentials)
    fingerprints = None
    if opts.manifest and expander.study_fingerprints is not None:
        # A study with an instance that failed for a reason worth retrying stays out of the manifest.
        pending = beam.pvalue.AsList(decoded[PENDING_TAG])
        fingerprints = expander.study_fingerprints | "CompleteStudies" >> beam.Filter(
            lambda item, pending: item[0] not in set(pending), pending)
    return rows | "WriteResults" >> WriteResults(plan, opts.num_shards, back, fingerprints)


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Build and run the job; returns the PipelineResult (after it finishes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = cli.apply_config(argv)
        cli.check_flags(argv)
        options = PipelineOptions(argv)
        opts = options.view_as(ScreeningOptions)
        cli.validate(opts)
    except cli.UsageError as e:
        raise JobError(str(e)) from e
    options.view_as(SetupOptions).save_main_session = save_main_session
    if not opts.output:
        raise JobError("no --output given")
    opts.input = cli.expand_folders(cli.split_input_lists(opts.input))
    try:
        storage_access.check([*opts.input, opts.output, opts.model, opts.manifest], options)
    except storage_access.AccessError as e:
        raise JobError(str(e)) from e
    try:
        opts.model, note = model_store.resolve(opts.model)
    except artifact.ArtifactError as e:
        raise JobError(f"model: {e}") from e
    if note:
        console.emit("model", note)
    now = datetime.datetime.now(datetime.timezone.utc)
    if not opts.run_id:
        opts.run_id = now.strftime("%Y%m%dT%H%M%SZ")
    opts.output = opts.output.replace("{date}", now.strftime("%Y-%m-%d"))  # nightly schedules
    resolved = [dicomweb.resolve_dates(p, now) for p in opts.input]
    for before, after in zip(opts.input, resolved, strict=True):
        if before != after:
            console.emit("input", f"Input {after}")
    opts.input = resolved
    try:
        metadata = model_store.metadata(opts.model)
    except (artifact.ArtifactError, ValueError) as e:
        raise JobError(f"model: {e}") from e
    threshold, threshold_source = _threshold(opts, metadata)  # a bad profile stops the job here
    service_options = options.view_as(GoogleCloudOptions).dataflow_service_options or []
    try:
        opts.engine = inference.resolve_engine(opts.engine, metadata,
                                               gpu_workers=any("worker_accelerator" in o for o in service_options))
    except ValueError as e:
        raise JobError(str(e)) from e
    opts.inference_threads = _inference_threads(opts.inference_threads, options)
    grad_cam_on_tensorflow = opts.heatmaps and not inference.scores_heatmaps(metadata, opts.engine)
    if not opts.verbose and (opts.engine == "tensorflow" or grad_cam_on_tensorflow):
        cli.quiet_tensorflow()  # before the first import of TensorFlow, which prints from C++
    try:
        model_store.check_model_matches_metadata(opts.model, opts.engine)
    except (artifact.ArtifactError, ValueError) as e:
        raise JobError(f"model: {e}") from e
    if threshold_source != "artifact":
        console.emit("threshold", f"Threshold {threshold:.4f} from {threshold_source} "
                                  f"(the artifact's: {metadata['threshold']:.4f})")
    web = [p for p in opts.input if dicomweb.is_dicomweb(p)]
    dicomweb.configure(opts.dicomweb_max_parallel, opts.dicomweb_credentials)
    for uri in web:
        try:
            dicomweb.check(uri)
        except Exception as e:
            raise JobError(f"DICOMweb input {uri.partition('?')[0]} does not answer QIDO-RS: "
                           f"{type(e).__name__}: {e}") from e
    files = [p for p in opts.input if not dicomweb.is_dicomweb(p)]
    if opts.write_back and len(web) != 1:
        raise JobError("--write-back stores reports into the PACS the images came from: give exactly one "
                       f"dicomweb:// input (got {len(web)})")
    matched = _match_inputs(files, full=bool(opts.manifest)) if files else []
    _check_output_writable(opts.output)
    try:
        results_store.check_no_links(opts.output)
        results_store.check_not_inside_inputs(opts.output, files)
        results_store.claim(opts.output, opts.run_id)
    except results_store.OutputError as e:
        raise JobError(str(e)) from e
    if opts.manifest:
        _check_manifest_location(opts.manifest, opts.output)
    if opts.reading_room:
        from beam_pipeline import reidentify
        try:
            if "://" in opts.reading_room:
                raise ValueError(f"--reading-room {opts.reading_room}: a local file inside the hospital, not a URL")
            reidentify.check_outside(opts.output, opts.reading_room)
        except ValueError as e:
            raise JobError(str(e)) from e
    try:
        secret = None if opts.keep_paths and opts.keep_accession_numbers else \
            pseudonym.load_key_for(opts.output, opts.pseudonym_key_file)
    except (OSError, ValueError) as e:
        raise JobError(f"pseudonym key: {e} (or pass --keep-paths --keep-accession-numbers)") from e
    ref = pseudonym.KeyRef(opts.pseudonym_key_file, secret) if secret else None
    key = None if opts.keep_paths else ref
    accession_key = None if opts.keep_accession_numbers else ref
    try:
        known = manifest.load(opts.manifest) if opts.manifest else {}
    except manifest.ManifestError as e:
        raise JobError(str(e)) from e
    todo = manifest.new_or_changed(matched, known) if opts.manifest else matched
    if opts.manifest and files:
        console.emit("manifest", f"Manifest {opts.manifest}: {len(matched) - len(todo)} input(s) unchanged and "
                     f"skipped, {len(todo)} new or changed", unchanged=len(matched) - len(todo), todo=len(todo))
    if opts.manifest and web:
        console.emit("manifest", f"Manifest {opts.manifest}: DICOMweb studies are compared with it as they are "
                     f"found ({len(manifest.known_studies(known))} known)")
    if opts.manifest:
        opts.input = [m.path for m in todo] + web  # files: only new or changed; a PACS: studies checked in-job
    plan = finalise.Plan(
        output=opts.output, stage_id=f"{opts.run_id}-{uuid.uuid4().hex[:8]}", run_id=opts.run_id,
        started_at=time.time(), model_info=_model_info(metadata), model_uri=opts.model,
        write_report=opts.report, manifest_path=opts.manifest,
        manifest_entries={m.path: manifest.fingerprint(m) for m in todo} if opts.manifest else None,
        carry_over=bool(opts.manifest), drift_reference=drift.reference_of(metadata), engine=opts.engine)
    if not todo and not web:
        # Nothing new: earlier results at this output stay as they are.
        if summary.exists(results_store.results_dir(opts.output)):
            console.emit("nothing_new", f"Nothing new to score; the results already in {opts.output} "
                         "are left as they are")
        else:
            finalise.finalise(plan, summary.EMPTY_COUNTS)
        return _NothingToDo(opts.output, opts.max_error_fraction, opts.run_id)
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build(pipeline, opts, metadata, plan, key, accession_key, manifest.known_studies(known),
          (threshold, threshold_source))
    console.emit("start", f"Run {opts.run_id}: {len(todo) + len(web)} input(s), model {metadata['name']} "
                 f"v{metadata['version']} on {opts.engine}, output {opts.output}", run_id=opts.run_id,
                 inputs=len(todo) + len(web), engine=opts.engine)
    # Dead runs' staging (a full disk, a kill) must not block this one: cleared before any work.
    results_store.remove_stale_staging(opts.output)
    try:
        with console.Progress():
            result = pipeline.run()
            if not os.environ.get("BRAIN_SCREENING_NO_WAIT"):  # a Flex Template launcher only submits
                result.wait_until_finish()
    except BaseException:
        # A run that fails (a full disk, an interrupt) takes its own staging with it; the result stays.
        results_store.remove_tree(plan.staging)
        raise
    result.run_id = opts.run_id
    result.fail_on_drift = opts.fail_on_drift
    result.output = opts.output
    result.max_error_fraction = opts.max_error_fraction
    result.incremental = bool(opts.manifest)
    result.reading_room = (opts.reading_room, list(opts.input), opts.pseudonym_key_file, opts.dicomweb_credentials)
    return result


class _NothingToDo:
    state = "DONE"

    def __init__(self, output, max_error_fraction, run_id):
        self.output = output
        self.max_error_fraction = max_error_fraction
        self.run_id = run_id

    def wait_until_finish(self, duration=None):
        return self.state


def read_summary(output):
    """The summary of the current result at `output`."""
    return summary.read(results_store.results_dir(output))


EXIT_OK, EXIT_JOB_ERROR, EXIT_TOO_MANY_ERRORS, EXIT_DRIFT = 0, 2, 3, 4


def _write_reading_room(output, to, inputs, key_file, credentials_file):
    """--reading-room: the report with clear identifiers, outside the output; its path, or why not."""
    from beam_pipeline import reidentify
    try:
        key = pseudonym.read_key(key_file)
        reidentify.write_reading_room(output, to, reidentify.clear_values(inputs, key, credentials_file))
        return to
    except Exception as e:  # the result stands; only the extra page is missing
        console.emit("reading_room", f"reading-room report not written: {e}", level="warning")
        return f"(not written: {type(e).__name__})"


def exit_code(counts, max_error_fraction, incremental=False):
    """(code, reason) from a run's summary counts. A run that found nothing at all exits 3 (a query
    matching no study, a glob matching only empty archives), unless it is incremental: then an
    empty night means nothing new since the manifest."""
    rows = counts.get("rows", 0)
    errors = counts.get("by_status", {}).get("error", 0)
    if not rows:
        return (EXIT_OK, "nothing new since the manifest") if incremental else \
            (EXIT_TOO_MANY_ERRORS, "nothing was scored: the inputs hold no image (a DICOMweb query that matches "
                                   "no study, an empty archive)")
    if rows and not counts.get("by_status", {}).get("ok", 0):  # every member skipped or failed: no screening
        return EXIT_TOO_MANY_ERRORS, (f"no image was scored: all {rows} rows are skipped or errors "
                                      f"({', '.join(f'{k} {v}' for k, v in sorted(counts.get('by_status', {}).items()))})")
    fraction = errors / rows if rows else 0.0
    if fraction > max_error_fraction:
        return EXIT_TOO_MANY_ERRORS, (f"{errors} of {rows} rows are errors ({fraction:.1%} > "
                                      f"--max-error-fraction {max_error_fraction:.1%})")
    return EXIT_OK, f"{rows} rows, {errors} errors ({fraction:.1%} <= {max_error_fraction:.1%})"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = cli.apply_config(argv)
    except cli.UsageError as e:
        console.emit("exit", str(e), level="error", exit_code=EXIT_JOB_ERROR)
        return EXIT_JOB_ERROR
    verbose = "--verbose" in argv
    console.set_format(cli.log_format(argv))
    if not verbose:
        cli.quiet_logging()
    console.install_log_handler(verbose)
    try:
        result = run(argv)
    except errors.ScreeningError as e:  # the job's own problems: one sentence, exit 2 (a bug keeps its traceback)
        console.emit("exit", str(e), level="error", exit_code=EXIT_JOB_ERROR)
        return EXIT_JOB_ERROR
    try:
        counts = read_summary(result.output)
    except Exception:  # e.g. a Dataflow job launched without waiting
        console.emit("submitted", f"Submitted; the result will be promoted to "
                                  f"{results_store.results_dir(result.output)}", exit_code=EXIT_OK)
        return EXIT_OK
    prefix = results_store.results_dir(result.output)
    if isinstance(result, _NothingToDo):
        code, reason = EXIT_OK, "nothing new to score"
    elif finalise.last_run(result.output) == {"run_id": result.run_id, "promoted": False}:
        code, reason = EXIT_OK, "nothing new since the manifest; the result is unchanged"
    else:
        if counts["run_id"] != result.run_id:
            console.emit("superseded", f"another run ({counts['run_id']}) promoted its result after this one; "
                                       "its counts follow", level="warning")
        code, reason = exit_code(counts, result.max_error_fraction, getattr(result, "incremental", False))
        drift_info = counts.get("drift") or {}
        for warning in drift_info.get("warnings", []):
            console.emit("drift_warning", f"Note: {warning}", level="warning")
        if drift_info.get("drifted"):
            console.emit("drift", "Drift: " + "; ".join(drift_info["reasons"]), level="warning", **drift_info)
            if code == EXIT_OK and result.fail_on_drift:
                code, reason = EXIT_DRIFT, "input drifted from the model's validation data (--fail-on-drift)"
    keys = ("run_id", "rows", "by_status", "by_error_code", "flagged", "out_of_distribution", "images_per_second")
    console.emit("summary", json.dumps({k: counts.get(k) for k in keys}, indent=2), **{k: counts.get(k) for k in keys})
    outputs = {"image table": f"{prefix}/images-*.parquet", "study table": f"{prefix}/studies-*.parquet",
               "series table": f"{prefix}/series-*.parquet",
               "heatmaps": f"{prefix}/heatmaps/", "report": f"{prefix}/report.html",
               "summary": f"{prefix}/_SUMMARY.json"}
    room = getattr(result, "reading_room", (None,))
    if room[0]:
        outputs["reading room"] = _write_reading_room(result.output, *room)
    console.emit("outputs", "Outputs:\n" + "\n".join(f"  {k:12s} {v}" for k, v in outputs.items()),
                 outputs=outputs)
    console.emit("exit", f"Exit {code}: {reason}", exit_code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Score brain-MRI image archives and write one Parquet row per image.

  python -m beam_pipeline.run --input 'archives/*.zip' --output out/run1
  python -m beam_pipeline.run --input 'gs://bucket/archives/*' --output gs://bucket/out/run1 \\
      --model gs://bucket/models/brain-tumor-cnn/3 --runner DataflowRunner ...

Job-level problems (missing or tampered model, no input matched, output not
writable) stop the job with a clear message before any work starts.
"""
import sys

import apache_beam as beam

from beam_pipeline import (
    archives,
    cli,
    console,
    errors,
    finalise,
    pseudonym,
    results_store,
    summary,
)
from beam_pipeline.job import JobError, resolve  # noqa: F401  (JobError: the job's own errors)
from beam_pipeline.stages.decode import ERROR_ROWS_TAG, PENDING_TAG, DecodeImages
from beam_pipeline.stages.expand import ExpandInputs
from beam_pipeline.stages.heatmaps import AddHeatmaps
from beam_pipeline.stages.score import FLAGGED_TAG, ScoreImages
from beam_pipeline.stages.tables import WriteResults
from screening_core import gradcam


def build(pipeline, job):
    """Wire the stages (beam_pipeline/stages/) into `pipeline` for `job`; returns the PCollection of the
    promoted run summary. Reads as the data flow: expand -> decode -> score -> heatmaps -> rows -> tables
    + finalise."""
    f, plan, metadata = job.flags, job.plan, job.metadata
    limits = archives.Limits(max_member_bytes=f.max_member_bytes, chunk_size=f.chunk_size)
    expander = ExpandInputs(list(job.inputs), limits, job.known_studies, credentials_file=f.dicomweb_credentials)
    chunks = pipeline | "ExpandInputs" >> expander
    decoded = chunks | "DecodeImages" >> DecodeImages(plan.run_id, metadata["input_spec"], plan.model_info,
                                                      job.pseudonym_key, f.dicomweb_max_parallel, job.accession_key,
                                                      keep_descriptions=f.keep_series_descriptions,
                                                      credentials_file=f.dicomweb_credentials,
                                                      group_pattern=f.group_pattern)
    scored = decoded.images | "ScoreImages" >> ScoreImages(
        job.model, job.threshold, f.batch_size, f.chunk_size, heatmaps=f.heatmaps,
        ood_threshold=(metadata.get("ood") or {}).get("threshold"), threshold_source=job.threshold_source,
        engine=job.engine, model_copies=f.model_copies, threads=job.inference_threads,
        lesion_map=job.lesion_map, map_level=gradcam.map_level(metadata))
    parts = [scored.rows, decoded[ERROR_ROWS_TAG]]
    heatmap_dir = f"{plan.staging}/heatmaps" if f.heatmaps else None
    if f.heatmaps:
        parts.append(scored[FLAGGED_TAG] | "AddHeatmaps" >> AddHeatmaps(
            job.model, heatmap_dir, f"{results_store.results_dir(job.output)}/heatmaps",
            lesion_map=job.lesion_map, map_level=gradcam.map_level(metadata)))
    rows = tuple(parts) | "AllRows" >> beam.Flatten()
    back = None
    if f.write_back:
        from beam_pipeline import write_back
        back = write_back.WriteBack(job.web_inputs[0], plan.model_info, job.threshold, heatmap_dir,
                                    credentials_file=f.dicomweb_credentials)
    fingerprints = None
    if f.manifest and expander.study_fingerprints is not None:
        # A study with an instance that failed for a reason worth retrying stays out of the manifest.
        pending = beam.pvalue.AsList(decoded[PENDING_TAG])
        fingerprints = expander.study_fingerprints | "CompleteStudies" >> beam.Filter(
            lambda item, pending: item[0] not in set(pending), pending)
    return rows | "WriteResults" >> WriteResults(plan, f.num_shards, back, fingerprints)


def run(argv=None, save_main_session=True, test_pipeline=None):
    """Resolve the job, build and run it; returns the runner's PipelineResult (after it finishes, unless
    the job does not wait) with the Job as `screening_job` (`job` is DataflowRunner's own)."""
    job = resolve(list(sys.argv[1:] if argv is None else argv), save_main_session)
    if job.nothing_to_do:
        # Nothing new: earlier results at this output stay as they are.
        if summary.exists(results_store.results_dir(job.output)):
            console.emit("nothing_new", f"Nothing new to score; the results already in {job.output} "
                         "are left as they are")
        else:
            finalise.finalise(job.plan, summary.EMPTY_COUNTS)
        return _NothingToDo(job)
    pipeline = test_pipeline or beam.Pipeline(options=job.options)
    build(pipeline, job)
    console.emit("start", f"Run {job.run_id}: {len(job.inputs)} input(s), model {job.metadata['name']} "
                 f"v{job.metadata['version']} on {job.engine}, output {job.output}"
                 + (f"; {job.runner_note}" if job.runner_note else ""), run_id=job.run_id,
                 inputs=len(job.inputs), engine=job.engine, runner=job.runner_note or None)
    # Dead runs' staging (a full disk, a kill) must not block this one: cleared before any work.
    results_store.remove_stale_staging(job.output)
    try:
        with console.Progress():
            result = pipeline.run()
            if job.wait:
                result.wait_until_finish()
    except BaseException:
        # A run that fails (a full disk, an interrupt) takes its own staging with it; the result stays.
        results_store.remove_tree(job.plan.staging)
        raise
    result.screening_job = job
    return result


class _NothingToDo:
    """The result of a run that had nothing to score: done, no pipeline started."""
    state = "DONE"

    def __init__(self, job):
        self.screening_job = job

    def wait_until_finish(self, duration=None):
        return self.state


def summary_line(counts):
    """The night in one sentence for the console (the JSON log carries the same counts as fields)."""
    def commonest_first(d):
        return sorted((d or {}).items(), key=lambda kv: (-kv[1], kv[0]))

    parts = [f"{n:,} {status}" for status, n in commonest_first(counts.get("by_status"))]
    line = f"Run {counts.get('run_id')}: {counts.get('rows') or 0:,} rows"
    if parts:
        line += " (" + ", ".join(parts) + ")"
    line += f"; {counts.get('flagged') or 0:,} flagged; {counts.get('out_of_distribution') or 0:,} out of distribution"
    if counts.get("images_per_second"):
        line += f"; {counts['images_per_second']:,.1f} images/s"
    top = commonest_first(counts.get("by_error_code"))
    if top:
        shown = ", ".join(f"{code} {n:,}" for code, n in top[:5])
        line += f"\nCodes: {shown}" + (f" and {len(top) - 5} more (_SUMMARY.json)" if len(top) > 5 else "")
    return line


def read_summary(output):
    """The summary of the current result at `output`."""
    return summary.read(results_store.results_dir(output))


EXIT_OK, EXIT_JOB_ERROR, EXIT_TOO_MANY_ERRORS, EXIT_DRIFT, EXIT_WRITE_BACK = 0, 2, 3, 4, 5


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
    job = result.screening_job
    counts, early_code = _runner_outcome(job, result)
    if counts is None:
        return early_code
    code, reason = _verdict(job, result, counts)
    _print_outputs(job, counts)
    console.emit("exit", f"Exit {code}: {reason}", exit_code=code)
    return code


def _runner_outcome(job, result):
    """(summary counts, None) of a job the runner finished, or (None, exit code) when there is no result
    of ours to report: a launcher that only submits, a job the runner did not finish, an unreadable summary."""
    state = str(getattr(result, "state", "DONE") or "DONE").rsplit(".", 1)[-1]
    prefix = results_store.results_dir(job.output)
    if not job.wait:  # a Flex Template launcher: the runner has the job; its result is not ours to read yet
        console.emit("submitted", f"Submitted ({state}); the result will be promoted to {prefix}", exit_code=EXIT_OK)
        return None, EXIT_OK
    if state != "DONE":
        console.emit("exit", f"the runner ended the job in state {state}; the earlier result at {prefix} is "
                             "unchanged", level="error", exit_code=EXIT_JOB_ERROR)
        return None, EXIT_JOB_ERROR
    try:
        return read_summary(job.output), None
    except Exception as e:  # finished, yet no readable summary: never reported as success
        console.emit("exit", f"the job finished but its summary {prefix}/_SUMMARY.json cannot be read "
                             f"({type(e).__name__}: {e})", level="error", exit_code=EXIT_JOB_ERROR)
        return None, EXIT_JOB_ERROR


def _verdict(job, result, counts):
    """(code, reason) of a finished night: nothing new, or its error share, then drift (unless --no-fail-on-drift)."""
    f = job.flags
    if isinstance(result, _NothingToDo):
        return EXIT_OK, "nothing new to score"
    if finalise.last_run(job.output) == {"run_id": job.run_id, "promoted": False}:
        return EXIT_OK, "nothing new since the manifest; the result is unchanged"
    if counts["run_id"] != job.run_id:
        console.emit("superseded", f"another run ({counts['run_id']}) promoted its result after this one; "
                                   "its counts follow", level="warning")
    code, reason = exit_code(counts, f.max_error_fraction, bool(f.manifest))
    back = counts.get("write_back") if f.write_back else None
    if back is not None:
        from beam_pipeline import write_back
        console.emit("write_back", write_back.in_words(back), level="warning" if write_back.troubled(back) else "info",
                     **back)
        if code == EXIT_OK and back.get("series_failed", 0):
            code, reason = EXIT_WRITE_BACK, (f"{back['series_failed']} series' reports could not be stored in the "
                                             "PACS (--write-back)")
    drift_info = counts.get("drift") or {}
    for warning in drift_info.get("warnings", []):
        console.emit("drift_warning", f"Note: {warning}", level="warning")
    if drift_info.get("drifted"):
        console.emit("drift", "Drift: " + "; ".join(drift_info["reasons"]), level="warning", **drift_info)
        if code == EXIT_OK and f.fail_on_drift:
            code, reason = EXIT_DRIFT, ("input drifted from the model's validation data: its scores are not to be "
                                         "trusted as they stand (--no-fail-on-drift to exit 0)")
    return code, reason


def _print_outputs(job, counts):
    """The night in one sentence, then every output location (only those this run wrote)."""
    f, prefix = job.flags, results_store.results_dir(job.output)
    keys = ("run_id", "rows", "by_status", "by_error_code", "flagged", "out_of_distribution", "images_per_second")
    console.emit("summary", summary_line(counts), **{k: counts.get(k) for k in keys})
    outputs = {"image table": f"{prefix}/images-*.parquet", "study table": f"{prefix}/studies-*.parquet",
               "series table": f"{prefix}/series-*.parquet"}
    if f.heatmaps:  # --no-heatmaps / --no-report write none: the list names only what is there
        outputs["heatmaps"] = f"{prefix}/heatmaps/"
    if f.report:
        outputs["report"] = f"{prefix}/report.html"
    outputs["summary"] = f"{prefix}/_SUMMARY.json"
    if f.reading_room:
        outputs["reading room"] = _write_reading_room(job.output, f.reading_room, list(job.inputs),
                                                      f.pseudonym_key_file, f.dicomweb_credentials)
    console.emit("outputs", "Outputs:\n" + "\n".join(f"  {k:12s} {v}" for k, v in outputs.items()),
                 outputs=outputs)


if __name__ == "__main__":
    sys.exit(main())

"""The job as a value: the command line resolved once, before any graph is built.

`resolve(argv)` reads the flags (and a YAML config), checks every job-level
precondition (inputs match, output writable and not a link or inside an input,
model contract, threshold source, engine, PACS answers, manifest location,
pseudonym key) and returns a frozen `Job`. Nothing downstream re-reads or
mutates the options: `run.build` wires the graph from the Job, and the launcher
decides waiting and the exit code from it and the runner's state. A problem
found here is a `JobError`: one sentence, exit 2, before any work.
"""
import dataclasses
import datetime
import os
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions

from beam_pipeline import (
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
)
from beam_pipeline.options import ScreeningOptions
from screening_core import artifact


@dataclasses.dataclass(frozen=True)
class Job:
    """What one run will do. `inputs` are the files to read (after the manifest's skip) then the PACS
    queries; `options` are Beam's own (runner, workers), passed to the Pipeline untouched."""
    options: Any
    run_id: str
    output: str
    inputs: tuple
    web_inputs: tuple
    model: str
    metadata: Mapping
    threshold: float
    threshold_source: str
    engine: str
    inference_threads: int
    plan: Any  # finalise.Plan
    pseudonym_key: Any  # pseudonym.KeyRef or None (--keep-paths)
    accession_key: Any
    known_studies: Mapping
    nothing_to_do: bool
    wait: bool  # False under a Flex Template launcher, which only submits
    flags: Any  # the validated ScreeningOptions view, read only
    runner_note: str = ""  # how a DirectRunner job runs when the user chose nothing (shown in the start line)

    @property
    def lesion_map(self):
        return self.metadata.get("head") == "lesion_map"


class JobError(errors.ScreeningError, RuntimeError):
    """A problem with the job's inputs that must stop it before it starts."""


def _match_inputs(patterns, full):
    """FileMetadata of the input files; fails if a pattern matches nothing.

    Unless `full`, one match per remote pattern is enough: the pipeline's own
    MatchAll lists the inputs, so a large bucket is not listed twice. Local
    patterns are listed whole (cheap), which also gives the input's size.
    """
    if not patterns:
        raise JobError("no --input given")
    matched, empty = {}, []
    limits = [None if full or _is_local(p) else 1 for p in patterns]
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
    """(threshold, source, looks, planes, relaxed) from --threshold, --site-profile or the artifact; a profile must
    match the model.

    `looks`, `planes`: the looks and slice planes a site profile was validated on (None without a profile, or one
    that makes no claim: written before profiles listed them, or planes from a sample without any known plane).
    `relaxed`: the validation's checks run below their defaults (brain-validate's relaxed_checks; () if none)."""
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
            return float(profile["threshold"]), f"site_profile:{profile_id}:forced", [], [], ()
        looks, planes = (profile.get(f"validated_{k}") for k in ("looks", "planes"))
        return (float(profile["threshold"]), f"site_profile:{profile_id}", None if looks is None else list(looks),
                None if planes is None else list(planes), tuple(profile.get("relaxed_checks") or ()))
    if opts.threshold is not None:
        return opts.threshold, "flag", None, None, ()
    return metadata["threshold"], "artifact", None, None, ()


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



# What a DirectRunner job runs as when the user sets neither --direct_running_mode nor --direct_num_workers.
# Measured on 2 vCPUs: on the 5,612 shared JPEGs (~100 MB; bench/scoring.py, scoring_modes*.json) in_memory
# with one worker and multi_processing with two are within the machine's noise (157 vs 164 images/s with
# v11), and in_memory starts faster; on 3,000 uncompressed 512x512 DICOM instances (1.5 GB) multi_processing
# with one worker per vCPU took 21.0 s against 25.3 s (0.90 vs 0.75 of the one-process limit), because it
# decodes on one core while the other scores. So large inputs run one worker process per vCPU.
DEFAULT_DIRECT_MODE, DEFAULT_DIRECT_WORKERS = "in_memory", 1
LARGE_INPUT_BYTES = 512 << 20


def direct_mode_for(input_bytes, cores):
    """(running mode, workers) for a DirectRunner job the user left to us."""
    if cores >= 2 and input_bytes >= LARGE_INPUT_BYTES:
        return "multi_processing", cores
    return DEFAULT_DIRECT_MODE, DEFAULT_DIRECT_WORKERS


def _is_local(pattern):
    return "://" not in pattern or pattern.startswith("file://")


def _input_bytes(matched):
    """Bytes of the matched file inputs: all of a local input, a lower bound for a remote one (one match
    per pattern: a large bucket is listed once, by the pipeline)."""
    return sum(m.size_in_bytes for m in matched)


def _direct_defaults(argv, options, input_bytes):
    """Fill in the DirectRunner flags the user left out with the measured best mode, and say so."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    runner = options.view_as(StandardOptions).runner
    if runner not in (None, "DirectRunner", "SwitchingDirectRunner"):
        return None
    if any(a.split("=", 1)[0] in ("--direct_running_mode", "--direct_num_workers") for a in argv):
        return None
    direct = options.view_as(DirectOptions)
    mode, workers = direct_mode_for(input_bytes, os.cpu_count() or 1)
    direct.direct_running_mode, direct.direct_num_workers = mode, workers
    return (f"DirectRunner {mode}, {workers} worker{'s' if workers > 1 else ''} (the measured default for "
            f"{input_bytes / 2**20:,.0f} MiB of input on {os.cpu_count() or 1} vCPUs; "
            "--direct_running_mode/--direct_num_workers to change)")


def resolve(argv, save_main_session=True):
    """The Job for `argv`, or JobError with the reason."""
    argv = list(argv)
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
    inputs = cli.expand_folders(cli.split_input_lists(opts.input))
    try:
        storage_access.check([*inputs, opts.output, opts.model, opts.manifest], options)
    except storage_access.AccessError as e:
        raise JobError(str(e)) from e
    try:
        model, note = model_store.resolve(opts.model)
    except artifact.ArtifactError as e:
        raise JobError(f"model: {e}") from e
    if note:
        console.emit("model", note)
    now = datetime.datetime.now(datetime.timezone.utc)
    run_id = opts.run_id or now.strftime("%Y%m%dT%H%M%SZ")
    output = opts.output.replace("{date}", now.strftime("%Y-%m-%d"))  # nightly schedules
    resolved = [dicomweb.resolve_dates(p, now) for p in inputs]
    for before, after in zip(inputs, resolved, strict=True):
        if before != after:
            console.emit("input", f"Input {dicomweb.shown(after)}")
    try:
        metadata = model_store.metadata(model)
        member = model_store.member_allowed(metadata, opts.allow_member_model, "Score with")
    except (artifact.ArtifactError, ValueError) as e:
        raise JobError(f"model: {e}") from e
    if member:
        console.emit("member_model", f"WARNING: {member} (--allow-member-model)", level="warning")
    threshold, threshold_source, site_looks, site_planes, site_relaxed = _threshold(opts, metadata)  # a bad profile stops here
    service_options = options.view_as(GoogleCloudOptions).dataflow_service_options or []
    try:
        engine = inference.resolve_engine(opts.engine, metadata,
                                          gpu_workers=any("worker_accelerator" in o for o in service_options))
    except ValueError as e:
        raise JobError(str(e)) from e
    grad_cam_on_tensorflow = opts.heatmaps and not inference.scores_heatmaps(metadata, engine)
    if not opts.verbose and (engine == "tensorflow" or grad_cam_on_tensorflow):
        cli.quiet_tensorflow()  # before the first import of TensorFlow, which prints from C++
    try:
        model_store.check_model_matches_metadata(model, engine)
    except (artifact.ArtifactError, ValueError) as e:
        raise JobError(f"model: {e}") from e
    if threshold_source != "artifact":
        console.emit("threshold", f"Threshold {threshold:.4f} from {threshold_source} "
                                  f"(the artifact's: {metadata['threshold']:.4f})")
    web = [p for p in resolved if dicomweb.is_dicomweb(p)]
    dicomweb.configure(opts.dicomweb_max_parallel, opts.dicomweb_credentials)
    for uri in web:
        try:
            dicomweb.check(uri)
        except Exception as e:
            raise JobError(f"DICOMweb input {uri.partition('?')[0]} does not answer QIDO-RS: "
                           f"{type(e).__name__}: {e}") from e
    files = [p for p in resolved if not dicomweb.is_dicomweb(p)]
    if opts.write_back and len(web) != 1:
        raise JobError("--write-back stores reports into the PACS the images came from: give exactly one "
                       f"dicomweb:// input (got {len(web)})")
    matched = _match_inputs(files, full=bool(opts.manifest)) if files else []
    runner_note = _direct_defaults(argv, options, _input_bytes(matched)) or ""
    threads = _inference_threads(opts.inference_threads, options)
    _check_output_writable(output)
    try:
        results_store.check_no_links(output)
        results_store.check_not_inside_inputs(output, files)
        results_store.claim(output, run_id)
    except results_store.OutputError as e:
        raise JobError(str(e)) from e
    if opts.manifest:
        _check_manifest_location(opts.manifest, output)
    if opts.reading_room:
        from beam_pipeline import reidentify
        try:
            if "://" in opts.reading_room:
                raise ValueError(f"--reading-room {opts.reading_room}: a local file inside the hospital, not a URL")
            reidentify.check_outside(output, opts.reading_room)
        except ValueError as e:
            raise JobError(str(e)) from e
    try:
        secret = None if opts.keep_paths and opts.keep_accession_numbers else \
            pseudonym.load_key_for(output, opts.pseudonym_key_file)
    except (OSError, ValueError) as e:
        raise JobError(f"pseudonym key: {e} (or pass --keep-paths --keep-accession-numbers)") from e
    ref = pseudonym.KeyRef(opts.pseudonym_key_file, secret) if secret else None
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
    # files: only new or changed when a manifest is kept; a PACS: studies are checked in the job
    to_read = [m.path for m in todo] + web if opts.manifest else resolved
    plan = finalise.Plan(
        output=output, stage_id=f"{run_id}-{uuid.uuid4().hex[:8]}", run_id=run_id,
        started_at=time.time(), model_info=_model_info(metadata), model_uri=model,
        write_report=opts.report, manifest_path=opts.manifest,
        manifest_entries={m.path: manifest.fingerprint(m) for m in todo} if opts.manifest else None,
        carry_over=bool(opts.manifest), drift_reference=drift.reference_of(metadata), engine=engine,
        pacs_queries=tuple(dicomweb.shown(u) for u in web), site_looks=None if site_looks is None else tuple(site_looks),
        site_planes=None if site_planes is None else tuple(site_planes), site_relaxed=site_relaxed,
        pseudonym_key=ref)
    return Job(options=options, run_id=run_id, output=output, inputs=tuple(to_read), web_inputs=tuple(web),
               model=model, metadata=metadata, threshold=threshold, threshold_source=threshold_source,
               engine=engine, inference_threads=threads, plan=plan,
               pseudonym_key=None if opts.keep_paths else ref,
               accession_key=None if opts.keep_accession_numbers else ref,
               known_studies=manifest.known_studies(known), nothing_to_do=not todo and not web,
               wait=not os.environ.get("BRAIN_SCREENING_NO_WAIT"), flags=opts, runner_note=runner_note)

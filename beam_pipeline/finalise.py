"""The job's last stage: summary, report, promotion of the result, manifest update.

It runs inside the pipeline, after the Parquet sinks have finished (their
file lists are its side inputs), so a Dataflow or Flex Template job that
nobody waits for still updates its manifest and writes its report. The order
is what keeps results safe:

  1. everything is written into the run's staging folder (invisible to readers);
     the pseudonym key the rows were written with must still be the stored one;
  2. an incremental (--manifest) run first copies the current result's tables
     and heatmaps in, so its result holds the earlier runs' rows too;
  3. the staging folder is promoted (results_store.promote);
  4. only then is the manifest updated: a run that dies before 3 is redone
     in full by the next one.
"""
import dataclasses
import json
import posixpath
import time

import apache_beam as beam

from beam_pipeline import drift, incremental, manifest, pseudonym, report, results_store, summary

CARRIED_PREFIXES = ("images-", "series-", "studies-", "heatmaps/")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the finalisation of one run needs to know, decided before the job starts."""
    output: str
    stage_id: str
    run_id: str
    started_at: float
    model_info: dict
    model_uri: str
    write_report: bool = True
    manifest_path: str = None
    manifest_entries: dict = None  # inputs scored by this run -> fingerprint
    carry_over: bool = False
    drift_reference: dict = None  # drift.reference_of(metadata)
    engine: str = "tensorflow"
    pacs_queries: tuple = ()  # dicomweb:// inputs as searched ({yesterday}/{today} resolved, identifiers withheld)
    site_looks: tuple = None  # the looks the applied site profile validated (None: no profile, or it lists none)
    site_planes: tuple = None  # its slice planes (None: no profile, or its sample had no known plane)
    site_relaxed: tuple = ()  # the checks its validation ran below their defaults (brain-validate's relaxed_checks)
    pseudonym_key: object = None  # pseudonym.KeyRef the rows were pseudonymised with (None: real paths and numbers)

    @property
    def staging(self):
        return results_store.staging_dir(self.output, self.stage_id)

    def final_path(self, staged_path):
        """Where a file written into staging is found once the result is promoted."""
        rel = staged_path[len(self.staging) + 1:] if staged_path.startswith(self.staging + "/") \
            else posixpath.basename(staged_path)
        return f"{results_store.results_dir(self.output)}/{rel}"

    def staged_path(self, final_path):
        """The inverse of final_path: where a file of the promoted result lies in this run's staging."""
        results = results_store.results_dir(self.output)
        return f"{self.staging}/{final_path[len(results) + 1:]}" if final_path.startswith(results + "/") \
            else final_path


def finalise(plan, counts, images_files=(), study_files=(), write_back=None, series_files=(),
             study_fingerprints=()):
    """Steps 1-4 above; returns the summary that was promoted."""
    images = [plan.final_path(p) for p in images_files]
    studies = [plan.final_path(p) for p in study_files]
    series = [plan.final_path(p) for p in series_files]
    elapsed = time.time() - plan.started_at
    unstored = set()
    if write_back is not None:  # studies whose report the PACS did not take are tried again next night
        write_back = dict(write_back)
        unstored = set(write_back.pop("unstored_studies", ()))
    study_fingerprints = [(key, fp) for key, fp in study_fingerprints if key.rpartition("#study=")[2] not in unstored]
    with results_store.finalise_lock(plan.output):
        done = _already_promoted(plan)
        if done is not None:  # a retried bundle: the result is this run's already; only the manifest may lag
            _update_manifest(plan, study_fingerprints)
            return done
        published = summary.exists(results_store.results_dir(plan.output))
        if plan.pseudonym_key is not None:  # rows under a key no longer stored could never be traced back
            pseudonym.confirm_key(plan.output, plan.pseudonym_key, result_exists=published)
        if plan.carry_over and not counts.get("rows") and published:
            # Nothing new tonight (every study unchanged since the manifest): the day's result, its
            # report and drift verdict stay exactly as they are; no empty table is added.
            _update_manifest(plan, study_fingerprints)
            results_store.remove_tree(plan.staging)
            _record_last_run(plan, promoted=False)
            return summary.read(results_store.results_dir(plan.output))
        result = None
        if plan.carry_over:
            result = _carry_over(plan, counts, images, studies, series)
        run_summary = summary.build(plan.run_id, counts, plan.model_info, plan.model_uri, elapsed,
                                    images, studies, result)
        # The day's verdict is over the whole promoted result (every run of this output), so a small
        # second run cannot turn an earlier red drift banner into "not assessed"; the run's own beside it.
        run_summary["drift"] = drift.assess(run_summary["result"], plan.drift_reference)
        if len(run_summary["result"].get("run_ids", [])) > 1:
            run_summary["drift_last_run"] = drift.assess(counts, plan.drift_reference)
        run_summary["engine"] = plan.engine
        for kind, validated in (("looks", plan.site_looks), ("planes", plan.site_planes)):
            if validated is not None:  # the report marks flagged series of other looks/planes as not validated here
                run_summary[f"site_validated_{kind}"] = list(validated)
        if plan.site_relaxed:  # the report says the validation it relies on was run with lowered checks
            run_summary["site_relaxed_checks"] = list(plan.site_relaxed)
        if plan.pacs_queries:  # which night a nightly PACS config searched, read back from the result
            run_summary["pacs_queries"] = list(plan.pacs_queries)
        run_summary["stage_id"] = plan.stage_id  # lets a retry of this step see that it already promoted
        run_summary["series_files"] = sorted(series)
        run_summary["result"]["series_files"] = sorted(set(run_summary["result"].get("series_files", [])) | set(series))
        if write_back is not None:
            run_summary["write_back"] = write_back
        summary.write(plan.staging, run_summary)
        if plan.write_report:
            report.write_report(plan.staging)
        results_store.promote(plan.output, plan.staging)
        _update_manifest(plan, study_fingerprints)
    results_store.remove_stale_staging(plan.output, keep=(plan.stage_id,))
    return run_summary


LAST_RUN = "_LAST_RUN.json"  # beside results/: which run ended last, and whether it promoted a result


def _record_last_run(plan, promoted):
    from beam_pipeline import whole_file  # another run on this output may read it at any moment
    whole_file.write(f"{plan.output.rstrip('/')}/{LAST_RUN}",
                     json.dumps({"run_id": plan.run_id, "promoted": promoted}).encode())


def last_run(output):
    """The record `_record_last_run` left, or {}."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    try:
        with FileSystems.open(f"{output.rstrip('/')}/{LAST_RUN}",
                              compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return json.loads(f.read().decode())
    except Exception:
        return {}


def _already_promoted(plan):
    """The promoted summary when it is this run's own (same staging id), else None.

    Beam and Dataflow may retry any bundle, this one too. Run again, steps 1-3 would carry the
    promoted result (this run's rows included) into an empty staging folder and promote that:
    the image tables gone, run ids and counts doubled. The promoted summary names its staging id."""
    try:
        current = summary.read(results_store.results_dir(plan.output))
    except Exception:  # no result yet, or one that cannot be read: not this run's
        return None
    return current if current.get("stage_id") == plan.stage_id else None


def _update_manifest(plan, study_fingerprints):
    if plan.manifest_path:
        # Reloaded under the lock: a run that finished meanwhile keeps its entries. A dict merge, so
        # doing it twice (a retry) changes nothing.
        manifest.save(plan.manifest_path, {**manifest.load(plan.manifest_path), **plan.manifest_entries,
                                           **dict(study_fingerprints)})


def _drop_rescored(plan, carried, fresh):
    """Remove from the carried study (or series) tables the rows this run scored again, so the worklist
    lists each study once, from its newest scoring."""
    keys = set()
    for path in fresh:
        keys.update(incremental.read_table(plan.staged_path(path), columns=["study_key"]).column("study_key").to_pylist())
    if keys:
        incremental.replace_rows([f"{plan.staging}/{name}" for name in carried], keys)


def _carry_over(plan, counts, images, studies, series=()):
    """Bring the current result's rows into this run's result; returns the merged 'result' entry."""
    names = [n for n in results_store.current_files(plan.output) if n.startswith(CARRIED_PREFIXES)]
    results = results_store.results_dir(plan.output)
    try:
        previous = summary.read(results)["result"]
    except Exception:  # no current result, or one written before results carried their history
        previous = {"run_ids": [], **summary.EMPTY_COUNTS}
        names = []
    results_store.carry_over(plan.output, plan.staging, names)
    carried = {kind: [n for n in names if n.startswith(f"{kind}-")] for kind in ("images", "series", "studies")}
    superseded = []
    if carried["images"]:
        fresh_rows = incremental.read_rows([plan.staged_path(p) for p in images])
        superseded = incremental.drop_superseded(results, plan.staging, carried["images"],
                                                 {r["source_uri"] for r in fresh_rows})
        incremental.drop_orphan_heatmaps(plan.staged_path, [f"{plan.staging}/{n}" for n in carried["images"]],
                                         superseded, fresh_rows)
        incremental.complete_studies(results, plan.staging, carried, fresh_rows, superseded,
                                     {"series": [plan.staged_path(p) for p in series],
                                      "studies": [plan.staged_path(p) for p in studies]})
    # A carried series keyed like a rescored study goes too: a folder of NIfTI volumes was one series under
    # the folder's key before each volume became a series of its own, and that key is now the folder's study.
    for kind, fresh in (("studies", studies), ("series", [*series, *studies])):
        _drop_rescored(plan, carried[kind], fresh)
    merged = summary.merge_counts(summary.subtract_counts(previous, summary.count_rows(superseded)), counts)
    return {"run_ids": [*previous.get("run_ids", []), plan.run_id], **merged,
            "output_files": sorted([f"{results}/{n}" for n in carried["images"]] + list(images)),
            "study_files": sorted([f"{results}/{n}" for n in carried["studies"]] + list(studies)),
            "series_files": [f"{results}/{n}" for n in carried["series"]]}


class _FinaliseFn(beam.DoFn):
    def __init__(self, plan):
        self._plan = plan

    def process(self, counts, images_files, study_files, series_files, write_back=(), study_fingerprints=()):
        yield finalise(self._plan, counts, images_files, study_files, write_back[0] if write_back else None,
                       series_files, study_fingerprints)


class Finalise(beam.PTransform):
    """counts (one element) + the sinks' file lists (+ the PACS write-back tally) -> the promoted summary."""

    def __init__(self, plan, images_files, study_files, write_back=None, series_files=None,
                 study_fingerprints=None):
        super().__init__()
        self._plan = plan
        self._images_files = images_files
        self._study_files = study_files
        self._series_files = series_files
        self._write_back = write_back
        self._study_fingerprints = study_fingerprints

    def expand(self, counts):
        extra = {"write_back": beam.pvalue.AsList(self._write_back)} if self._write_back is not None else {}
        if self._study_fingerprints is not None:
            extra["study_fingerprints"] = beam.pvalue.AsList(self._study_fingerprints)
        return counts | "Promote" >> beam.ParDo(
            _FinaliseFn(self._plan), images_files=beam.pvalue.AsList(self._images_files),
            study_files=beam.pvalue.AsList(self._study_files),
            series_files=beam.pvalue.AsList(self._series_files), **extra)

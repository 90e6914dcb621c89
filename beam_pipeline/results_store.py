"""Where a run's outputs live, and how a finished run replaces the previous one.

    <output>/_BRAIN_SCREENING_OUTPUT    ownership marker (the job refuses folders without it)
    <output>/_staging/<run>/            a run in progress, or one that died
    <output>/_previous/<run>/           the result before the current one, kept until the next
                                        promotion so that a reader who listed it can finish reading
    <output>/results/                   the current complete result: images-*.parquet,
                                        series-*.parquet, studies-*.parquet, heatmaps/,
                                        report.html, _SUMMARY.json

Reader contract (docs/reliability.md): glob `<output>/**/images-*.parquet`
and skip every path with a component starting with `_` or `.` (Hadoop's,
Spark's and Arrow's convention for work in progress). On local disk that
sees exactly one complete result at every moment, because promotion is one
atomic directory exchange (Linux renameat2(RENAME_EXCHANGE)). GCS has no
rename: the new result's objects are copied in under run-id file names, its
`_SUMMARY.json` (which lists them) is written last as the commit point, and
then the previous run's objects are deleted; for the seconds in between a
glob sees two complete results, told apart by `run_id`. A reader that must
never see two reads the file list in `results/_SUMMARY.json`.
"""
import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import time

from apache_beam.io.filesystems import FileSystems

from beam_pipeline import errors, whole_file

OWNER_MARKER = "_BRAIN_SCREENING_OUTPUT"
RESULTS = "results"
STAGING = "_staging"
PREVIOUS = "_previous"
LOCK = "_FINALISE.lock"
STALE_STAGING_SECONDS = 24 * 3600  # a staging folder older than this belongs to a dead run


class OutputError(errors.ScreeningError, RuntimeError):
    """An output location the job must not write to."""


def _prefix(output):
    return output.rstrip("/")


def results_dir(output):
    return f"{_prefix(output)}/{RESULTS}"


def staging_dir(output, stage_id):
    return f"{_prefix(output)}/{STAGING}/{stage_id}"


def is_remote(path):
    return "://" in path


def visible(path, output):
    """True if a reader following the contract sees `path` (a file under `output`)."""
    rel = path[len(_prefix(output)):].lstrip("/")
    return not any(part.startswith(("_", ".")) for part in rel.split("/")[:-1]) and \
        not os.path.basename(path).startswith(("_", "."))


def _match_metadata(pattern):
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception:  # a missing folder matches nothing
        return []


def _match(pattern):
    return [m.path for m in _match_metadata(pattern)]


def reader_glob(output, name="images-*.parquet"):
    """The files a reader following the contract sees: `<output>/**/<name>` minus `_`/`.` paths."""
    import fnmatch
    if is_remote(output):
        paths = [p for p in _match(f"{_prefix(output)}/**") if fnmatch.fnmatch(os.path.basename(p), name)]
    else:
        import glob
        paths = glob.glob(f"{glob.escape(_prefix(output))}/**/{name}", recursive=True)
    return sorted(p for p in paths if visible(p, output))


def check_no_links(output):
    """Refuse an output whose results/, _previous/ or _staging/ (or anything in the last two) is a
    symbolic link: promotion and clean-up delete inside them, and would delete the link's target."""
    if is_remote(output):
        return
    base = _prefix(output)
    for name in (RESULTS, PREVIOUS, STAGING):
        path = os.path.join(base, name)
        inside = [os.path.join(path, n) for n in os.listdir(path)] if os.path.isdir(path) and name != RESULTS \
            else []
        for p in (path, *inside):
            if os.path.islink(p):
                raise OutputError(f"output {output}: {os.path.relpath(p, base)} is a symbolic link; the job deletes "
                                  "inside these folders and never follows a link there. Remove the link")


def check_not_inside_inputs(output, inputs):
    """Refuse an output inside a folder input (or a recursive glob's folder): the next run would score
    the job's own heatmaps."""
    if is_remote(output):
        return
    out = os.path.realpath(_prefix(output))
    for pattern in inputs:
        if is_remote(pattern) or "://" in pattern:
            continue
        root = pattern
        if any(c in pattern for c in "*?["):
            if "**" not in pattern:
                continue
            root = pattern[:min(pattern.index(c) for c in "*?[" if c in pattern)]
            root = root if root.endswith(os.sep) else os.path.dirname(root)
        elif not os.path.isdir(pattern):
            continue
        root = os.path.realpath(root or ".")
        if out == root or out.startswith(root.rstrip(os.sep) + os.sep):
            raise OutputError(f"output {output} is inside the input {pattern}: the next run would score its own "
                              "heatmaps; choose an output outside the inputs")


def claim(output, run_id):
    """Refuse a non-empty output this job did not create; mark a new one as ours.

    Promotion replaces `results/`, so pointing --output at a folder that holds
    someone else's files would delete them.
    """
    marker = f"{_prefix(output)}/{OWNER_MARKER}"
    if FileSystems.exists(marker):
        return
    present = [p for p in _match(f"{_prefix(output)}/*")  # less this job's own probe and another run's marker
               if "/_write_probe_" not in p and not whole_file.being_written(p, marker)]  # half-written (CI: two at once)
    if present and FileSystems.exists(marker):
        return  # another run of this job claimed the output between the two looks (two runs started at once)
    if present:
        raise OutputError(f"output {output} already holds {len(present)} file(s) that this job did not write "
                          f"(no {OWNER_MARKER} marker), e.g. {sorted(present)[0]}; choose a new or empty output")
    whole_file.write(marker, json.dumps({"created_by": "brain-mri-screening", "first_run_id": run_id}).encode())


def current_files(output):
    """Relative paths of every file in the current result (empty if none)."""
    base = results_dir(output) + "/"
    if not is_remote(base):
        if not os.path.isdir(base):
            return []
        return sorted(os.path.relpath(os.path.join(d, f), base) for d, _, fs in os.walk(base) for f in fs)
    return sorted(p[len(base):] for p in _match(base + "**"))


def carry_over(output, staging, names):
    """Copy files of the current result into `staging` (incremental runs keep earlier rows)."""
    src = results_dir(output) + "/"
    for name in names:
        if FileSystems.exists(f"{staging}/{name}"):  # a heatmap of the same image, drawn again
            continue
        if is_remote(staging):
            FileSystems.copy([src + name], [f"{staging}/{name}"])
        else:
            os.makedirs(os.path.dirname(f"{staging}/{name}"), exist_ok=True)
            try:
                os.link(src + name, f"{staging}/{name}")  # no copy: the old result is deleted after promotion
            except OSError:
                shutil.copy2(src + name, f"{staging}/{name}")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b):
    """Atomically swap two directories; False where the OS or filesystem cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def promote(output, staging):
    """Make `staging` the current result, in one step where the filesystem allows it."""
    target = results_dir(output)
    if is_remote(target):
        _promote_remote(staging, target)
        return
    previous_root = f"{_prefix(output)}/{PREVIOUS}"
    for name in os.listdir(previous_root) if os.path.isdir(previous_root) else []:
        shutil.rmtree(os.path.join(previous_root, name), ignore_errors=True)  # two results ago
    if not os.path.isdir(target):
        os.rename(staging, target)
        return
    os.makedirs(previous_root, exist_ok=True)
    keep = os.path.join(previous_root, os.path.basename(staging))
    if _exchange(staging, target):
        os.rename(staging, keep)  # staging now holds the previous result
    else:
        # No renameat2 (non-Linux, some network filesystems): two renames, a moment without result.
        os.rename(target, keep)
        os.rename(staging, target)


def _promote_remote(staging, target):
    new = [p[len(staging) + 1:] for p in _match(staging + "/**") if "/beam-temp-" not in p]
    old = set(p[len(target) + 1:] for p in _match(target + "/**"))
    commit = [n for n in new if n == "_SUMMARY.json"]
    data = [n for n in new if n != "_SUMMARY.json"]
    if data:
        FileSystems.copy([f"{staging}/{n}" for n in data], [f"{target}/{n}" for n in data])
    if commit:
        FileSystems.copy([f"{staging}/{n}" for n in commit], [f"{target}/{n}" for n in commit])
    stale = [f"{target}/{n}" for n in old - set(new)]
    if stale:
        FileSystems.delete(stale)
    remove_tree(staging)


def remove_tree(path):
    if is_remote(path):
        objects = _match(path + "/**")
        if objects:
            FileSystems.delete(objects)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_staging(output, keep=(), max_age=STALE_STAGING_SECONDS, now=None):
    """Delete staging folders of runs that died (older than `max_age`); a running one is younger."""
    now = time.time() if now is None else now
    root = f"{_prefix(output)}/{STAGING}"
    removed = []
    if is_remote(root):
        by_stage = {}
        for m in _match_metadata(root + "/**"):
            stage = m.path[len(root) + 1:].split("/", 1)[0]
            by_stage[stage] = max(by_stage.get(stage, 0), m.last_updated_in_seconds or 0)
        for stage, updated in by_stage.items():
            if stage not in keep and now - updated > max_age:
                remove_tree(f"{root}/{stage}")
                removed.append(stage)
        return removed
    if not os.path.isdir(root):
        return removed
    for stage in os.listdir(root):
        path = os.path.join(root, stage)
        if stage not in keep and now - os.path.getmtime(path) > max_age:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(stage)
    return removed


@contextlib.contextmanager
def finalise_lock(output):
    """Serialise the finalisation (carry-over + promotion) of runs racing on one output.

    Local: an flock on `<output>/_FINALISE.lock`, released by the kernel if the
    process dies. GCS has no lock primitive the job can rely on: there the
    last run to promote wins and each promotion is complete on its own.
    """
    if is_remote(output):
        yield
        return
    import fcntl
    with open(os.path.join(_prefix(output), LOCK), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

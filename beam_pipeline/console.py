"""What the operator sees: short lines for people, or JSON lines for log collectors.

Every message of `brain-score` goes through `emit`, so `--log-format json`
gives one JSON object per line (`ts`, `level`, `event`, `message` and the
event's fields) that Cloud Logging, Loki or Splunk can parse, and the text
mode stays quiet: notes, a progress line every few seconds, the outputs and
the exit reason.
"""
import datetime
import json
import os
import shutil
import sys
import tempfile
import threading
import time

_FORMAT = {"value": "text"}


def set_format(fmt):
    _FORMAT["value"] = fmt


def emit(event, message, level="info", **fields):
    stream = sys.stderr if level == "error" else sys.stdout
    if _FORMAT["value"] == "json":
        record = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                  "level": level, "event": event, "message": message, **fields}
        stream.write(json.dumps(record, default=str) + "\n")
    else:
        stream.write(("error: " if level == "error" else "") + message + "\n")
    stream.flush()


# Libraries whose failures on one image already become a coded row: their log records (pydicom logs a
# decoder's traceback at ERROR before raising) would repeat the row on the console, in another format.
_PER_IMAGE_LOGGERS = ("pydicom", "PIL", "libjpeg", "openjpeg", "pylibjpeg")


class _LibraryHandler:
    """Routes library log records (and Python warnings) through `emit`: one line per record in the
    console's format, first line of the message only; per-image libraries dropped unless verbose."""

    def __init__(self, verbose):
        import logging

        class Handler(logging.Handler):
            def emit(self, record):
                if not verbose and record.name.split(".")[0] in _PER_IMAGE_LOGGERS + ("py",):
                    return
                try:
                    text = record.getMessage()
                except Exception:
                    text = str(record.msg)
                if not verbose:
                    text = text.splitlines()[0] if text else ""
                elif record.exc_info:
                    text += "\n" + logging.Formatter().formatException(record.exc_info)
                level = "error" if record.levelno >= logging.ERROR else \
                    "warning" if record.levelno >= logging.WARNING else "info"
                globals()["emit"]("library_log", f"{record.name}: {text}", level=level, logger=record.name)

        self.handler = Handler()


def install_log_handler(verbose=False):
    """Library logging and warnings in the console's format (`--log-format json`: every line parses)."""
    import logging
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_LibraryHandler(verbose).handler)
    root.setLevel(logging.INFO if verbose else logging.ERROR)
    logging.captureWarnings(True)


# "<launcher pid>:<folder>" while a progress line runs: worker processes the launcher starts (DirectRunner
# multi_processing) inherit it and leave their counts there. Dataflow workers never see it; their progress
# is on the job page and in the Beam metrics.
_SHARED_ENV = "BRAIN_SCREENING_PROGRESS"
_SHARE_EVERY_S = 1.0


class _Counts:
    """Progress counters of the DoFns running in this process; a worker process of the launcher also
    writes its counts, at most once a second, where the launcher's progress line adds them up."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = {}
        self._shared_at = 0.0

    def add(self, **deltas):
        with self._lock:
            for k, v in deltas.items():
                self._counts[k] = self._counts.get(k, 0) + v
            self._share()

    def _share(self):
        owner, _, folder = os.environ.get(_SHARED_ENV, "").partition(":")
        if not folder or owner == str(os.getpid()) or time.monotonic() - self._shared_at < _SHARE_EVERY_S:
            return
        self._shared_at = time.monotonic()
        path = os.path.join(folder, f"{os.getpid()}.json")
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(self._counts, f)
            os.replace(path + ".tmp", path)
        except OSError:  # the launcher has finished and removed the folder: nobody is reading
            pass

    def shared(self):
        """The counts worker processes left for this launcher, summed."""
        owner, _, folder = os.environ.get(_SHARED_ENV, "").partition(":")
        total = {}
        if folder and owner == str(os.getpid()):
            for name in (n for n in _listdir(folder) if n.endswith(".json")):
                try:
                    with open(os.path.join(folder, name)) as f:
                        for k, v in json.load(f).items():
                            total[k] = total.get(k, 0) + v
                except (OSError, ValueError):  # replaced or half-written as we read: next time
                    continue
        return total

    def snapshot(self):
        with self._lock:
            return dict(self._counts)

    def reset(self):
        with self._lock:
            self._counts.clear()


def _listdir(folder):
    try:
        return os.listdir(folder)
    except OSError:
        return []


COUNTS = _Counts()


class _Studies:
    """How far each PACS study is: instances listed and instances retrieved (read or failed), in this
    process. A 100,000-instance study runs for an hour and writes nothing until the end; the progress
    line says how far it is. Studies are shown by the order they were listed in ("study #3"), never
    by a UID: the console is not a place for identifiers."""

    def __init__(self):
        self._lock = threading.Lock()
        self._order, self._total, self._done = {}, {}, {}

    def listed(self, study, n):
        with self._lock:
            self._order.setdefault(study, len(self._order) + 1)
            self._total[study] = self._total.get(study, 0) + n

    def retrieved(self, study, n=1):
        with self._lock:
            self._done[study] = self._done.get(study, 0) + n

    def snapshot(self):
        """(studies listed, studies fully retrieved, (number, retrieved, total) of the largest study
        under way or None)."""
        with self._lock:
            done = {s: min(self._done.get(s, 0), t) for s, t in self._total.items()}
            complete = sum(done[s] >= t for s, t in self._total.items())
            going = [(t, s) for s, t in self._total.items() if 0 < done[s] < t]
            if not going:
                return len(self._total), complete, None
            t, s = max(going, key=lambda ts: (ts[0], -self._order[ts[1]]))
            return len(self._total), complete, (self._order[s], done[s], t)

    def reset(self):
        with self._lock:
            self._order.clear()
            self._total.clear()
            self._done.clear()


STUDIES = _Studies()


class Progress:
    """A line every `interval` seconds while the job runs: members listed, images scored, errors, rate."""

    def __init__(self, interval=None):
        self._interval = interval or (5.0 if sys.stdout.isatty() else 30.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._started = time.time()

    def __enter__(self):
        COUNTS.reset()
        STUDIES.reset()
        self._shared = tempfile.mkdtemp(prefix="brain-score-progress-")
        os.environ[_SHARED_ENV] = f"{os.getpid()}:{self._shared}"
        self._started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=1)
        os.environ.pop(_SHARED_ENV, None)
        shutil.rmtree(self._shared, ignore_errors=True)

    def line(self):
        c = COUNTS.snapshot()
        for k, v in COUNTS.shared().items():  # workers in other processes (DirectRunner multi_processing)
            c[k] = c.get(k, 0) + v
        elapsed = time.time() - self._started
        scored = c.get("scored", 0)
        fields = {"elapsed_s": round(elapsed, 1), "members_listed": c.get("listed", 0), "images_scored": scored,
                  "errors": c.get("errors", 0), "images_per_second": round(scored / max(elapsed, 1e-9), 1)}
        text = (f"[{elapsed:6.0f}s] {fields['members_listed']:,} members listed, {scored:,} images scored, "
                f"{fields['errors']:,} errors, {fields['images_per_second']:.0f} images/s")
        n_studies, complete, largest = STUDIES.snapshot()
        if n_studies:
            fields.update(studies_listed=n_studies, studies_retrieved=complete)
            text += f"; {complete:,} of {n_studies:,} studies retrieved"
            if largest:
                number, got, total = largest
                fields["largest_study_under_way"] = {"number": number, "instances_retrieved": got,
                                                     "instances": total}
                text += f"; study #{number}: {got:,} of {total:,} instances ({100 * got / total:.0f} %)"
        return text, fields

    def _loop(self):
        while not self._stop.wait(self._interval):
            text, fields = self.line()
            emit("progress", text, **fields)

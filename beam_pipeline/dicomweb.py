"""DICOMweb as an input: search a PACS with QIDO-RS, fetch instances with WADO-RS.

  --input 'dicomweb://pacs.hospital:8042/dicom-web?StudyDate=20261101-20261126&Modality=MR'
  --input 'dicomwebs://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb'

`dicomweb://` is plain HTTP, `dicomwebs://` HTTPS; the query string holds
QIDO-RS study-level filters (`Modality` means ModalitiesInStudy). For the
Google Cloud Healthcare API the same code runs with an authorised session
(application-default credentials). Every instance becomes a member reference
and goes through the same decode path as an archive member, so each one gets
exactly one row (or one per frame), and a failed retrieval is a coded row.

A PACS must never be flooded: each worker process holds at most
`--dicomweb-max-parallel` retrievals at a time (a semaphore shared by its
threads), searches are paginated, and transient HTTP errors (408, 429, 503,
504) are retried with exponential back-off by dicomweb-client.
"""
import contextlib
import os
import threading
import time
import urllib.parse

from beam_pipeline import errors

SCHEMES = ("dicomweb://", "dicomwebs://")
PAGE = 500
DEFAULT_MAX_PARALLEL = 4
_STUDY_FILTER_ALIASES = {"Modality": "ModalitiesInStudy"}
# QIDO-RS study-level matching keys (PS3.18 Table 10.6.1-5, plus common attributes servers match on);
# a misspelt key ("StudyDat=") would otherwise be ignored by the server, which then returns every study.
STUDY_FILTER_KEYS = {"StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "Modality",
                     "ReferringPhysicianName", "PatientName", "PatientID", "StudyInstanceUID", "StudyID",
                     "StudyDescription", "InstitutionName", "IssuerOfPatientID", "limit", "offset", "fuzzymatching"}


def resolve_dates(uri, now):
    """`{today}` / `{yesterday}` in a dicomweb:// query -> DICOM dates (YYYYMMDD) of `now`, so one
    nightly config moves its StudyDate window: `?StudyDate={yesterday}-{today}`."""
    if not is_dicomweb(uri):
        return uri
    import datetime
    yesterday = now - datetime.timedelta(days=1)
    return uri.replace("{today}", now.strftime("%Y%m%d")).replace("{yesterday}", yesterday.strftime("%Y%m%d"))


def check_filters(uri):
    """Raise ValueError for a query key QIDO-RS study search does not know (see STUDY_FILTER_KEYS)."""
    query = uri.split("://", 1)[1].partition("?")[2]
    unknown = sorted({k for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)} - STUDY_FILTER_KEYS)
    if unknown:
        raise ValueError(f"unknown DICOMweb study filter(s) {unknown}: a server ignores a key it does not know and "
                         f"returns every study; known: {sorted(STUDY_FILTER_KEYS - {'limit', 'offset'})}")

# Filters whose values identify a patient (or an exam that leads to one): a search may use them, no output shows them.
IDENTIFYING_FILTER_KEYS = {"PatientName", "PatientID", "IssuerOfPatientID", "AccessionNumber", "StudyID",
                           "ReferringPhysicianName"}
WITHHELD = "(withheld)"


def shown(uri):
    """`uri` as consoles, summaries and reports show it: the value of every identifying filter
    (IDENTIFYING_FILTER_KEYS) replaced by WITHHELD, everything else as written."""
    if not is_dicomweb(uri) or "?" not in uri:
        return uri
    head, _, query = uri.partition("?")
    pieces = []
    for piece in query.split("&"):
        key, sep, _ = piece.partition("=")
        pieces.append(f"{key}={WITHHELD}" if sep and urllib.parse.unquote_plus(key) in IDENTIFYING_FILTER_KEYS
                      else piece)
    return f"{head}?{'&'.join(pieces)}"


_state = {"max_parallel": DEFAULT_MAX_PARALLEL, "semaphore": None, "clients": {}, "sessions": {},
          "credentials_file": None}


class CredentialsError(errors.ScreeningError, ValueError):
    """A credentials file that is missing, unreadable, readable by others, or not in a known form."""


def has_userinfo(uri):
    """True for dicomweb://user[:password]@host...: such a URI would print the secret wherever it is shown."""
    return is_dicomweb(uri) and "@" in uri.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]


USERINFO_REFUSED = ("a dicomweb:// input holds credentials (user:password@host): they would be printed in logs "
                    "and written into every row; put them in a file (mode 600) and pass --dicomweb-credentials FILE")


def read_credentials(path):
    """('basic', (user, password)) or ('bearer', token) from a file only its owner can read.

    One line: `user:password`, or `Bearer <token>`. The secret never goes into a URI, a row, the
    manifest or a log: only this file's path travels with the job."""
    import stat
    try:
        st = os.stat(path)
        with open(path) as f:
            text = f.read().strip()
    except OSError as e:
        raise CredentialsError(f"--dicomweb-credentials {path}: cannot read it ({type(e).__name__})") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(f"--dicomweb-credentials {path} is readable by others (mode "
                               f"{stat.S_IMODE(st.st_mode):o}): chmod 600 it")
    if text.lower().startswith("bearer ") and len(text.split()) == 2:
        return "bearer", text.split()[1]
    user, sep, password = text.partition(":")
    if not sep or not user or "\n" in text:
        raise CredentialsError(f"--dicomweb-credentials {path}: expected one line 'user:password' or "
                               "'Bearer <token>'")
    return "basic", (user, password)
_lock = threading.Lock()


def is_dicomweb(uri):
    return uri.startswith(SCHEMES)


def parse(uri):
    """(base URL, QIDO study filters) of a dicomweb:// input."""
    scheme = "https" if uri.startswith("dicomwebs://") else "http"
    netloc_path, _, query = uri.split("://", 1)[1].partition("?")
    base = f"{scheme}://{netloc_path.rstrip('/')}"
    filters = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=False):
        filters[_STUDY_FILTER_ALIASES.get(key, key)] = value
    return base, filters


def configure(max_parallel, credentials_file=None):
    """Per process: the retrieval limit, and the credentials file clients are made with."""
    with _lock:
        if credentials_file != _state["credentials_file"]:
            _state["credentials_file"] = credentials_file
            _state["clients"].clear()
            _state["sessions"].clear()
        if _state["semaphore"] is None or _state["max_parallel"] != max_parallel:
            _state["max_parallel"] = max_parallel
            _state["semaphore"] = threading.BoundedSemaphore(max_parallel)


def _semaphore():
    with _lock:
        if _state["semaphore"] is None:
            _state["semaphore"] = threading.BoundedSemaphore(_state["max_parallel"])
        return _state["semaphore"]


def client(base):
    """One dicomweb-client per base URL and process (its requests session is reused)."""
    with _lock:
        if base not in _state["clients"]:
            import requests
            from dicomweb_client.api import DICOMwebClient
            if "healthcare.googleapis.com" in base:
                import google.auth
                from google.auth.transport.requests import AuthorizedSession
                credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
                session = AuthorizedSession(credentials)
            else:
                session = requests.Session()
                if _state["credentials_file"]:
                    session.auth = _FileAuth(_state["credentials_file"])
            # A redirect is refused, not followed: data from another host would be trusted as this PACS's,
            # and a credential could follow it there. A response hook runs before requests looks at a
            # redirect (max_redirects = 0 alone also fails requests that ask not to follow one).
            session.hooks["response"].extend([_refuse_redirect, _bounded_body])
            c = DICOMwebClient(base, session=session, timeout=(10, 120))
            c.set_http_retry_params(retry=True, max_attempts=4, wait_exponential_multiplier=500)
            _state["clients"][base] = c
            _state["sessions"][base] = session
        return _state["clients"][base]


class _FileAuth:
    """The credentials file's login on every request (a requests auth callable), read again when the PACS
    answers 401.

    A token lives an hour at many sites, and a night can take longer: a refresher (a sidecar, a cron job)
    rewrites the file, and a 401 makes this read it again and resend the request once with what it now
    holds, as requests' own digest authentication resends. What was refused is not sent again."""

    def __init__(self, path):
        self._path = path
        self._login = read_credentials(path)
        self._lock = threading.Lock()

    @staticmethod
    def _header(login):
        import requests
        kind, secret = login
        return requests.auth._basic_auth_str(*secret) if kind == "basic" else f"Bearer {secret}"

    def __call__(self, request):
        request.headers["Authorization"] = self._header(self._login)
        request.register_hook("response", self._on_401)
        return request

    def _on_401(self, response, **kwargs):
        if response.status_code != 401 or getattr(response.request, "renewed_login", False):
            return response
        with self._lock:
            self._login = read_credentials(self._path)
            header = self._header(self._login)
        if response.request.headers.get("Authorization") == header:
            return response  # the file holds what was refused: nothing new to try
        response.close()  # unread: a 401's body may dribble in for ever (its connection is dropped, not reused)
        again = response.request.copy()
        again.headers["Authorization"] = header
        again.renewed_login = True
        renewed = response.connection.send(again, **kwargs)
        renewed.history.append(response)
        renewed.request = again
        return renewed


def session(base):
    """The requests session of `base`'s client (credentials, no redirects): for requests the client lacks."""
    client(base)
    return _state["sessions"][base]


def value(item, tag):
    v = item.get(tag, {}).get("Value")
    return str(v[0]) if v else None


STUDY_UID, SERIES_UID, SOP_UID, MODALITY, SERIES_DESCRIPTION = "0020000D", "0020000E", "00080018", "00080060", \
    "0008103E"
# Series that are not images to screen: reports, key objects, presentation states, segmentations, ...
NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "SEG", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC", "AU", "ECG"}
# Our own write-back (--write-back) must never be screened again: its overlays are images too, and a
# rerun over the same studies would score them and write reports about its own reports.
OWN_SERIES_PREFIX = "Grad-CAM overlay (brain-mri-screening"


QIDO_MAX_BYTES = 64 << 20  # one QIDO-RS page of JSON (500 studies take well under 1 MB)
QIDO_DEADLINE_S = 120.0  # one QIDO-RS request, start to end
MAX_PAGES = 2000  # 1,000,000 results of one search: past this the server is not paging


def qido(base, path, params, what="QIDO-RS answer"):
    """The JSON answer of one QIDO-RS request (or another DICOM JSON answer: WADO-RS metadata), bounded
    like an instance retrieval: streamed against a size cap and a total deadline, content encoding
    refused, transient errors retried."""
    import json
    http = session(base)
    url = f"{base}/{path}?{urllib.parse.urlencode(params, doseq=True)}" if params else f"{base}/{path}"
    headers = {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}
    status, _, body = _get(http, url, headers, QIDO_MAX_BYTES, QIDO_DEADLINE_S, what)
    if status == 204 or (status < 300 and not body.strip()):
        return []
    if status >= 400:
        raise RetrieveError("input_unreadable", f"HTTP {status} for the {what}",
                            transient=status in _TRANSIENT)
    try:
        answer = json.loads(body)
    except ValueError as e:
        raise RetrieveError("input_unreadable", f"{what} is not JSON") from e
    if not isinstance(answer, list) or not all(isinstance(item, dict) for item in answer):
        raise RetrieveError("input_unreadable", f"{what} is not a list of datasets")
    return answer


def paged(base, path, params):
    """Every result of a QIDO-RS search, page by page. Stops, with an error, on a server that does
    not page (the same page again: it ignores `offset`) or past MAX_PAGES."""
    offset, previous = 0, None
    for _ in range(MAX_PAGES):
        page = qido(base, path, {**params, "limit": PAGE, "offset": offset})
        if page and page == previous:
            raise RetrieveError("input_unreadable", f"QIDO-RS returned the same page for offset {offset} as for "
                                f"{offset - PAGE}: the server ignores the offset parameter; search narrower (e.g. StudyDate)")
        yield from page
        if len(page) < PAGE:
            return
        previous, offset = page, offset + PAGE
    raise RetrieveError("input_unreadable", f"QIDO-RS search still paging after {MAX_PAGES * PAGE} results; "
                        "search narrower (e.g. StudyDate)")


def search_studies(uri):
    """Study Instance UID of every study matching the input's filters, every page, each once."""
    base, filters = parse(uri)
    seen = set()
    for item in paged(base, "studies", {**filters, "includefield": [STUDY_UID]}):
        uid = value(item, STUDY_UID)
        if uid and uid not in seen:
            seen.add(uid)
            yield uid


def manifest_key(uri, study):
    """The manifest entry of one study of a DICOMweb input (server root + Study Instance UID)."""
    return f"{uri.partition('?')[0].rstrip('/')}#study={study}"


def instances(uri, study):
    """(series UID, SOP Instance UID) of every image instance of one study (see NON_IMAGE_MODALITIES),
    and the number of series the server listed (0: it knows no series of this study)."""
    base, _ = parse(uri)
    listed = paged(base, f"studies/{study}/series",
                    {"includefield": [SERIES_UID, MODALITY, SERIES_DESCRIPTION]})
    series_list = [s for s in listed if value(s, SERIES_UID)]
    found = []
    for series in series_list:
        if value(series, MODALITY) in NON_IMAGE_MODALITIES or \
                (value(series, SERIES_DESCRIPTION) or "").startswith(OWN_SERIES_PREFIX):
            continue
        series_uid = value(series, SERIES_UID)
        for inst in paged(base, f"studies/{study}/series/{series_uid}/instances", {"includefield": SOP_UID}):
            sop = value(inst, SOP_UID)
            if sop:
                found.append((series_uid, sop))
    return sorted(set(found)), len(series_list)


def fingerprint(refs):
    """What --manifest remembers of a study: its image instances' UIDs (hashed), so a replaced
    instance rescores and the job's own SR and overlay series (not image series) change nothing."""
    import hashlib
    digest = hashlib.sha256("\n".join(f"{se}/{sop}" for se, sop in sorted(refs)).encode()).hexdigest()
    return {"series": len({se for se, _ in refs}), "instances": len(refs), "uids_sha256": digest}


def manifest_key_of_source(source_uri):
    """The manifest key of the study a row's (unpseudonymised) source URI names, or None."""
    root, sep, study = source_uri.rpartition("/studies/")
    return manifest_key(root, study) if sep and "/" not in study else None


def check(uri):
    """Fail before the job starts when the server does not answer QIDO-RS."""
    base, filters = parse(uri)
    qido(base, "studies", {**filters, "limit": 1, "includefield": STUDY_UID})


RETRIEVE_DEADLINE_S = 120.0  # one instance, start to end, however the server paces its bytes
_READ_TIMEOUT_S = 30.0  # the longest a single socket read may wait
_TRANSIENT = {408, 429, 500, 502, 503, 504}
_ATTEMPTS = 3


class RedirectRefused(errors.ScreeningError, ConnectionError):
    """The PACS answered with a redirect; following it would trust another host's data as the PACS's."""


ANSWER_DEADLINE_S = 120.0  # a whole answer read through dicomweb-client (a store's, a listing's), once it started


def _bounded_body(resp, *args, stream=False, **kwargs):
    """Read an answer that dicomweb-client reads whole (not streamed) against a total deadline.

    Why: its requests have a per-read timeout only, so a PACS or proxy that dribbles a store's answer a byte
    every minute holds the night for ever; retrievals stream against their own deadlines (`_stream`). A
    timeout here is an unanswered request to the breaker, like any other."""
    if stream:
        return resp
    import requests
    deadline, chunks = time.monotonic() + ANSWER_DEADLINE_S, []
    while chunk := resp.raw.read1(1 << 16, decode_content=True):  # what has arrived, not a full 64 KiB
        chunks.append(chunk)
        if time.monotonic() > deadline:
            resp.close()
            raise requests.exceptions.ReadTimeout(f"the PACS's answer to {resp.request.method} did not arrive within "
                                                  f"{ANSWER_DEADLINE_S:g} s")
    resp._content = b"".join(chunks)
    return resp


def _refuse_redirect(resp, *args, **kwargs):
    if resp.is_redirect:
        resp.close()
        raise RedirectRefused(f"the PACS answered HTTP {resp.status_code} with a redirect; redirects are refused "
                              "(another host's data would be trusted as this PACS's, and credentials could follow)")


class RetrieveError(errors.ScreeningError, ValueError):
    """A DICOMweb answer that could not be had within the limits; `code` is the row's error code.

    `transient`: worth trying again next night (timeouts, 5xx, connection failures); a study with
    such a row is not recorded in --manifest."""

    def __init__(self, code, message, transient=False):
        super().__init__(message)
        self.code = code
        self.transient = transient


def retrieve(base, study, series, sop, max_bytes, deadline_s=None):
    """The instance's Part 10 bytes exactly as the server sends them (WADO-RS), within this process's
    concurrency limit.

    Streamed: refused as soon as it passes `max_bytes` (never held whole, never parsed and written
    again) or `deadline_s` (a server that dribbles a byte every few seconds cannot hold the job), and
    a content-encoded body is refused rather than inflated. Transient HTTP errors are retried."""
    deadline_s = RETRIEVE_DEADLINE_S if deadline_s is None else deadline_s
    http = session(base)
    url = f"{base}/studies/{study}/series/{series}/instances/{sop}"
    headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
               "Accept-Encoding": "identity"}
    status, content_type, body = _get(http, url, headers, max_bytes, deadline_s, "instance", _semaphore)
    if status >= 400:
        raise RetrieveError("member_read_error", f"WADO-RS answered HTTP {status}", transient=status in _TRANSIENT)
    return _first_part(body, content_type)


SERIES_SECONDS_PER_INSTANCE = 2.0  # a series answer's deadline: RETRIEVE_DEADLINE_S + this per instance
_FRAMING = 64 * 1024  # multipart headers and delimiters around one instance


def retrieve_series(base, study, series, wanted, max_bytes):
    """Yield (SOP Instance UID, Part 10 bytes) for the instances of one series, from one WADO-RS
    series request: bench/dicomweb_series_probe.py measured 4-6x the per-instance rate on Orthanc, at
    a sixth of its CPU.

    Streamed part by part (one part in memory at a time), each part held to `max_bytes` and the whole
    answer to a deadline of RETRIEVE_DEADLINE_S + SERIES_SECONDS_PER_INSTANCE per wanted instance and to
    twice as many parts as `wanted` holds (plus 8); it ends as soon as every wanted instance is in.
    Parts whose SOP Instance UID is not in `wanted` (an instance stored after the listing), or whose
    header cannot be read, are skipped. Raises RetrieveError when the answer
    cannot be had within the limits or is not a multipart answer; the caller fetches whatever it did not
    get one instance at a time, so every instance still ends in a row."""
    deadline = time.monotonic() + RETRIEVE_DEADLINE_S + SERIES_SECONDS_PER_INSTANCE * len(wanted)
    url = f"{base}/studies/{study}/series/{series}"
    headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
               "Accept-Encoding": "identity"}
    with _semaphore():
        try:
            with BREAKER.watch(url):
                resp = session(base).get(url, headers=headers, stream=True, timeout=(10, _READ_TIMEOUT_S),
                                         allow_redirects=False)
        except RedirectRefused as e:
            raise RetrieveError("member_read_error", "the server redirected the series request; redirects are "
                                "refused") from e
        except RetrieveError:
            raise  # the breaker is open: not requested
        except Exception as e:
            raise RetrieveError("member_read_error", f"series request failed: {type(e).__name__}") from e
        with resp:
            if resp.status_code >= 300:
                raise RetrieveError("member_read_error", f"series retrieval answered HTTP {resp.status_code}")
            if resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
                raise RetrieveError("member_read_error", "the server sent a content-encoded series; refused")
            boundary = _boundary(resp.headers.get("Content-Type", ""))
            yield from _parts(resp, boundary, wanted, max_bytes + _FRAMING, deadline)


def _boundary(content_type):
    """The boundary of a multipart answer's Content-Type, as bytes."""
    if not content_type.lower().startswith("multipart/"):
        raise RetrieveError("member_read_error", "series answer is not multipart")
    for param in content_type.split(";")[1:]:
        key, _, value_ = param.strip().partition("=")
        if key.lower() == "boundary" and value_.strip().strip('"'):
            return value_.strip().strip('"').encode()
    raise RetrieveError("member_read_error", "multipart answer without a boundary")


def _parts(resp, boundary, wanted, part_limit, deadline):
    """(SOP Instance UID, bytes) of each wanted part of a streamed multipart/related body.

    `buf` holds the unread rest of the answer from the current part's delimiter on; the search for the
    next delimiter resumes where the last one stopped, so a large part costs one pass."""
    delimiter = b"\r\n--" + boundary
    buf = bytearray(b"\r\n")  # the first delimiter has no CRLF before it
    aligned, scan, parts, delivered = False, 0, 0, set()
    while True:
        if not aligned and (first := buf.find(delimiter)) >= 0:
            del buf[:first]  # a preamble before the first part is ignored
            aligned = True
        if aligned:
            if buf.startswith(delimiter + b"--"):
                return  # the closing delimiter
            head_end = buf.find(b"\r\n\r\n", len(delimiter))
            if head_end >= 0:
                end = buf.find(delimiter, max(head_end + 4, scan))
                if end >= 0:
                    body = bytes(buf[head_end + 4:end])
                    del buf[:end]
                    scan, parts = 0, parts + 1
                    sop = _sop_of(body)
                    if sop in wanted and sop not in delivered:
                        delivered.add(sop)
                        yield sop, body
                    if len(delivered) == len(wanted) or parts >= 2 * len(wanted) + 8:
                        return  # all there; or a server that keeps sending parts nobody listed
                    continue
                scan = max(head_end + 4, len(buf) - len(delimiter))
        if len(buf) > part_limit:
            raise RetrieveError("member_too_large", "a part of the series answer is larger than the limit")
        if time.monotonic() > deadline:
            raise RetrieveError("dicomweb_timeout", "series answer not received within its deadline")
        try:
            piece = resp.raw.read1(1 << 16)
        except Exception as e:
            raise RetrieveError("member_read_error", f"series answer unreadable: {type(e).__name__}") from e
        if not piece:
            return  # the server closed the answer: what was not delivered is fetched one by one
        buf += piece


def _sop_of(part):
    """The SOP Instance UID of a Part 10 instance, from its header only; None if unreadable."""
    import io

    import pydicom
    try:
        ds = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True, specific_tags=[(0x0008, 0x0018)])
        return str(ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID") or "") or None
    except Exception:
        return None


class _Breaker:
    """Stops asking a PACS that has stopped answering.

    Each request is bounded (connect 10 s, a read 30 s, an instance 120 s), but a PACS that goes silent
    in the middle of a night would still cost every remaining instance its timeout: 10,000 instances at 30 s,
    four at a time, is a day. After UNANSWERED_LIMIT requests in a row without an answer (a timeout, a
    refused or dropped connection; any HTTP status counts as an answer) to one server, requests to it fail
    at once with a coded, transient error (the study is tried again next night) for COOL_DOWN_S; then one
    request probes, and an answer closes the breaker. Per process, like the concurrency limit."""

    UNANSWERED_LIMIT = 8
    COOL_DOWN_S = 60.0

    def __init__(self):
        self._lock = threading.Lock()
        self._misses, self._opened = {}, {}

    @contextlib.contextmanager
    def watch(self, url):
        """Around one request to `url`'s server: refused at once while the breaker is open; its outcome counted."""
        server = urllib.parse.urlsplit(url).netloc.lower()
        self._before(server)
        try:
            yield
        except Exception as e:
            self._after(server, answered=not _unanswered(e))
            raise
        self._after(server, answered=True)

    def _before(self, server):
        with self._lock:
            opened = self._opened.get(server)
            if opened is None:
                return
            if time.monotonic() - opened < self.COOL_DOWN_S:
                raise RetrieveError("dicomweb_timeout", f"not requested: the PACS left the last "
                                    f"{self._misses[server]} requests unanswered", transient=True)
            self._opened[server] = time.monotonic()  # this request probes; the others wait another cool-down

    def _after(self, server, answered):
        with self._lock:
            if answered:
                self._misses[server] = 0
                self._opened.pop(server, None)
                return
            self._misses[server] = self._misses.get(server, 0) + 1
            if self._misses[server] >= self.UNANSWERED_LIMIT:
                self._opened[server] = time.monotonic()


def _unanswered(error):
    """A timeout or a lost connection (as requests raises it, or as _stream codes it: transient), not an answer."""
    import requests
    return isinstance(error, (requests.exceptions.Timeout, requests.exceptions.ConnectionError)) or \
        (isinstance(error, RetrieveError) and error.transient)


BREAKER = _Breaker()


def _get(http, url, headers, max_bytes, deadline_s, what, gate=None):
    """(status, content type, body) of a GET within `deadline_s` in all, retrying transient HTTP errors and
    lost connections with back-off while half the deadline is left; each attempt holds `gate()` (the
    concurrency limit) and then passes the BREAKER: a request that waited for the gate while the breaker
    opened is not sent (checked before the wait, every queued request went out: 15 asked of a silent PACS,
    not 8 + 4).

    A lost connection (refused, or reset: a kept-alive connection the PACS closed between two requests) is
    retried like a 503: CI saw a whole night end at its QIDO search on one, with Orthanc answering again at
    once. A timeout is not: it has spent its time, and the breaker deals with a PACS gone silent."""
    start = time.monotonic()
    for attempt in range(_ATTEMPTS):
        again = attempt + 1 < _ATTEMPTS and time.monotonic() - start < deadline_s / 2
        try:
            with (gate() if gate else contextlib.nullcontext()), BREAKER.watch(url):
                status, content_type, body = _stream(http, url, headers, max_bytes, start + deadline_s, what)
        except RetrieveError as e:
            if not (again and _lost_connection(e)):
                raise
            time.sleep(0.5 * 2 ** attempt)
            continue
        if status in _TRANSIENT and again:
            time.sleep(0.5 * 2 ** attempt)
            continue
        return status, content_type, body
    raise AssertionError("not reached: the last attempt returns or raises")


def _lost_connection(error):
    """A request that found no connection to answer it (refused, reset or closed before an answer)."""
    import requests
    cause = error.__cause__
    return isinstance(cause, requests.exceptions.ConnectionError) and not isinstance(cause, requests.exceptions.Timeout)


def _stream(session, url, headers, max_bytes, deadline, what):
    """(status, content type, body) of one GET, read in pieces against the size limit and the deadline."""
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=(10, _READ_TIMEOUT_S), allow_redirects=False)
    except RedirectRefused as e:
        raise RetrieveError("member_read_error", f"the server redirected the request for the {what}; "
                            "redirects are refused") from e
    except Exception as e:
        import requests
        raise RetrieveError("dicomweb_timeout" if isinstance(e, requests.exceptions.Timeout) else "member_read_error",
                            f"request for the {what} failed: {type(e).__name__}", transient=True) from e
    with resp:
        if resp.status_code >= 400:
            return resp.status_code, "", b""
        if 300 <= resp.status_code < 400:
            raise RetrieveError("member_read_error", f"the server redirected the request for the {what}; "
                                "redirects are refused")
        if resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
            raise RetrieveError("member_read_error", f"the server sent a content-encoded {what}; refused")
        limit = max_bytes + 64 * 1024  # the multipart framing around an instance
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RetrieveError("member_too_large", f"{what} of {int(declared)} bytes > limit {max_bytes}")
        body = bytearray()
        try:
            while True:
                piece = resp.raw.read1(1 << 16)
                if not piece:
                    break
                body += piece
                if len(body) > limit:
                    raise RetrieveError("member_too_large", f"{what} larger than the limit of {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise RetrieveError("dicomweb_timeout", f"{what} not received within the deadline "
                                        f"({len(body)} bytes so far)", transient=True)
        except RetrieveError:
            raise
        except Exception as e:
            raise RetrieveError("dicomweb_timeout" if "timed out" in str(e).lower() else "member_read_error",
                                f"{what} unreadable: {type(e).__name__}", transient=True) from e
        return resp.status_code, resp.headers.get("Content-Type", ""), bytes(body)


_ASKED = (("StudyInstanceUID", "study_instance_uid"), ("SeriesInstanceUID", "series_instance_uid"),
          ("SOPInstanceUID", "sop_instance_uid"))


def answer_mismatch(locator, fields):
    """Why a retrieved instance is not the one asked for, or None when it is.

    `locator`: the ref's (base URL, study, series, SOP instance, max bytes); `fields`: the decoded header's
    UID columns. A proxy or cache that mixes answers up would otherwise give one patient's image the row,
    the study table entry and the write-back of the study that was asked for; an answer without these UIDs
    (not DICOM at all) cannot be told apart from such a mix-up either."""
    _, study, series, sop, _ = locator
    wrong = [keyword for (keyword, col), asked in zip(_ASKED, (study, series, sop), strict=True)
             if (fields or {}).get(col) != asked]
    if not wrong:
        return None
    return (f"the PACS answered the request for one instance with another ({', '.join(wrong)} not the one asked "
            "for): not scored and never written back; the study is tried again next night")


def _first_part(body, content_type):
    """The first part of a multipart/related body (or the body itself for application/dicom)."""
    if not content_type.lower().startswith("multipart/"):
        return body
    delimiter = b"--" + _boundary(content_type)
    start = body.find(delimiter)
    head_end = body.find(b"\r\n\r\n", start) if start >= 0 else -1
    if head_end < 0:
        raise RetrieveError("member_read_error", "multipart answer without a part")
    end = body.find(b"\r\n" + delimiter, head_end + 4)
    if end < 0:
        raise RetrieveError("member_read_error", "multipart answer cut short")
    return body[head_end + 4:end]

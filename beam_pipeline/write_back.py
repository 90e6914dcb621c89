"""PACS out: a DICOM Structured Report per scored series, stored back into its study.

Radiologists see results where they read: in the viewer, next to the images.
For every series scored from a dicomweb:// input, `--write-back` stores (STOW-RS)
a Comprehensive SR into the same study, built with highdicom:

  Diagnostic imaging report (LOINC 18748-4)
    CONTAINS Finding: brain tumor suspected / not suspected / images unlike the
             training data (not judged)              [coding scheme 99BRAINSCREEN]
    CONTAINS Maximum tumor probability (num, UCUM {ratio}), Operating threshold (num)
    CONTAINS Algorithm: model name, version, sha256; "research screening aid, not a
             diagnostic device" (text)
    CONTAINS Largest lesion-map area of one image (num, mm2 or {pixels}) and that image
             (image reference): a lesion-map model only, so the viewer opens where to look
    CONTAINS Source: one image reference per scored instance

and, for each flagged image with a review overlay (the model's own lesion map, or Grad-CAM for a
slice classifier), a Secondary Capture (RGB, highdicom) of input + overlay in a series of its own,
oriented like its source.

Patient and study attributes come from the source instances' own metadata
(WADO-RS, one request per series), never from our rows. UIDs are derived
deterministically (ISO/IEC 9834-8 `2.25.` UUID form) from the source series
UID, the model's sha256 and the threshold, so a rerun, or a bundle the runner
retries, stores the same SR again (the PACS keeps one; the test saw duplicates
with random UIDs) and a new model or threshold gives a new one. A store that
fails is counted in `_SUMMARY.json` (`write_back`); the scores stay in the tables.

Only rows scored from that same server are written back (a DICOM file in a local archive that
claims a PACS study's UIDs never gets a report there), and a series UID found in more than one
study is refused and counted (`series_refused`): the report would land in one patient's study
with another patient's result.
"""
import apache_beam as beam
import numpy as np

from beam_pipeline import dicomweb, errors, schema, studies

SCHEME = "99BRAINSCREEN"
MANUFACTURER = "brain-mri-screening (open source)"


def _codes():
    from highdicom.sr import CodedConcept
    return {
        "report": CodedConcept("BRAIN_SCREEN_REPORT", SCHEME, "Automated brain-MRI tumor screening (research)"),
        "finding": CodedConcept("121071", "DCM", "Finding"),
        schema.LABEL_TUMOR: CodedConcept("TUMOR_SUSPECTED", SCHEME, "Brain tumor suspected"),
        schema.LABEL_NO_TUMOR: CodedConcept("NO_TUMOR_SUSPECTED", SCHEME, "No brain tumor suspected"),
        schema.LABEL_OOD: CodedConcept("NOT_JUDGED_OOD", SCHEME, "Images unlike the training data: not judged"),
        "probability": CodedConcept("MAX_TUMOR_PROB", SCHEME, "Maximum tumor probability"),
        "threshold": CodedConcept("THRESHOLD", SCHEME, "Operating threshold"),
        "algorithm": CodedConcept("ALGORITHM", SCHEME, "Algorithm"),
        "source": CodedConcept("260753009", "SCT", "Source"),
        "ratio": CodedConcept("{ratio}", "UCUM", "ratio"),
        "lesion_area": CodedConcept("LARGEST_LESION_AREA", SCHEME, "Largest lesion-map area of one image"),
        "lesion_image": CodedConcept("LARGEST_LESION_IMAGE", SCHEME, "Image with the largest lesion-map area"),
        "mm2": CodedConcept("mm2", "UCUM", "square millimeter"),
        "pixels": CodedConcept("{pixels}", "UCUM", "pixels"),
    }


def series_finding(rows):
    """The series' label: tumor if any image is; else not judged if any image is out of distribution."""
    labels = {r["predicted_label"] for r in rows}
    for label in (schema.LABEL_TUMOR, schema.LABEL_OOD):
        if label in labels:
            return label
    return schema.LABEL_NO_TUMOR


def _uuid_uid(*parts):
    """A `2.25.` UID from a name-based UUID (version 5 layout over sha256): same parts, same UID."""
    import hashlib
    import uuid
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=digest, version=5).int}"


def uids(series_uid, model_sha256, threshold, content=""):
    """(SR series UID, SR instance UID): deterministic, so a rerun of the same content does not duplicate
    the report; new content (a late image, a changed score) gets a new instance in the same SR series,
    which supersedes the earlier one (see _StoreReport)."""
    src = (series_uid, model_sha256, f"{threshold:.6f}")
    return _uuid_uid(*src, "sr-series"), _uuid_uid(*src, "sr-instance", content)


def content_digest(rows):
    """What the SR says, in one string: finding, highest probability and the images it covers."""
    probs = [r["tumor_probability"] for r in rows]
    return "|".join([series_finding(rows), f"{float(np.max(probs)):.4f}",
                     *sorted(str(r["sop_instance_uid"]) for r in rows)])


SR_SERIES_BASE, OVERLAY_SERIES_BASE = 990000, 980000  # + the source series number: stable, never a scanner's


def own_series_number(base, source_number):
    try:
        return base + int(source_number) % 10000
    except (TypeError, ValueError):
        return base


def build_sr(evidence, rows, model_info, threshold, previous=(), instance_number=1):
    """A highdicom ComprehensiveSR for one series' scored `rows`, evidence = the source datasets.

    Marked as what it is: title "Automated brain-MRI tumor screening (research)", CompletionFlag
    PARTIAL (a screening score, not a read), VerificationFlag UNVERIFIED; `previous` SRs of this
    series (earlier content) are listed as predecessor documents."""
    import highdicom as hd
    c = _codes()
    finding = series_finding(rows)
    probs = [r["tumor_probability"] for r in rows]
    by_sop = {ds.SOPInstanceUID: ds for ds in evidence}
    items = [
        hd.sr.CodeContentItem(c["finding"], c[finding], relationship_type="CONTAINS"),
        hd.sr.NumContentItem(c["probability"], float(np.max(probs)), c["ratio"], relationship_type="CONTAINS"),
        hd.sr.NumContentItem(c["threshold"], float(threshold), c["ratio"], relationship_type="CONTAINS"),
        hd.sr.TextContentItem(c["algorithm"], f"{model_info['model_name']} v{model_info['model_version']} "
                              f"sha256 {model_info['model_sha256']}; research screening aid, not a diagnostic "
                              "device", relationship_type="CONTAINS"),
    ]
    items += _largest_lesion_items(rows, by_sop, c)
    for r in sorted(rows, key=lambda r: r["sop_instance_uid"]):
        ds = by_sop.get(r["sop_instance_uid"])
        if ds is not None:
            items.append(hd.sr.ImageContentItem(c["source"], ds.SOPClassUID, ds.SOPInstanceUID,
                                                relationship_type="CONTAINS"))
    root = hd.sr.ContainerContentItem(c["report"])
    root.ContentSequence = hd.sr.ContentSequence(items)
    series_uid, sop_uid = uids(rows[0]["series_instance_uid"], model_info["model_sha256"], threshold,
                               content_digest(rows))
    source = evidence[0] if evidence else None
    sr = hd.sr.ComprehensiveSR(
        evidence=[by_sop[r["sop_instance_uid"]] for r in rows if r["sop_instance_uid"] in by_sop],
        content=hd.sr.ContentSequence([root], is_root=True), series_instance_uid=series_uid,
        series_number=own_series_number(SR_SERIES_BASE, source.get("SeriesNumber") if source else None),
        sop_instance_uid=sop_uid, instance_number=instance_number, manufacturer=MANUFACTURER, is_complete=False,
        is_verified=False, previous_versions=list(previous) or None,
        series_description=f"Automated tumor screening (research) of series {_source_label(source)}"[:64])
    sr.CodingSchemeIdentificationSequence = [_scheme_identification()]
    _stamp_series_time(sr)
    return sr


def _largest_lesion_items(rows, by_sop, c):
    """Where to look first, for a lesion-map model: the largest area its map outlines on one image (mm² where
    the pixel spacing is known) and that image, so the viewer opens on it. [] for other models."""
    import highdicom as hd
    measured = [r for r in rows if r.get("lesion_area_px") is not None and r["sop_instance_uid"] in by_sop]
    if not measured:
        return []
    r = studies.largest_lesion_row(measured)
    mm2 = r.get("lesion_area_mm2")
    ds = by_sop[r["sop_instance_uid"]]
    area = hd.sr.NumContentItem(c["lesion_area"], float(mm2 if mm2 is not None else r["lesion_area_px"]),
                                c["mm2"] if mm2 is not None else c["pixels"], relationship_type="CONTAINS")
    if not r["lesion_area_px"]:  # the map outlined nothing: no image to point at
        return [area]
    return [area, hd.sr.ImageContentItem(c["lesion_image"], ds.SOPClassUID, ds.SOPInstanceUID,
                                         referenced_frame_numbers=(r["frame_index"] + 1) if r.get("frame_index")
                                         else None, relationship_type="CONTAINS")]


def _scheme_identification():
    """Our private coding scheme, declared in the SR as PS3.3 C.12.1.1.4 asks of a private scheme."""
    from pydicom.dataset import Dataset
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "Automated brain-MRI tumor screening findings"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def _source_label(ds):
    """'7 AX FLAIR': the source series' number and (scrubbed) description, what a PACS list shows."""
    from beam_pipeline import free_text
    if ds is None:
        return "?"
    number = ds.get("SeriesNumber")
    description = free_text.scrub_description(str(ds.get("SeriesDescription") or ""))
    return " ".join(str(v) for v in (number, description) if v not in (None, "")) or "?"


def _stamp_series_time(ds):
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")


# Type 2 attributes (present, may be empty) of the Patient and General Study modules that the SR copies
# from its evidence; archives often omit them, and highdicom then refuses to build the report.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def series_evidence(base, study, series):
    """Source datasets (metadata only, no pixels) of one series, via WADO-RS: bounded like a search (size
    cap, total deadline), so a PACS that dribbles its answer cannot hold the night."""
    from pydicom import Dataset
    out = []
    for m in dicomweb.qido(base, f"studies/{study}/series/{series}/metadata", {}, "series metadata"):
        ds = Dataset.from_json(m)
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        out.append(ds)
    return out


_AXES = (("L", "R"), ("P", "A"), ("H", "F"))


def patient_orientation(ds):
    """(row, column) direction letters from ImageOrientationPatient or PatientOrientation; None if unknown.

    The overlay keeps the source's in-plane axes (head crop, square pad, resize), so it keeps its
    orientation; without one we store no overlay rather than claim a wrong one."""
    iop = ds.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        letters = []
        for vec in (iop[:3], iop[3:]):
            axis = int(np.argmax(np.abs(vec)))
            letters.append(_AXES[axis][0] if vec[axis] > 0 else _AXES[axis][1])
        return tuple(letters)
    po = ds.get("PatientOrientation")
    return (str(po[0]), str(po[1])) if po is not None and len(po) == 2 else None


def build_overlay(ref, png_bytes, model_info, threshold, number):
    """A Secondary Capture of a flagged image's input + review overlay, in the source's study.

    BurnedInAnnotation YES (the overlay is drawn into the pixels); its series description names the
    source series, and its series number is derived from the source's."""
    import io

    import highdicom as hd
    from PIL import Image
    orientation = patient_orientation(ref)
    if orientation is None:
        return None
    pixels = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"))
    series_uid, _ = uids(ref.SeriesInstanceUID, model_info["model_sha256"], threshold)
    sc_series = _uuid_uid(series_uid, "sc-series")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref, pixels, "RGB", 8, "PATIENT", sc_series, own_series_number(OVERLAY_SERIES_BASE, ref.get("SeriesNumber")),
        _uuid_uid(ref.SOPInstanceUID, series_uid, "sc", hashlib_hex(png_bytes)), number,
        MANUFACTURER, patient_orientation=orientation,
        series_description=f"{dicomweb.OWN_SERIES_PREFIX}, research) series {_source_label(ref)}"[:64])
    sc.BurnedInAnnotation = "YES"
    # Laterality (General Series, type 2C) is required for a paired body part; naming the body part
    # says it is not one (dciodvfy reports the SC as missing Laterality otherwise)
    sc.BodyPartExamined = str(ref.get("BodyPartExamined") or "BRAIN")[:16]
    _stamp_series_time(sc)
    return sc


def hashlib_hex(data):
    import hashlib
    return hashlib.sha256(data).hexdigest()


def _stored_reports(base, study, sr_series):
    """Metadata of the SRs this job stored earlier in one SR series (QIDO-RS, then WADO-RS metadata)."""
    from pydicom import Dataset
    try:
        found = dicomweb.qido(base, f"studies/{study}/series/{sr_series}/instances", {"includefield": ["00080018"]})
    except dicomweb.RetrieveError:
        return []
    out = []
    for item in found:
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, sr_series
        ds.SOPInstanceUID = dicomweb.value(item, "00080018")
        ds.SOPClassUID = dicomweb.value(item, "00080016") or "1.2.840.10008.5.1.4.1.1.88.33"
        out.append(ds)
    return out


def _delete(base, study, series, sop):
    """DICOMweb DELETE of a superseded SR where the server allows it (dcm4chee, Google Cloud); True if
    deleted. Orthanc's plugin does not: there the new SR names the old one as its predecessor."""
    try:
        resp = dicomweb.session(base).delete(f"{base}/studies/{study}/series/{series}/instances/{sop}", timeout=(10, 30))
        return 200 <= resp.status_code < 300
    except Exception:
        return False


class StoreRefused(errors.ScreeningError):
    """The PACS answered a store, and listed the report among the instances it did not keep."""


def not_stored(answer):
    """{SOP Instance UID: failure reason (hex)} of a STOW-RS answer's Failed SOP Sequence: a PACS answers
    HTTP 202 when it kept some instances and refused others (an SOP class it does not take, a conflict),
    which dicomweb-client does not raise on."""
    out = {}
    for item in (answer.get("FailedSOPSequence") or []) if answer is not None else []:
        reason = item.get("FailureReason")
        out[str(item.get("ReferencedSOPInstanceUID"))] = f"{int(reason):04X}H" if reason is not None else "?"
    return out


class _StoreReport(beam.DoFn):
    """(series UID, rows) -> one tally (`_tally`: counts, an error text, the study whose report was not stored):
    one SR per series, and a Secondary Capture of the review overlay for each flagged image that has one.

    A series whose content changed since an earlier night gets a new SR that names the earlier ones as
    predecessors; they are deleted where the server allows DICOMweb DELETE, else counted.

    A PACS that stops answering costs each series its timeouts (up to two minutes for a store): every
    request here passes dicomweb.BREAKER, so after a few unanswered requests in a row the remaining series
    fail at once ("not requested") and a night with 500 series ends in minutes, its tables written."""

    def __init__(self, base, model_info, threshold, heatmap_dir=None, credentials_file=None):
        self._base, self._model_info, self._threshold = base, model_info, threshold
        self._heatmap_dir = heatmap_dir  # the run's staging heatmaps/ (rows name the promoted path)
        self._credentials_file = credentials_file

    def setup(self):
        dicomweb.configure(dicomweb.DEFAULT_MAX_PARALLEL, self._credentials_file)

    def _overlays(self, rows, evidence):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
        by_sop = {ds.SOPInstanceUID: ds for ds in evidence}
        out = []
        for number, r in enumerate(sorted((r for r in rows if r["heatmap_path"]),
                                          key=lambda r: r["sop_instance_uid"]), start=1):
            ref = by_sop.get(r["sop_instance_uid"])
            if ref is None:
                continue
            name = r["heatmap_path"].rsplit("/", 1)[-1]
            with FileSystems.open(f"{self._heatmap_dir}/{name}", compression_type=CompressionTypes.UNCOMPRESSED) as f:
                sc = build_overlay(ref, f.read(), self._model_info, self._threshold, number)
            if sc is not None:
                out.append(sc)
        return out

    def process(self, keyed):
        _, rows = keyed
        rows = list(rows)
        studies = {r["study_instance_uid"] for r in rows}
        if len(studies) != 1:  # one series UID in two studies: whichever study got the SR would be wrong
            yield _tally(series_refused=1,
                         error=f"series_spans_studies: a series UID found in {len(studies)} studies; no report stored")
            return
        study = rows[0]["study_instance_uid"]
        try:
            evidence = series_evidence(self._base, study, rows[0]["series_instance_uid"])
            sr_series, sr_uid = uids(rows[0]["series_instance_uid"], self._model_info["model_sha256"],
                                     self._threshold, content_digest(rows))
            stored = _stored_reports(self._base, study, sr_series)
            earlier = [ds for ds in stored if ds.SOPInstanceUID != sr_uid]
            if len(earlier) < len(stored):  # this very content is stored already (a rerun, a retried bundle)
                yield _tally(series_stored=1)
                return
            sr = build_sr(evidence, rows, self._model_info, self._threshold, previous=earlier,
                          instance_number=len(earlier) + 1)
            overlays = self._overlays(rows, evidence) if self._heatmap_dir else []
            with dicomweb.BREAKER.watch(self._base):
                answer = dicomweb.client(self._base).store_instances([sr, *overlays])
            refused = not_stored(answer)
            if sr.SOPInstanceUID in refused:  # HTTP 202: the PACS answered, and kept some instances out
                raise StoreRefused(f"the PACS did not store the report (STOW-RS failure reason "
                                   f"{refused[sr.SOPInstanceUID]})")
            deleted = sum(_delete(self._base, study, sr_series, ds.SOPInstanceUID) for ds in earlier)
            kept_out = sum(o.SOPInstanceUID in refused for o in overlays)
            yield _tally(series_stored=1, overlays_stored=len(overlays) - kept_out, overlays_refused=kept_out,
                         superseded_kept=len(earlier) - deleted,
                         error=f"{kept_out} overlay(s) not stored (STOW-RS failure reason "
                               f"{sorted(set(refused.values()))})" if kept_out else "")
        except Exception as e:  # the PACS refused or is down: the scores are still in the tables
            yield _tally(series_failed=1, error=f"{type(e).__name__}: {e}"[:300], unstored=study)


UNSTORED = "unstored_studies"  # kept out of _SUMMARY.json: finalise keeps these studies out of --manifest
COUNTS = ("series_stored", "series_failed", "series_refused", "overlays_stored", "overlays_refused",
          "superseded_kept")


def _tally(error="", unstored="", **counts):
    """One series' outcome: COUNTS (those not given are 0), an error text, the study whose report was not stored."""
    return {**dict.fromkeys(COUNTS, 0), **counts, "error": error, "unstored": unstored}


def _merge(results):
    """The night's write-back summary: the series' tallies summed, five errors (a series whose report was not
    stored first: in_words quotes the first as the night's), the unstored studies."""
    out = {**dict.fromkeys(COUNTS, 0), UNSTORED: set()}
    failures, others = [], []
    for tally in results:
        for key in COUNTS:
            out[key] += tally[key]
        if tally["error"]:
            (failures if tally["series_failed"] else others).append(tally["error"])
        if tally["unstored"]:
            out[UNSTORED].add(tally["unstored"])
    out["errors"] = (failures + others)[:5]
    out[UNSTORED] = sorted(out[UNSTORED])
    return out


def troubled(summary):
    """True when some result of the night is missing from the PACS: a series' report not stored or refused, an
    overlay kept out."""
    return bool(summary.get("series_failed", 0) or summary.get("series_refused", 0)
                or summary.get("overlays_refused", 0))


def in_words(summary):
    """One sentence on a night's write-back, for the console and the report (from _SUMMARY.json's `write_back`)."""
    stored, failed = summary.get("series_stored", 0), summary.get("series_failed", 0)
    refused = summary.get("series_refused", 0)
    text = f"Write-back: {stored} series' reports stored in the PACS ({summary.get('overlays_stored', 0)} overlays)"
    if failed:
        first = (summary.get("errors") or ["-"])[0]
        text += (f"; {failed} could not be stored (first: {first}), so radiologists will not see them in the viewer: "
                 "their scores are in the tables and the report, and the next run stores them")
    if refused:
        text += f"; {refused} refused (a series UID found in more than one study: no study was safe to write into)"
    if summary.get("overlays_refused", 0):
        text += (f"; the PACS kept {summary['overlays_refused']} overlay(s) out (the reports name the lesion; "
                 "the pictures are in this report)")
    return text


def server_of(uri):
    """'http(s)://host[:port]' of a dicomweb(s):// or http(s):// URI, credentials dropped, host lower-case.

    Rows keep the scheme and host of their input even when their paths are pseudonymised, so a row
    can be traced to the server it came from."""
    if "://" not in (uri or ""):
        return None
    scheme, rest = uri.split("://", 1)
    netloc = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1].lower()
    return f"{'https' if scheme in ('dicomwebs', 'https') else 'http'}://{netloc}"


def _from_server(row, server):
    """A scored DICOM row that came from `server`: a file or another server's instance never gets a
    report in this PACS, whatever UIDs it claims."""
    return (row["status"] == schema.STATUS_OK and bool(row["series_instance_uid"])
            and str(row["source_uri"] or "").startswith(("dicomweb://", "dicomwebs://"))
            and server_of(row["source_uri"]) == server)


class WriteBack(beam.PTransform):
    """Scored rows -> one SR per DICOM series stored into the PACS; returns one summary dict."""

    def __init__(self, dicomweb_uri, model_info, threshold, heatmap_dir=None, credentials_file=None):
        super().__init__()
        self._credentials_file = credentials_file
        self._base, _ = dicomweb.parse(dicomweb_uri)
        self._server = server_of(dicomweb_uri)
        self._model_info, self._threshold = model_info, threshold
        self._heatmap_dir = heatmap_dir

    def expand(self, rows):
        return (rows
                | "ScoredDicom" >> beam.Filter(_from_server, self._server)
                | "BySeries" >> beam.Map(lambda r: (r["series_instance_uid"], r))
                | "GroupSeries" >> beam.GroupByKey()
                | "StoreReports" >> beam.ParDo(_StoreReport(self._base, self._model_info, self._threshold,
                                                            self._heatmap_dir, self._credentials_file))
                | "Tally" >> beam.combiners.ToList()
                | "Merge" >> beam.Map(_merge))

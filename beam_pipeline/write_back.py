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
    CONTAINS Source: one image reference per scored instance

and, for each flagged image with a Grad-CAM overlay, a Secondary Capture (RGB,
highdicom) of input + overlay in a series of its own, oriented like its source.

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

from beam_pipeline import dicomweb, schema

SCHEME = "99BRAINSCREEN"
MANUFACTURER = "brain-mri-screening (open source)"


def _codes():
    from highdicom.sr import CodedConcept
    return {
        "report": CodedConcept("18748-4", "LN", "Diagnostic imaging report"),
        "finding": CodedConcept("121071", "DCM", "Finding"),
        schema.LABEL_TUMOR: CodedConcept("TUMOR_SUSPECTED", SCHEME, "Brain tumor suspected"),
        schema.LABEL_NO_TUMOR: CodedConcept("NO_TUMOR_SUSPECTED", SCHEME, "No brain tumor suspected"),
        schema.LABEL_OOD: CodedConcept("NOT_JUDGED_OOD", SCHEME, "Images unlike the training data: not judged"),
        "probability": CodedConcept("MAX_TUMOR_PROB", SCHEME, "Maximum tumor probability"),
        "threshold": CodedConcept("THRESHOLD", SCHEME, "Operating threshold"),
        "algorithm": CodedConcept("ALGORITHM", SCHEME, "Algorithm"),
        "source": CodedConcept("260753009", "SCT", "Source"),
        "ratio": CodedConcept("{ratio}", "UCUM", "ratio"),
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


def uids(series_uid, model_sha256, threshold):
    """(SR series UID, SR instance UID): deterministic, so a rerun does not duplicate the report."""
    src = (series_uid, model_sha256, f"{threshold:.6f}")
    return _uuid_uid(*src, "sr-series"), _uuid_uid(*src, "sr-instance")


def build_sr(evidence, rows, model_info, threshold):
    """A highdicom ComprehensiveSR for one series' scored `rows`, evidence = the source datasets."""
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
    for r in sorted(rows, key=lambda r: r["sop_instance_uid"]):
        ds = by_sop.get(r["sop_instance_uid"])
        if ds is not None:
            items.append(hd.sr.ImageContentItem(c["source"], ds.SOPClassUID, ds.SOPInstanceUID,
                                                relationship_type="CONTAINS"))
    root = hd.sr.ContainerContentItem(c["report"])
    root.ContentSequence = hd.sr.ContentSequence(items)
    series_uid, sop_uid = uids(rows[0]["series_instance_uid"], model_info["model_sha256"], threshold)
    return hd.sr.ComprehensiveSR(
        evidence=[by_sop[r["sop_instance_uid"]] for r in rows if r["sop_instance_uid"] in by_sop],
        content=hd.sr.ContentSequence([root], is_root=True), series_instance_uid=series_uid, series_number=9901,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER, is_complete=True)


# Type 2 attributes (present, may be empty) of the Patient and General Study modules that the SR copies
# from its evidence; archives often omit them, and highdicom then refuses to build the report.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def series_evidence(base, study, series):
    """Source datasets (metadata only, no pixels) of one series, via WADO-RS."""
    from pydicom import Dataset
    out = []
    for m in dicomweb.client(base).retrieve_series_metadata(study, series):
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
    """A Secondary Capture of a flagged image's input + Grad-CAM overlay, in the source's study."""
    import io

    import highdicom as hd
    from PIL import Image
    orientation = patient_orientation(ref)
    if orientation is None:
        return None
    pixels = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"))
    series_uid, _ = uids(ref.SeriesInstanceUID, model_info["model_sha256"], threshold)
    sc_series = _uuid_uid(series_uid, "sc-series")
    return hd.sc.SCImage.from_ref_dataset(
        ref, pixels, "RGB", 8, "PATIENT", sc_series, 9902, _uuid_uid(ref.SOPInstanceUID, series_uid, "sc"), number,
        MANUFACTURER, patient_orientation=orientation,
        series_description=f"{dicomweb.OWN_SERIES_PREFIX}, research, not diagnostic)")


class _StoreReport(beam.DoFn):
    """(series UID, rows) -> (stored, failed, error text, overlays stored): one SR per series, and a
    Secondary Capture of the Grad-CAM overlay for each flagged image that has one."""

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
            yield 0, 0, f"series_spans_studies: a series UID found in {len(studies)} studies; no report stored", 0, 1
            return
        try:
            evidence = series_evidence(self._base, rows[0]["study_instance_uid"], rows[0]["series_instance_uid"])
            sr = build_sr(evidence, rows, self._model_info, self._threshold)
            overlays = self._overlays(rows, evidence) if self._heatmap_dir else []
            dicomweb.client(self._base).store_instances([sr, *overlays])
            yield 1, 0, "", len(overlays), 0
        except Exception as e:  # the PACS refused or is down: the scores are still in the tables
            yield 0, 1, f"{type(e).__name__}: {e}"[:300], 0, 0


def _merge(results):
    out = {"series_stored": 0, "series_failed": 0, "series_refused": 0, "overlays_stored": 0, "errors": []}
    for stored, failed, error, overlays, refused in results:
        out["series_stored"] += stored
        out["series_failed"] += failed
        out["series_refused"] += refused
        out["overlays_stored"] += overlays
        if error and len(out["errors"]) < 5:
            out["errors"].append(error)
    return out


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

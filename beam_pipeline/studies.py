"""Series and study tables: radiologists review studies, not loose slices.

Series: DICOM images group by (StudyInstanceUID, SeriesInstanceUID); a NIfTI
volume is a series of its own; other images group by their archive and folder,
loose files by the folder that holds them, which is how exports lay out one series.
Studies: series rows group by StudyInstanceUID (a non-DICOM folder stays one
row, labelled as a folder, with one series per volume it holds), the worklist unit.
"""
import posixpath
import re

import apache_beam as beam

from beam_pipeline import schema
from screening_core import looks

TOP_K = 5


def _is_volume(row):
    """A NIfTI file (loose or in an archive): its slices are one series, whatever else its folder holds."""
    return not row.get("study_instance_uid") and row.get("image_format") == "nifti"


def series_key(row):
    """DICOM: study/series UIDs. A NIfTI volume: its file (four people's volumes in one folder were one
    series of all their slices). Archive members: the archive and the member's folder. Loose files: the
    folder that holds them (a folder of 360 PNG slices was 360 one-image "studies" on the worklist)."""
    if row.get("study_instance_uid"):
        return f"{row['study_instance_uid']}/{row.get('series_instance_uid') or ''}"
    patient = f"#{row['patient_group']}" if row.get("patient_group") else ""  # one folder, many patients
    if _is_volume(row):
        return f"{row['source_uri']}!{row['member_path'] or ''}{patient}"
    if not row["member_path"]:
        return f"{posixpath.dirname(row['source_uri'])}/{patient}"
    return f"{row['source_uri']}!{posixpath.dirname(row['member_path'])}{patient}"


class SeriesCombineFn(beam.CombineFn):
    """Scored image rows of one series (or folder) -> a SERIES_SCHEMA row (without run-level fields)."""

    def create_accumulator(self):
        return {"n": 0, "flagged": 0, "ood": 0, "turned": 0, "sum": 0.0, "max": -1.0, "top": [], "first": None,
                "lesion": None}

    def add_input(self, acc, row):
        p = float(row["tumor_probability"])
        acc["n"] += 1
        acc["flagged"] += int(row["predicted_label"] == schema.LABEL_TUMOR)
        acc["ood"] += int(row.get("in_distribution") is False)
        acc["turned"] += int(bool(row.get("turned_back_degrees")))  # null (rows from before the column) counts 0
        acc["sum"] += p
        acc["max"] = max(acc["max"], p)
        label = _row_label(row)
        acc["top"] = sorted(acc["top"] + [(p, label)], reverse=True)[:TOP_K]
        acc["lesion"] = _larger(acc["lesion"], _lesion_of(row, _viewer_label(row, label)))
        if acc["first"] is None:
            acc["first"] = {k: row.get(k) for k in ("study_instance_uid", "series_instance_uid", "source_uri",
                                                    "member_path", "modality", "threshold", "run_id",
                                                    "model_name", "model_version", "series_description",
                                                    "series_number", "accession_number", "study_date",
                                                    "patient_group", "image_format", "plane", "look")}
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out["n"] += a["n"]
            out["flagged"] += a["flagged"]
            out["ood"] += a["ood"]
            out["turned"] += a["turned"]
            out["sum"] += a["sum"]
            out["max"] = max(out["max"], a["max"])
            out["top"] = sorted(out["top"] + a["top"], reverse=True)[:TOP_K]
            out["first"] = out["first"] or a["first"]
            out["lesion"] = _larger(out["lesion"], a["lesion"])
        return out

    def extract_output(self, acc):
        f = acc["first"] or {}
        dicom = bool(f.get("study_instance_uid"))
        volume = _is_volume(f)
        loose = not dicom and not f.get("member_path") and not volume
        return {
            "run_id": f.get("run_id"), "study_instance_uid": f.get("study_instance_uid"),
            "series_instance_uid": f.get("series_instance_uid"),
            "source_uri": posixpath.dirname(f.get("source_uri") or "") if loose else f.get("source_uri"),
            "folder": None if dicom else (f.get("member_path") or None) if volume
            else posixpath.dirname(f.get("member_path") or ""),
            "volume": volume,  # in flight only (not a column): its study is the folder holding it
            "patient_group": None if dicom else f.get("patient_group"), "modality": f.get("modality"), "series_description": f.get("series_description"),
            "series_number": f.get("series_number"), "plane": f.get("plane"), "look": f.get("look"),
            "accession_number": f.get("accession_number"),
            "study_date": f.get("study_date"), "n_images": acc["n"], "n_flagged": acc["flagged"],
            "n_out_of_distribution": acc["ood"], "max_probability": acc["max"], "mean_probability": acc["sum"] / max(acc["n"], 1),
            "flagged": acc["flagged"] > 0, "top_members": [m for _, m in acc["top"]],
            "threshold": f.get("threshold"), "model_name": f.get("model_name"),
            "model_version": f.get("model_version"), "n_turned_back": acc["turned"],
            **_lesion_columns(acc["lesion"]),
        }


def _row_label(row):
    """The image's name in the tables: its member path (or file name), with its frame."""
    label = row["member_path"] or posixpath.basename(row["source_uri"])
    return label + f"#frame{row['frame_index']}" if row.get("frame_index") else label


def _viewer_label(row, label):
    """How a radiologist finds a DICOM slice in the viewer: 'image <InstanceNumber>' (and its frame), since its
    series is named beside it; other images keep their member label."""
    if not row.get("study_instance_uid") or row.get("instance_number") is None:
        return label
    frame = f", frame {row['frame_index'] + 1}" if row.get("frame_index") else ""
    return f"image {row['instance_number']}{frame}"


def _lesion_of(row, label):
    """(area px, area mm² or None, member label) of a row from a lesion-map model, else None."""
    if row.get("lesion_area_px") is None:
        return None
    return (float(row["lesion_area_px"]), row.get("lesion_area_mm2"), label)


def _rank(area, label):
    """Larger lesions first; ties: the smaller label, so the choice does not depend on the order rows come in."""
    return area, [-ord(c) for c in label]


def _larger(a, b):
    """The larger lesion of two `_lesion_of` tuples."""
    if a is None or b is None:
        return a or b
    return max(a, b, key=lambda t: _rank(t[0], t[2]))


def largest_lesion_row(rows):
    """Of rows with a lesion area, the one the series and study tables name as the largest lesion (`_rank`): the
    write-back SR points the viewer at the same image."""
    return max(rows, key=lambda r: _rank(float(r["lesion_area_px"]), _viewer_label(r, _row_label(r))))


def _lesion_columns(lesion):
    """Area 0 is a measurement (the map outlined nothing), and then no slice is "the one with the largest lesion"."""
    if lesion is None:
        return {"max_lesion_area_px": None, "max_lesion_area_mm2": None, "largest_lesion_member": None}
    return {"max_lesion_area_px": lesion[0], "max_lesion_area_mm2": lesion[1],
            "largest_lesion_member": lesion[2] if lesion[0] > 0 else None}


class AggregateSeries(beam.PTransform):
    """Image rows -> one SERIES_SCHEMA row per DICOM series or archive folder (ok rows only).

    Returns the series rows with their study-level fields (accession, date) still attached;
    write them with `series_table_row`."""

    def expand(self, rows):
        return (rows
                | "OkRows" >> beam.Filter(lambda r: r["status"] == "ok")
                | "KeyBySeries" >> beam.Map(lambda r: (series_key(r), r))
                | "CombinePerSeries" >> beam.CombinePerKey(SeriesCombineFn())
                | "WithKey" >> beam.MapTuple(lambda key, row: {**row, "study_key": key}))


def series_table_row(row):
    return {k: row.get(k) for k in schema.SERIES_SCHEMA.names}


def _volume_place(series):
    """(source_uri, folder) of the folder holding a volume series: a study's place, as for other folders."""
    if series.get("folder"):  # a volume inside an archive
        return series["source_uri"], posixpath.dirname(series["folder"])
    return posixpath.dirname(series["source_uri"] or ""), None


def _study_of(series):
    if series["study_instance_uid"]:
        return series["study_instance_uid"]
    if series.get("patient_group"):  # --group-pattern: a patient's folders of images are one "study"
        return f"patient:{series['patient_group']}"
    if series.get("volume"):  # the volumes of one folder are one study, as that folder's slices would be
        source, folder = _volume_place(series)
        return f"{source}!{folder}" if folder is not None else f"{source}/"
    return series["study_key"]  # a folder of non-DICOM images is its own "study"


def is_volume_series(series):
    """A series row of one NIfTI volume, so that a reader is told "volume", not "folder". The table keeps no
    flag; the file's name says it: .nii or .nii.gz, or .gz once pseudonymised (a pseudonym keeps only the
    last extension), and no other non-DICOM series is named like a file."""
    name = (series.get("folder") or series.get("source_uri") or "").lower()
    return not series.get("study_instance_uid") and name.endswith((".nii", ".gz"))


def series_label(series):
    """What a reader recognises a series by: its description, else its number, else the UID's tail."""
    if series.get("series_description"):
        return series["series_description"]
    if series.get("series_number") is not None:
        return f"series {series['series_number']}"
    if series.get("series_instance_uid"):
        return f"series ...{series['series_instance_uid'][-6:]}"
    if series.get("folder"):
        return series["folder"]
    return place_label(series)  # loose files: the folder that holds them


NON_AXIAL = ("sagittal", "coronal", "oblique")  # the planes the models were not chosen on (decoding.plane_of)
_PLANE_SUFFIX = re.compile(rf" \(({'|'.join(NON_AXIAL)})\)$")


def flagged_label(series):
    """`series_label`, with the look where the label does not show it ("p-3f2a... [T2]": a pseudonymised folder
    of exported T2 slices) and the plane for a series that is not axial ("T1 3D (sagittal)"): the worklist shows
    it, and the report's caveats on such a flag (report.look_caveat, plane_caveat) read them back from the label."""
    label = series_label(series)
    look = series.get("look")
    if look in looks.NAMES and look != "other" and looks.look_of(label) != look:
        label = f"{label} [{looks.NAMES[look]}]"
    plane = series.get("plane")
    return f"{label} ({plane})" if plane in NON_AXIAL else label


def plane_of_label(label):
    """The plane `flagged_label` appended, or None."""
    m = _PLANE_SUFFIX.search(label or "")
    return m.group(1) if m else None


def place_label(series):
    """Where a non-DICOM series' images are, as a reader finds them: the last two parts of the folder or
    archive path (pseudonymised like every path component), and the folder inside an archive.

    Two parts, not one: `flair/tumor`, `t1/tumor`, ... are four worklist rows that a bare `tumor`
    made indistinguishable."""
    parts = [p for p in (series.get("source_uri") or "").replace("\\", "/").split("/") if p not in ("", ".", "..")]
    where = "/".join(parts[-2:]) or "/"
    return f"{where} : {series['folder']}" if series.get("folder") else where


class _StudyFromSeries(beam.CombineFn):
    def create_accumulator(self):
        return []

    def add_input(self, acc, series):
        acc.append(series)
        return acc

    def merge_accumulators(self, accs):
        return [s for a in accs for s in a]

    def extract_output(self, series):
        first = min(series, key=lambda s: s["study_key"])  # not the arrival order: the same row every run
        dicom = bool(first["study_instance_uid"])
        patient = None if dicom else first.get("patient_group")
        source, folder = _volume_place(first) if first.get("volume") else (first["source_uri"], first["folder"])
        flagged = [s for s in series if s["flagged"]]
        with_lesion = [s for s in series if s.get("max_lesion_area_px") is not None]
        largest = max(with_lesion, key=lambda s: (s["max_lesion_area_px"], series_label(s)), default=None)
        return {
            "run_id": first["run_id"],
            "group_kind": "dicom_study" if dicom else "patient" if patient else "folder", "patient_group": patient,
            "study_instance_uid": first["study_instance_uid"], "accession_number": first.get("accession_number"),
            "study_date": first.get("study_date"), "source_uri": source,
            "folder": None if dicom or patient else folder,
            "modalities": sorted({s["modality"] for s in series if s["modality"]}),
            "n_series": len(series), "n_images": sum(s["n_images"] for s in series),
            "n_flagged": sum(s["n_flagged"] for s in series),
            "n_out_of_distribution": sum(s.get("n_out_of_distribution") or 0 for s in series),
            "max_probability": max(s["max_probability"] for s in series), "flagged": bool(flagged),
            "flagged_series": sorted(flagged_label(s) for s in flagged),
            "threshold": first["threshold"], "model_name": first["model_name"],
            "model_version": first["model_version"],
            "max_lesion_area_px": largest and largest["max_lesion_area_px"],
            "max_lesion_area_mm2": largest and largest["max_lesion_area_mm2"],
            "largest_lesion_series": series_label(largest) if largest and largest["largest_lesion_member"] else None,
            "largest_lesion_member": largest and largest["largest_lesion_member"]}


class AggregateStudies(beam.PTransform):
    """Series rows (from AggregateSeries) -> one STUDY_SCHEMA row per study or folder."""

    def expand(self, series):
        return (series
                | "KeyByStudy" >> beam.Map(lambda s: (_study_of(s), s))
                | "CombinePerStudy" >> beam.CombinePerKey(_StudyFromSeries())
                | "ToStudyRows" >> beam.MapTuple(lambda key, row: {**row, "study_key": key}))


def _combine(fn, items):
    acc = fn.create_accumulator()
    for item in items:
        acc = fn.add_input(acc, item)
    return fn.extract_output(acc)


def study_key_of_image(row):
    """The study an (ok) image row belongs to, decided as AggregateSeries + AggregateStudies decide it."""
    return _study_of({**_combine(SeriesCombineFn(), [row]), "study_key": series_key(row)})


def aggregate(rows):
    """(series rows, study rows) of image rows already in hand, by the same CombineFns as the pipeline's
    AggregateSeries and AggregateStudies: an incremental run completes a study that it rescored in part
    from the rows it carries over (a corrected slice must not leave a study row of one image)."""
    by_series = {}
    for row in rows:
        if row["status"] == "ok":
            by_series.setdefault(series_key(row), []).append(row)
    series = [{**_combine(SeriesCombineFn(), by_series[k]), "study_key": k} for k in sorted(by_series)]
    by_study = {}
    for s in series:
        by_study.setdefault(_study_of(s), []).append(s)
    studies = [{**_combine(_StudyFromSeries(), by_study[k]), "study_key": k} for k in sorted(by_study)]
    return series, studies

"""Study/series aggregation: radiologists review studies, not loose slices.

DICOM images group by (StudyInstanceUID, SeriesInstanceUID); other images by
their archive and folder, which is how exports lay out one series.
"""
import posixpath

import apache_beam as beam

from beam_pipeline import schema

TOP_K = 5


def study_key(row):
    if row.get("study_instance_uid"):
        return f"{row['study_instance_uid']}/{row.get('series_instance_uid') or ''}"
    return f"{row['source_uri']}!{posixpath.dirname(row['member_path'] or '')}"


class StudyCombineFn(beam.CombineFn):
    """Scored image rows of one group -> a STUDY_SCHEMA row (without run-level fields)."""

    def create_accumulator(self):
        return {"n": 0, "flagged": 0, "sum": 0.0, "max": -1.0, "top": [], "first": None}

    def add_input(self, acc, row):
        p = float(row["tumor_probability"])
        acc["n"] += 1
        acc["flagged"] += int(row["predicted_label"] == schema.LABEL_TUMOR)
        acc["sum"] += p
        acc["max"] = max(acc["max"], p)
        label = row["member_path"] or posixpath.basename(row["source_uri"])
        if row.get("frame_index"):
            label += f"#frame{row['frame_index']}"
        acc["top"] = sorted(acc["top"] + [(p, label)], reverse=True)[:TOP_K]
        if acc["first"] is None:
            acc["first"] = {k: row.get(k) for k in ("study_instance_uid", "series_instance_uid", "source_uri",
                                                    "member_path", "modality", "threshold", "run_id",
                                                    "model_name", "model_version")}
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out["n"] += a["n"]
            out["flagged"] += a["flagged"]
            out["sum"] += a["sum"]
            out["max"] = max(out["max"], a["max"])
            out["top"] = sorted(out["top"] + a["top"], reverse=True)[:TOP_K]
            out["first"] = out["first"] or a["first"]
        return out

    def extract_output(self, acc):
        f = acc["first"] or {}
        dicom = bool(f.get("study_instance_uid"))
        return {
            "run_id": f.get("run_id"), "study_instance_uid": f.get("study_instance_uid"),
            "series_instance_uid": f.get("series_instance_uid"), "source_uri": f.get("source_uri"),
            "folder": None if dicom else posixpath.dirname(f.get("member_path") or ""),
            "modality": f.get("modality"), "n_images": acc["n"], "n_flagged": acc["flagged"],
            "max_probability": acc["max"], "mean_probability": acc["sum"] / max(acc["n"], 1),
            "flagged": acc["flagged"] > 0, "top_members": [m for _, m in acc["top"]],
            "threshold": f.get("threshold"), "model_name": f.get("model_name"),
            "model_version": f.get("model_version"),
        }


class AggregateStudies(beam.PTransform):
    """Image rows -> one STUDY_SCHEMA row per study/series (ok rows only)."""

    def expand(self, rows):
        return (rows
                | "OkRows" >> beam.Filter(lambda r: r["status"] == "ok")
                | "KeyByStudy" >> beam.Map(lambda r: (study_key(r), r))
                | "CombinePerStudy" >> beam.CombinePerKey(StudyCombineFn())
                | "ToStudyRows" >> beam.MapTuple(lambda key, row: {**row, "study_key": key}))

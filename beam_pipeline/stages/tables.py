"""Stage 5, WriteResults: rows -> image, series and study Parquet tables in the run's staging folder,
the run's counts, then Finalise (finalise.py: summary, report, promotion, manifest)."""
import apache_beam as beam

from beam_pipeline import schema, summary
from beam_pipeline.finalise import Finalise
from beam_pipeline.studies import AggregateSeries, AggregateStudies, series_table_row


class _SummaryFn(beam.CombineFn):
    def create_accumulator(self):
        return {**summary.EMPTY_COUNTS, "by_status": {}, "by_error_code": {}, "sources": set(),
                "score_histogram": [0] * summary.SCORE_BINS}

    def add_input(self, acc, row):
        acc["rows"] += 1
        acc["by_status"][row["status"]] = acc["by_status"].get(row["status"], 0) + 1
        if row["error_code"]:
            acc["by_error_code"][row["error_code"]] = acc["by_error_code"].get(row["error_code"], 0) + 1
        acc["flagged"] += int(row["predicted_label"] == schema.LABEL_TUMOR)
        acc["out_of_distribution"] += int(row["in_distribution"] is False)
        if row["tumor_probability"] is not None:
            acc["score_histogram"][min(int(row["tumor_probability"] * summary.SCORE_BINS), summary.SCORE_BINS - 1)] += 1
        acc["sources"].add(row["source_uri"])
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out["rows"] += a["rows"]
            out["flagged"] += a["flagged"]
            out["out_of_distribution"] += a["out_of_distribution"]
            out["score_histogram"] = [x + y for x, y in zip(out["score_histogram"], a["score_histogram"], strict=True)]
            out["sources"] |= a["sources"]
            for key in ("by_status", "by_error_code"):
                for k, v in a[key].items():
                    out[key][k] = out[key].get(k, 0) + v
        return out

    def extract_output(self, acc):
        return {**acc, "sources": len(acc["sources"])}


class WriteResults(beam.PTransform):
    """Rows -> image + study Parquet tables in the run's staging folder, then Finalise.

    Returns the promoted run summary (one element)."""

    def __init__(self, plan, num_shards=0, write_back=None, study_fingerprints=None):
        super().__init__()
        self._plan = plan
        self._num_shards = num_shards
        self._write_back = write_back  # a write_back.WriteBack, or None
        self._study_fingerprints = study_fingerprints  # DICOMweb studies scored, for the manifest

    def _parquet(self, name, schema_):
        return beam.io.WriteToParquet(f"{self._plan.staging}/{name}-{self._plan.stage_id}", schema=schema_,
                                      file_name_suffix=".parquet", num_shards=self._num_shards, codec="snappy")

    def expand(self, rows):
        written = rows | "WriteParquet" >> self._parquet("images", schema.IMAGE_SCHEMA)
        series = rows | "AggregateSeries" >> AggregateSeries()
        series_files = (series
                        | "SeriesRows" >> beam.Map(series_table_row)
                        | "WriteSeries" >> self._parquet("series", schema.SERIES_SCHEMA))
        studies = (series
                   | "AggregateStudies" >> AggregateStudies()
                   | "WriteStudies" >> self._parquet("studies", schema.STUDY_SCHEMA))
        counts = rows | "Summarise" >> beam.CombineGlobally(_SummaryFn())
        stored = rows | "WriteBack" >> self._write_back if self._write_back else None
        return counts | "Finalise" >> Finalise(self._plan, written, studies, stored, series_files,
                                               self._study_fingerprints)

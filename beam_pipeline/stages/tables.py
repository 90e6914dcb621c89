"""Stage 5, WriteResults: rows -> image, series and study Parquet tables in the run's staging folder,
the run's counts, then Finalise (finalise.py: summary, report, promotion, manifest)."""
import apache_beam as beam

from beam_pipeline import schema, summary
from beam_pipeline.finalise import Finalise
from beam_pipeline.studies import AggregateSeries, AggregateStudies, series_table_row


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
        counts = rows | "Summarise" >> beam.CombineGlobally(summary.RowCounts())
        stored = rows | "WriteBack" >> self._write_back if self._write_back else None
        return counts | "Finalise" >> Finalise(self._plan, written, studies, stored, series_files,
                                               self._study_fingerprints)

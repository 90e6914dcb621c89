"""The pipeline's stages as composite PTransforms.

  ExpandInputs   glob patterns -> Chunk (member references), reshuffled
  DecodeImages   Chunk -> keyed image batches (main) + finished rows ('rows')
  ScoreImages    keyed image batches -> scored rows (RunInference); Grad-CAM
                 heatmaps for the flagged subset only
  WriteResults   rows -> image + study Parquet tables in staging, then
                 Finalise (finalise.py): summary, report, promotion, manifest

Elements are chunks of members, not single images: on this machine one Beam
element costs more than scoring one image, so per-element work is amortised.
"""
import hashlib

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.utils import shared

from beam_pipeline import archives, console, decoding, dicomweb, error_codes, model_store, pseudonym, schema, summary
from beam_pipeline.finalise import Finalise
from beam_pipeline.inference import KerasChunkModelHandler
from beam_pipeline.studies import AggregateSeries, AggregateStudies, series_table_row
from trainer import gradcam, preprocessing

ROWS_TAG = "rows"
FLAGGED_TAG = "flagged"


class _ListChunks(beam.DoFn):
    """FileMetadata -> Chunks of member references for that input."""

    def __init__(self, limits):
        self._limits = limits

    def process(self, file_metadata):
        for chunk in archives.list_chunks(file_metadata.path, file_metadata.size_in_bytes, self._limits):
            console.COUNTS.add(listed=len(chunk.refs))
            yield chunk


def _first(values):
    return next(iter(values))


class _SearchStudies(beam.DoFn):
    """dicomweb:// input -> (input, Study Instance UID) for every matching study (QIDO-RS, paged).

    Studies whose fingerprint equals the manifest's (`known`) are skipped; every other one
    also goes to the 'fingerprints' output, which finalisation writes into the manifest."""

    def __init__(self, known=None):
        self._known = dict(known or {})
        self._skipped = Metrics.counter("BrainScreening", "studies_unchanged")

    def process(self, uri):
        try:
            for study, fingerprint in dicomweb.search_studies(uri):
                key = dicomweb.manifest_key(uri, study)
                if fingerprint["instances"] is not None and self._known.get(key) == fingerprint:
                    self._skipped.inc()
                    continue
                yield beam.pvalue.TaggedOutput("fingerprints", (key, fingerprint))
                yield uri, study
        except Exception as e:
            yield beam.pvalue.TaggedOutput("failed", archives.Chunk(uri.partition("?")[0], "dicomweb", 0, [
                archives.MemberRef("", 0, None, "input_unreadable", f"QIDO-RS search failed: {type(e).__name__}: {e}")]))


class _ListStudy(beam.DoFn):
    """(input, study) -> Chunks of that study's instances (one ref per SOP Instance UID)."""

    def __init__(self, limits):
        self._limits = limits

    def process(self, item):
        uri, study = item
        base, _ = dicomweb.parse(uri)
        source = f"{uri.partition('?')[0].rstrip('/')}/studies/{study}"
        try:
            refs = [archives.MemberRef(f"{series}/{sop}", 0, (base, study, series, sop, self._limits.max_member_bytes))
                    for series, sop in dicomweb.instances(uri, study)]
        except Exception as e:
            refs = [archives.MemberRef("", 0, None, "input_unreadable",
                                       f"QIDO-RS series/instance search failed: {type(e).__name__}: {e}")]
        for index in range(0, len(refs), self._limits.chunk_size):
            chunk = archives.Chunk(source, "dicomweb", index // self._limits.chunk_size,
                                   refs[index:index + self._limits.chunk_size])
            console.COUNTS.add(listed=len(chunk.refs))
            yield chunk


class ExpandInputs(beam.PTransform):
    """PBegin -> PCollection[Chunk], spread across workers by a Reshuffle.

    File globs (local or gs://) are matched and listed; dicomweb:// inputs are
    searched study by study (dicomweb.py)."""

    def __init__(self, patterns, limits=None, known_studies=None):
        super().__init__()
        limits = limits or archives.Limits()
        self._patterns = [p for p in patterns if not dicomweb.is_dicomweb(p)]
        self._dicomweb = [p for p in patterns if dicomweb.is_dicomweb(p)]
        self._limits = limits
        self._known_studies = known_studies
        self.study_fingerprints = None  # set by expand() for DICOMweb inputs: (manifest key, fingerprint)

    def expand(self, pbegin):
        branches = []
        if self._patterns:
            branches.append(
                pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "MatchInputs" >> fileio.MatchAll()
                # An input matched by two globs is one input: scored and counted once.
                | "KeyByPath" >> beam.Map(lambda m: (m.path, m))
                | "OnePerPath" >> beam.CombinePerKey(_first)
                | "Inputs" >> beam.Values()
                | "ListMembers" >> beam.ParDo(_ListChunks(self._limits)))
        if self._dicomweb:
            studies = (pbegin
                       | "DicomwebInputs" >> beam.Create(sorted(set(self._dicomweb)))
                       | "SearchStudies" >> beam.ParDo(_SearchStudies(self._known_studies)).with_outputs(
                           "failed", "fingerprints", main="studies"))
            self.study_fingerprints = studies.fingerprints
            branches.append(studies.failed)
            branches.append(studies.studies
                            | "SpreadStudies" >> beam.Reshuffle()
                            | "ListStudyInstances" >> beam.ParDo(_ListStudy(self._limits)))
        chunks = branches[0] if len(branches) == 1 else tuple(branches) | "AllChunks" >> beam.Flatten()
        return chunks | "SpreadChunks" >> beam.Reshuffle()


class _DecodeChunk(beam.DoFn):
    """Chunk -> (row templates, stacked model inputs) + finished error/skipped rows."""

    def __init__(self, run_id, input_spec, model_info, pseudonym_key=None, dicomweb_max_parallel=None,
                 accession_key=None):
        self._dicomweb_max_parallel = dicomweb_max_parallel or dicomweb.DEFAULT_MAX_PARALLEL
        self._run_id = run_id
        self._ps = pseudonym.Pseudonymiser(pseudonym_key)
        self._accession = pseudonym.Pseudonymiser(accession_key)  # None key: in clear (opted in)
        self._spec = preprocessing.InputSpec.from_dict(input_spec)
        self._model_info = model_info
        self._counts = {s: Metrics.counter("BrainScreening", f"images_{s}") for s in
                        (schema.STATUS_OK, schema.STATUS_ERROR, schema.STATUS_SKIPPED)}

    def setup(self):
        dicomweb.configure(self._dicomweb_max_parallel)

    def _dicom(self, fields):
        """Header fields for a row: the accession number, an identifier, as a keyed pseudonym."""
        if fields.get("accession_number"):
            fields = {**fields, "accession_number": self._accession.component(fields["accession_number"])}
        return fields

    def _row(self, chunk, ref, **fields):
        return schema.empty_row(run_id=self._run_id, source_uri=self._ps.uri(chunk.source_uri),
                                member_path=self._ps.member(ref.path), member_size=ref.size,
                                **self._model_info, **fields)

    def _failed(self, chunk, ref, code, message, **fields):
        status = error_codes.status_of(code)
        self._counts[status].inc()
        console.COUNTS.add(errors=int(status == schema.STATUS_ERROR))
        message = self._ps.scrub(message, (ref.path, self._ps.member(ref.path)),
                                 (chunk.source_uri, self._ps.uri(chunk.source_uri)))
        row = self._row(chunk, ref, status=status, error_code=code, error_message=message[:2000],
                        scored_at=schema.now(), **fields)
        return beam.pvalue.TaggedOutput(ROWS_TAG, row)

    def process(self, chunk):
        templates, inputs = [], []
        for ref, data, err in archives.read_members(chunk):
            if ref.error_code:
                yield self._failed(chunk, ref, ref.error_code, ref.error_message or "")
                continue
            if err is not None:
                code = "input_unreadable" if chunk.kind == "file" else "member_read_error"
                yield self._failed(chunk, ref, code, f"{type(err).__name__}: {err}")
                continue
            digest = hashlib.sha256(data).hexdigest()
            if archives.is_resource_fork(ref.path):
                yield self._failed(chunk, ref, "resource_fork", "macOS metadata entry",
                                   content_sha256=digest)
                continue
            try:
                decoded = decoding.decode(data, ref.path or chunk.source_uri)
            except decoding.DecodeError as e:
                yield self._failed(chunk, ref, e.code, str(e), content_sha256=digest,
                                   image_format=e.image_format, **self._dicom(e.fields))
                continue
            for frame in decoded.frames:
                try:
                    x = preprocessing.prepare(frame.gray, self._spec)
                except Exception as e:  # e.g. a degenerate frame shape
                    yield self._failed(chunk, ref, "undecodable_image", f"preprocessing failed: {e}",
                                       content_sha256=digest, image_format=decoded.image_format,
                                       frame_index=frame.frame_index)
                    continue
                templates.append(self._row(
                    chunk, ref, content_sha256=digest, image_format=decoded.image_format,
                    width=decoded.width, height=decoded.height, frame_index=frame.frame_index,
                    **self._dicom(decoded.dicom)))
                inputs.append(x)
        if inputs:
            yield templates, np.stack(inputs)


class DecodeImages(beam.PTransform):
    """Chunk -> main: (row templates, float32[n, H, W, 1]); ROWS_TAG: finished rows.

    With a `pseudonym_key`, paths in rows are keyed pseudonyms (see pseudonym.py).
    """

    def __init__(self, run_id, input_spec, model_info, pseudonym_key=None, dicomweb_max_parallel=None,
                 accession_key=None):
        super().__init__()
        self._fn = _DecodeChunk(run_id, input_spec, model_info, pseudonym_key, dicomweb_max_parallel, accession_key)

    def expand(self, chunks):
        return chunks | "Decode" >> beam.ParDo(self._fn).with_outputs(ROWS_TAG, main="images")


class _ToRows(beam.DoFn):
    """(row templates, PredictionResult) -> one scored row per image.

    Flagged rows go to FLAGGED_TAG with their model input when heatmaps are on.
    """

    def __init__(self, threshold, heatmaps, ood_threshold=None, threshold_source="artifact"):
        self._threshold = threshold
        self._threshold_source = threshold_source
        self._heatmaps = heatmaps
        self._ood_threshold = ood_threshold
        self._ok = Metrics.counter("BrainScreening", "images_ok")
        self._flagged = Metrics.counter("BrainScreening", "images_flagged")

    def process(self, keyed):
        templates, result = keyed
        scored_at = schema.now()
        console.COUNTS.add(scored=len(templates))
        probs, oods = result.inference
        oods = [None] * len(templates) if oods is None else oods
        for row, x, p, ood in zip(templates, result.example, probs, oods, strict=True):
            p = float(p)
            in_dist = None if ood is None else bool(ood <= self._ood_threshold)
            label = schema.label(p, self._threshold, in_dist)
            self._ok.inc()
            row = {**row, "status": schema.STATUS_OK, "tumor_probability": p, "predicted_label": label,
                   "ood_score": None if ood is None else float(ood), "in_distribution": in_dist,
                   "threshold": float(self._threshold), "threshold_source": self._threshold_source,
                   "scored_at": scored_at}
            if label == schema.LABEL_TUMOR:
                self._flagged.inc()
                if self._heatmaps:
                    yield beam.pvalue.TaggedOutput(FLAGGED_TAG, (row, x))
                    continue
            yield row


class _Explainer:
    """Per-process holder of the model and its Grad-CAM function (shared by threads)."""

    def __init__(self, explain):
        self.explain = explain


class _AddHeatmaps(beam.DoFn):
    """Batch of (flagged row, model input) -> rows with heatmap_path; writes overlay PNGs.

    Batched so one Grad-CAM call explains many images (one call per image cost
    more than the scoring itself)."""

    def __init__(self, model_uri, write_dir, final_dir):
        self._model_uri = model_uri
        self._dir = write_dir.rstrip("/")
        self._final_dir = final_dir.rstrip("/")  # where rows say the PNG is once the result is promoted
        self._shared = shared.Shared()

    def setup(self):
        def load():
            model, _ = model_store.load(self._model_uri)
            return _Explainer(gradcam.make_explainer(model))
        self._explainer = self._shared.acquire(load)

    def process(self, batch):
        heats = self._explainer.explain(np.stack([x for _, x in batch]))
        for (row, x), heat in zip(batch, heats, strict=True):
            name = f"{row['content_sha256'][:20]}_{row['frame_index']}.png"
            with FileSystems.create(f"{self._dir}/{name}", mime_type="image/png",
                                    compression_type=CompressionTypes.UNCOMPRESSED) as f:
                f.write(gradcam.overlay_png(x, heat, row["tumor_probability"]))
            yield {**row, "heatmap_path": f"{self._final_dir}/{name}"}


class ScoreImages(beam.PTransform):
    """(row templates, image batch) -> scored rows, via RunInference.

    With `heatmap_dirs` (write folder, folder rows name), flagged images (and
    only they) get a Grad-CAM overlay.
    """

    def __init__(self, model_uri, threshold, batch_size, chunk_size, heatmap_dirs=None, ood_threshold=None,
                 threshold_source="artifact", engine="tensorflow", model_copies=0, threads=0):
        super().__init__()
        self._model_uri = model_uri
        self._handler = KeyedModelHandler(KerasChunkModelHandler(
            model_uri, batch_size, chunks_per_batch=max(1, batch_size // max(chunk_size, 1)), engine=engine,
            model_copies=model_copies, threads=threads))
        self._threshold = threshold
        self._heatmap_dirs = heatmap_dirs
        self._ood_threshold = ood_threshold
        self._threshold_source = threshold_source

    def expand(self, batches):
        scored = (batches
                  | "RunInference" >> RunInference(self._handler)
                  | "ToRows" >> beam.ParDo(_ToRows(self._threshold, bool(self._heatmap_dirs), self._ood_threshold,
                                 self._threshold_source))
                  .with_outputs(FLAGGED_TAG, main="rows"))
        if not self._heatmap_dirs:
            return scored.rows
        explained = (scored[FLAGGED_TAG]
                     | "BatchFlagged" >> beam.BatchElements(min_batch_size=16, max_batch_size=64)
                     | "GradCam" >> beam.ParDo(_AddHeatmaps(self._model_uri, *self._heatmap_dirs)))
        return (scored.rows, explained) | "MergeScored" >> beam.Flatten()


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

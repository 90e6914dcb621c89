"""Stage 2, DecodeImages: Chunk -> (row templates, stacked model inputs) + finished error rows.

Reads each member, sniffs its format, decodes it (decoding.py) and preprocesses it with the trainer's
`prepare`, the one definition of the model input. Every member that cannot become a model input leaves
as a finished row with a coded reason on the ERROR_ROWS_TAG output: nothing is dropped.
"""
import hashlib

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipeline import archives, console, decoding, dicomweb, error_codes, free_text, pseudonym, schema
from screening_core import preprocessing

ERROR_ROWS_TAG = "rows"
PENDING_TAG = "pending"  # manifest keys of DICOMweb studies with an instance worth retrying next night


def one_sentence(message, limit=300):
    """A row's error message: its first line, at most `limit` characters (a library's multi-line
    traceback text belongs in --verbose logs, not in a table a worklist reads)."""
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    return first if len(first) <= limit else first[:limit - 3] + "..."


class _DecodeChunk(beam.DoFn):
    """Chunk -> (row templates, stacked model inputs) + finished error/skipped rows."""

    def __init__(self, run_id, input_spec, model_info, pseudonym_key=None, dicomweb_max_parallel=None,
                 accession_key=None, keep_descriptions=False, credentials_file=None, group_pattern=None):
        self._keep_descriptions = keep_descriptions
        self._group_pattern = group_pattern
        self._credentials_file = credentials_file
        self._dicomweb_max_parallel = dicomweb_max_parallel or dicomweb.DEFAULT_MAX_PARALLEL
        self._run_id = run_id
        # Key references (file + id), not keys: the graph is pickled and, on Dataflow, stored with the job.
        self._key_refs = (pseudonym_key, accession_key)
        self._keys_loaded = False
        self._ps = self._accession = pseudonym.Pseudonymiser(None)  # until _load_keys reads the keys
        self._spec = preprocessing.InputSpec.from_dict(input_spec)
        self._model_info = model_info
        self._counts = {s: Metrics.counter("BrainScreening", f"images_{s}") for s in
                        (schema.STATUS_OK, schema.STATUS_ERROR, schema.STATUS_SKIPPED)}

    def setup(self):
        dicomweb.configure(self._dicomweb_max_parallel, self._credentials_file)
        self._load_keys()

    def _load_keys(self):
        """Pseudonymisers from the key references (None: in clear, opted in); once per DoFn instance."""
        if not self._keys_loaded:  # set only once both loaded: a failed load never leaves paths in clear
            path_ref, accession_ref = self._key_refs
            self._ps = pseudonym.Pseudonymiser(path_ref.load() if path_ref else None)
            self._accession = pseudonym.Pseudonymiser(accession_ref.load() if accession_ref else None)
            self._keys_loaded = True

    def _dicom(self, fields):
        """Header fields for a row: the accession number, an identifier, as a keyed pseudonym."""
        if fields.get("accession_number"):
            fields = {**fields, "accession_number": self._accession.component(fields["accession_number"])}
        if fields.get("series_description") and not self._keep_descriptions:
            fields = {**fields, "series_description": free_text.scrub_description(fields["series_description"])}
        return fields

    def _patient(self, chunk, ref):
        """The patient a non-DICOM image belongs to by --group-pattern (pseudonymised like paths), or None."""
        if not self._group_pattern:
            return None
        import posixpath
        import re
        name = posixpath.basename((ref.path or chunk.source_uri).replace("\\", "/"))
        m = re.search(self._group_pattern, name)
        if not m:
            return None
        return self._ps.component(m.group(1) if m.groups() else m.group(0))

    @staticmethod
    def _look(chunk, ref, dicom):
        """The image's MRI look (screening_core.looks) from its series description, else from its file name and the
        two folders above it, read here before they are pseudonymised (a `t2/` folder of exported slices names
        its look; its pseudonym does not); None when neither names one. A category, never an identifier."""
        from screening_core import looks
        look = looks.look_of((dicom or {}).get("series_description"))
        if look == "other":
            path = "/".join(p for p in (chunk.source_uri, ref.path) if p).replace("\\", "/")
            look = looks.look_of(" ".join(path.split("/")[-3:]))
        return None if look == "other" else look

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
        row = self._row(chunk, ref, status=status, error_code=code,
                        error_message=one_sentence(free_text.scrub_message(message)),
                        scored_at=schema.now(), **fields)
        return beam.pvalue.TaggedOutput(ERROR_ROWS_TAG, row)

    def process(self, chunk):
        self._load_keys()
        templates, inputs = [], []
        for ref, data, err in archives.read_members(chunk):
            if chunk.kind in archives.DICOMWEB_KINDS:
                console.STUDIES.retrieved(chunk.source_uri)
            if ref.error_code:
                yield self._failed(chunk, ref, ref.error_code, ref.error_message or "")
                continue
            if err is not None:
                if getattr(err, "transient", False) and chunk.kind in archives.DICOMWEB_KINDS:
                    yield beam.pvalue.TaggedOutput(PENDING_TAG, dicomweb.manifest_key_of_source(chunk.source_uri))
                code = getattr(err, "code", None) or ("input_unreadable" if chunk.kind == "file" else
                                                      "member_read_error")
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
            if chunk.kind in archives.DICOMWEB_KINDS and \
                    (wrong := dicomweb.answer_mismatch(ref.locator, decoded.dicom)) is not None:
                yield beam.pvalue.TaggedOutput(PENDING_TAG, dicomweb.manifest_key_of_source(chunk.source_uri))
                asked = dict(zip(("study_instance_uid", "series_instance_uid", "sop_instance_uid"),
                                 ref.locator[1:4], strict=True))  # the row stays with the study asked for
                yield self._failed(chunk, ref, "dicomweb_uid_mismatch", wrong, content_sha256=digest,
                                   image_format=decoded.image_format, **asked)
                continue
            for frame in decoded.frames:
                try:
                    x, scale, negative = preprocessing.prepare_for_scoring(frame.gray, self._spec)
                except Exception as e:  # e.g. a degenerate frame shape
                    yield self._failed(chunk, ref, "undecodable_image", f"preprocessing failed: {e}",
                                       content_sha256=digest, image_format=decoded.image_format,
                                       frame_index=frame.frame_index)
                    continue
                if not np.any(x):  # nothing the model could read: a confident "no tumor" would be a guess
                    yield self._failed(chunk, ref, "blank_image", "no head found in the image (blank or almost "
                                       "blank, e.g. above the vertex); not judged", content_sha256=digest,
                                       image_format=decoded.image_format, frame_index=frame.frame_index,
                                       **self._dicom(decoded.dicom))
                    continue
                dicom = self._dicom(decoded.dicom)
                templates.append(self._row(
                    chunk, ref, content_sha256=digest, image_format=decoded.image_format,
                    patient_group=None if dicom.get("study_instance_uid") else self._patient(chunk, ref),
                    width=decoded.width, height=decoded.height, frame_index=frame.frame_index,
                    input_scale=scale, taken_for_negative=negative, look=self._look(chunk, ref, decoded.dicom),
                    **dicom))
                inputs.append(x)
        if inputs:
            yield templates, np.stack(inputs)


class DecodeImages(beam.PTransform):
    """Chunk -> main: (row templates, float32[n, H, W, 1]); ERROR_ROWS_TAG: finished rows; PENDING_TAG:
    studies not to record in the manifest.

    With a `pseudonym_key` (a pseudonym.KeyRef), paths in rows are keyed pseudonyms (see pseudonym.py); series descriptions
    keep only MRI vocabulary (free_text.py) unless `keep_descriptions`.
    """

    def __init__(self, run_id, input_spec, model_info, pseudonym_key=None, dicomweb_max_parallel=None,
                 accession_key=None, keep_descriptions=False, credentials_file=None, group_pattern=None):
        super().__init__()
        self._fn = _DecodeChunk(run_id, input_spec, model_info, pseudonym_key, dicomweb_max_parallel, accession_key,
                                keep_descriptions, credentials_file, group_pattern)

    def expand(self, chunks):
        return chunks | "Decode" >> beam.ParDo(self._fn).with_outputs(ERROR_ROWS_TAG, PENDING_TAG, main="images")

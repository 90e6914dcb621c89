"""Stage 1, ExpandInputs: input patterns -> Chunks (references to up to --chunk-size archive members).

File globs (local or gs://) are matched and each archive is listed on a worker; dicomweb:// inputs are
searched study by study (QIDO-RS). A Reshuffle spreads the chunks across workers. Elements are chunks of
members, not single images: on this machine one Beam element costs more than scoring one image.
"""
import itertools

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from beam_pipeline import archives, console, dicomweb


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
    """dicomweb:// input -> (input, Study Instance UID) for every matching study (QIDO-RS, paged)."""

    def __init__(self, credentials_file=None):
        self._credentials_file = credentials_file

    def setup(self):
        dicomweb.configure(dicomweb.DEFAULT_MAX_PARALLEL, self._credentials_file)

    def process(self, uri):
        try:
            for study in dicomweb.search_studies(uri):
                yield uri, study
        except Exception as e:
            yield beam.pvalue.TaggedOutput("failed", archives.Chunk(uri.partition("?")[0], "dicomweb", 0, [
                archives.MemberRef("", 0, None, "input_unreadable", f"QIDO-RS search failed: {type(e).__name__}: {e}")]))


SERIES_CHUNK_FACTOR = 4  # a whole series up to this many chunks' worth of instances is one chunk


class _ListStudy(beam.DoFn):
    """(input, study) -> Chunks of that study's instances (one ref per SOP Instance UID).

    A study whose image instances are those the manifest (`known`) remembers is skipped; every
    other listed study also goes to the 'fingerprints' output, which finalisation writes into the
    manifest unless one of its instances failed for a reason worth retrying. A study the server
    lists without any series, or whose listing fails, gets a row and no fingerprint: it is tried
    again next night."""

    def __init__(self, limits, known=None, credentials_file=None):
        self._limits = limits
        self._known = dict(known or {})
        self._credentials_file = credentials_file
        self._skipped = Metrics.counter("BrainScreening", "studies_unchanged")

    def setup(self):
        dicomweb.configure(dicomweb.DEFAULT_MAX_PARALLEL, self._credentials_file)

    def process(self, item):
        uri, study = item
        base, _ = dicomweb.parse(uri)
        source = f"{uri.partition('?')[0].rstrip('/')}/studies/{study}"
        key = dicomweb.manifest_key(uri, study)
        try:
            found, n_series = dicomweb.instances(uri, study)
        except Exception as e:
            yield self._one_row(source, "input_unreadable",
                                f"QIDO-RS series/instance search failed: {type(e).__name__}: {e}")
            return
        fingerprint = dicomweb.fingerprint(found)
        if self._known.get(key) == fingerprint:
            self._skipped.inc()
            return
        if not found:
            if n_series == 0:  # listed as a study but no series: mid-transfer, or a server fault
                yield self._one_row(source, "study_empty", "QIDO-RS listed the study but no series in it")
                return
            yield beam.pvalue.TaggedOutput("fingerprints", (key, fingerprint))
            yield self._one_row(source, "no_image_series", f"{n_series} series, none of them images to screen")
            return
        yield beam.pvalue.TaggedOutput("fingerprints", (key, fingerprint))
        console.STUDIES.listed(source, len(found))
        for chunk in self._series_chunks(source, base, study, found):
            console.COUNTS.add(listed=len(chunk.refs))
            yield chunk

    def _series_chunks(self, source, base, study, found):
        """Chunks that never straddle two series. A series of up to SERIES_CHUNK_FACTOR chunks' worth of
        instances (a 3-D MR series of 176-256 slices at the default 64) is one chunk, read with one series
        request ("dicomweb-series"); a larger one is split into chunks read one instance at a time."""
        size, index = self._limits.chunk_size, itertools.count()
        for series, members in itertools.groupby(found, key=lambda f: f[0]):
            refs = [archives.MemberRef(f"{series}/{sop}", 0, (base, study, series, sop, self._limits.max_member_bytes))
                    for _, sop in members]
            if 1 < len(refs) <= SERIES_CHUNK_FACTOR * size:
                yield archives.Chunk(source, "dicomweb-series", next(index), refs)
                continue
            for start in range(0, len(refs), size):
                yield archives.Chunk(source, "dicomweb", next(index), refs[start:start + size])

    @staticmethod
    def _one_row(source, code, message):
        console.COUNTS.add(listed=1)
        return archives.Chunk(source, "dicomweb", 0, [archives.MemberRef("", 0, None, code, message)])


class ExpandInputs(beam.PTransform):
    """PBegin -> PCollection[Chunk], spread across workers by a Reshuffle.

    File globs (local or gs://) are matched and listed; dicomweb:// inputs are
    searched study by study (dicomweb.py)."""

    def __init__(self, patterns, limits=None, known_studies=None, credentials_file=None):
        super().__init__()
        self._credentials_file = credentials_file
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
                       | "SearchStudies" >> beam.ParDo(_SearchStudies(self._credentials_file)).with_outputs(
                           "failed", main="studies"))
            listed = (studies.studies
                      | "SpreadStudies" >> beam.Reshuffle()
                      | "ListStudyInstances" >> beam.ParDo(
                          _ListStudy(self._limits, self._known_studies, self._credentials_file)).with_outputs(
                          "fingerprints", main="chunks"))
            self.study_fingerprints = listed.fingerprints
            branches.append(studies.failed)
            branches.append(listed.chunks)
        chunks = branches[0] if len(branches) == 1 else tuple(branches) | "AllChunks" >> beam.Flatten()
        return chunks | "SpreadChunks" >> beam.Reshuffle()

"""Incremental nightly runs: remember which inputs were scored, skip them next time.

The manifest is one JSON file (local or gs://) mapping each scored input's
URI to its fingerprint: size and last-modified time as the filesystem reports
them (on GCS the update time changes with every new generation of an object).
A study of a DICOMweb input is keyed `<server root>#study=<Study Instance UID>`
with the series and instance counts the server reports, so a study that gained
images is scored again.
An input whose fingerprint is unchanged is skipped; a new or rewritten input
is scored. The manifest is updated only after a run succeeds, so a failed
run is simply redone by the next one.
"""
import json

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import errors, whole_file


def fingerprint(metadata):
    return {"size": int(metadata.size_in_bytes), "updated": float(metadata.last_updated_in_seconds or 0)}


class ManifestError(errors.ScreeningError, ValueError):
    """A manifest that cannot be trusted: the job stops before it touches anything."""


def load(path):
    if not FileSystems.exists(path):
        return {}
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        raw = f.read()
    try:
        entries = json.loads(raw.decode())["inputs"]
        if not isinstance(entries, dict) or not all(
                isinstance(v, dict) and ({"size", "updated"} <= set(v) or {"series", "instances"} <= set(v))
                for v in entries.values()):
            raise TypeError("'inputs' is not a mapping of input -> {size, updated} (files) or "
                            "{series, instances} (DICOMweb studies)")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest {path} is unreadable ({type(e).__name__}: {e}); move it away to "
                            "rescore everything, or restore its backup") from e
    return entries


def save(path, entries):
    """Write the manifest so that a reader sees the old or the new one, never a cut file."""
    whole_file.write(path, json.dumps({"inputs": entries}, indent=1, sort_keys=True).encode())


def known_studies(entries):
    """The DICOMweb study entries of a loaded manifest."""
    return {k: v for k, v in entries.items() if "#study=" in k}


def new_or_changed(matched, known):
    """Metadata of matched inputs whose fingerprint differs from the manifest's."""
    return [m for m in matched if known.get(m.path) != fingerprint(m)]

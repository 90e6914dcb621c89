"""Incremental nightly runs: remember which inputs were scored, skip them next time.

The manifest is one JSON file (local or gs://) mapping each scored input's
URI to its fingerprint: size and last-modified time as the filesystem reports
them (on GCS the update time changes with every new generation of an object).
An input whose fingerprint is unchanged is skipped; a new or rewritten input
is scored. The manifest is updated only after a run succeeds, so a failed
run is simply redone by the next one.
"""
import json

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def fingerprint(metadata):
    return {"size": int(metadata.size_in_bytes), "updated": float(metadata.last_updated_in_seconds or 0)}


def load(path):
    if not FileSystems.exists(path):
        return {}
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read().decode()).get("inputs", {})


def save(path, entries):
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(json.dumps({"inputs": entries}, indent=1, sort_keys=True).encode())


def new_or_changed(matched, known):
    """Metadata of matched inputs whose fingerprint differs from the manifest's."""
    return [m for m in matched if known.get(m.path) != fingerprint(m)]

"""Keyed pseudonyms for file and member paths, so outputs carry no patient identifiers.

Hospital exports are often named after the patient: `/exports/MRN123456/
SMITH_JOHN/scan1.dcm`. By default every path component of an input (past the
scheme and bucket) and of an archive member is replaced by
`p-<12 hex of HMAC-SHA256(key, component)>`, extensions kept: the same name
always gets the same pseudonym under one key (rows of one folder stay
together, night after night), and only the key's holder can map a pseudonym
back (`python -m beam_pipeline.pseudonym --find p-... <tree>`). `--keep-paths`
writes real paths instead. DICOM UIDs are not touched.
"""
import argparse
import hashlib
import hmac
import os
import posixpath
import secrets
import sys

from beam_pipeline import errors, whole_file

DEFAULT_KEY_FILE = os.path.join(os.path.expanduser("~"), ".config", "brain-screening", "pseudonym.key")
PREFIX = "p-"


def _exists(path):
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.exists(path)
    return os.path.exists(path)


def load_or_create_key(path=DEFAULT_KEY_FILE):
    """32 random bytes kept in `path` (created 0600 on first use); hex string."""
    if _exists(path):
        return read_key(path)
    key = secrets.token_hex(32)
    if "://" in path:
        # A bucket object: its IAM, not a file mode, keeps it private. Beam's FileSystems has no
        # create-if-absent, so two runs creating it at once both upload and the last upload stays: read it
        # back, so the run that lost takes the stored key. One that read back before the other's upload
        # landed is stopped before it publishes a row (confirm_key, at finalisation).
        whole_file.write(path, (key + "\n").encode())
        return read_key(path)
    if not whole_file.create_new(path, (key + "\n").encode()):
        return read_key(path)  # another run created it first: one key for both
    return key


KEY_ID_FILE = "_PSEUDONYM_KEY_ID"


def key_id(key_hex):
    """A public fingerprint of a key: tells whether two runs used the same key, reveals nothing of it."""
    return hmac.new(bytes.fromhex(key_hex), b"brain-screening key id", hashlib.sha256).hexdigest()[:16]


def load_key_for(output, path=DEFAULT_KEY_FILE):
    """The key for runs into `output`: created on the output's first run only.

    Once a result was written with a key, its id is kept in `<output>/_PSEUDONYM_KEY_ID`; a missing
    key file is then an error (a new key would silently change every pseudonym between nights),
    and so is a different key."""
    marker, recorded = _recorded_id(output)
    if recorded is not None:
        if not _exists(path):
            raise ValueError(f"key file {path} is missing, but results in {output} were pseudonymised with key "
                             f"{recorded}; restore the key file (a new key would change every pseudonym)")
    key = load_or_create_key(path)
    if recorded is None:
        whole_file.write(marker, key_id(key).encode())
    elif recorded != key_id(key):
        raise ValueError(f"key file {path} (id {key_id(key)}) is not the key the results in {output} were "
                         f"pseudonymised with (id {recorded}); pass that key's file with --pseudonym-key-file")
    return key


class KeyChanged(errors.ScreeningError, ValueError):
    """The key file or the output's key id changed while a run was pseudonymising with another key."""


def _recorded_id(output):
    """(the output's key-id marker, the id it records or None where there is none yet)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    marker = f"{output.rstrip('/')}/{KEY_ID_FILE}"
    if not FileSystems.exists(marker):
        return marker, None
    with FileSystems.open(marker, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return marker, f.read().decode().strip()


def confirm_key(output, ref, result_exists):
    """Just before a run publishes its result: the key it pseudonymised with is still the key file's,
    and the output's key-id marker names it (written now when no result holds another key's rows).

    Why: a run whose key is no longer stored would publish rows whose pseudonyms no one can map back
    to a study (two first runs creating a gs:// key at once; a key file replaced during a run)."""
    try:
        stored = key_id(read_key(ref.path))
    except (OSError, ValueError) as e:
        stored = f"unreadable: {e}"
    if stored != ref.key_id:
        raise _key_changed(f"pseudonym key file {ref.path} no longer holds the key this run used (id {ref.key_id}; "
                           f"it now holds {stored}): another run created or replaced it meanwhile", output)
    marker, recorded = _recorded_id(output)
    if recorded == ref.key_id:
        return
    if recorded and result_exists:
        raise _key_changed(f"the result in {output} was meanwhile published with another pseudonym key (id "
                           f"{recorded}; this run used {ref.key_id})", output)
    whole_file.write(marker, ref.key_id.encode())


def _key_changed(why, output):
    return KeyChanged(f"{why}; this run's rows were not published and the result in {output} is unchanged: run it again")


class KeyRef:
    """Where a worker finds the key (its file) and which key it must be (its public id): what travels
    in the pickled job graph instead of the key itself, which would be uploaded with the graph and
    stored with the job (Dataflow keeps the graph in its staging bucket).

    On Dataflow the file must be readable by the workers: give --pseudonym-key-file a gs:// path
    (bucket IAM guards it) or bake the file into the worker image."""

    def __init__(self, path, key_hex):
        self.path = path
        self.key_id = key_id(key_hex)

    def load(self):
        key = read_key(self.path)
        if key_id(key) != self.key_id:
            raise errors.ScreeningError(f"pseudonym key file {self.path} on this worker holds another key (id "
                                        f"{key_id(key)}, the job was launched with {self.key_id})")
        return key


def read_key(path):
    """The key in `path` (local or gs://); ValueError when it holds none."""
    if "://" in path:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            key = f.read().decode().strip()
    else:
        with open(path) as f:
            key = f.read().strip()
    if len(key) < 32:
        raise ValueError(f"pseudonym key file {path} holds no usable key")
    return key


class Pseudonymiser:
    """Maps paths to keyed pseudonyms; `None` key means real paths (--keep-paths)."""

    def __init__(self, key_hex=None):
        self._key = bytes.fromhex(key_hex) if key_hex else None

    @property
    def active(self):
        return self._key is not None

    def component(self, name):
        if not self.active or name in ("", ".", ".."):
            return name
        stem, ext = _split_ext(name)
        digest = hmac.new(self._key, stem.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
        return f"{PREFIX}{digest[:12]}{ext}"

    def member(self, path):
        """An archive member path, component by component ("" stays "")."""
        if not self.active or not path:
            return path
        return "/".join(self.component(c) for c in path.replace("\\", "/").split("/"))

    def uri(self, uri):
        """An input path or URI: scheme and bucket kept, every other component replaced."""
        if not self.active:
            return uri
        if "://" in uri:
            scheme, rest = uri.split("://", 1)
            bucket, _, path = rest.partition("/")
            return f"{scheme}://{bucket}/" + self.member(path)
        absolute = uri.startswith("/")
        out = self.member(uri.lstrip("/"))
        return "/" + out if absolute else out

    def scrub(self, text, *pairs):
        """`text` with each real string of `pairs` ((real, pseudonym), ...) replaced."""
        if not self.active:
            return text
        for real, fake in pairs:
            if real:
                text = text.replace(real, fake)
        return text


def _split_ext(name):
    lower = name.lower()
    for ext in (".tar.gz", ".tar.bz2", ".tar.xz"):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    stem, ext = posixpath.splitext(name)
    return (stem, ext) if stem else (name, "")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Find the real file behind a pseudonymised path.")
    parser.add_argument("--key-file", default=DEFAULT_KEY_FILE, help="the key the runs used")
    parser.add_argument("--find", required=True, help="a pseudonymised source_uri or member path (or part)")
    parser.add_argument("tree", help="local folder to search (the inputs of the run)")
    args = parser.parse_args(argv)
    with open(args.key_file) as f:
        ps = Pseudonymiser(f.read().strip())
    found = 0
    for root, dirs, files in os.walk(args.tree):
        for name in dirs + files:
            path = os.path.join(root, name)
            if args.find in ps.uri(os.path.abspath(path)) or ps.component(name) == args.find:
                print(path)
                found += 1
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())

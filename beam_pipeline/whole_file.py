"""Write a small file so that a reader sees the old one or the new one, never a cut one.

Two nightly runs may start on one output at once (a retry beside a slow run): a
reader that opens a marker or manifest while the other run is still writing it
would see it empty. Local files are written beside the target and renamed
(atomic on POSIX); on GCS an object only becomes visible once its upload is
complete, so writing it directly is already all-or-nothing.
"""
import os
import re


def write(path, data):
    """Replace `path` (local or gs://) by `data` (bytes)."""
    if "://" in path:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
        return
    tmp = _written_beside(path, data, 0o666)
    os.replace(tmp, path)


def create_new(path, data, mode=0o600):
    """Create local `path` holding `data`, complete, unless it exists: True if this call created it.

    O_EXCL alone would let a second process read the file between its creation and
    its first byte; a hard link of a complete file both refuses an existing target
    and publishes the whole content at once."""
    tmp = _written_beside(path, data, mode)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def being_written(path, target):
    """Whether `path` is the file a `write` or `create_new` of `target` (in another process too) is still
    writing beside it: a listing taken meanwhile shows it. Compared by name, as a listing may spell the folder
    otherwise."""
    name, target_name = (p.rstrip("/").rsplit("/", 1)[-1] for p in (path, target))
    return re.fullmatch(re.escape(target_name) + r"\.tmp-\d+-[0-9a-f]{8}", name) is not None


def _written_beside(path, data, mode):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp

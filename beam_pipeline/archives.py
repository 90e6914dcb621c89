"""Stream the members out of zip, tar and tar.gz archives (local or gs://).

Listing happens once per archive and yields `Chunk`s of member references, so
the chunks can be reshuffled across workers and each worker reads only its
own members:
  zip     the central directory gives each member's offset; a worker seeks to
          it and inflates that member alone.
  tar     headers give each member's data offset; a worker seeks and reads.
  tar.gz  gzip cannot seek, so the lister inflates the stream once and ships
          member bytes inside the chunk (bounded by chunk_size/chunk_bytes).
No step holds a whole archive in memory.
"""
import bisect
import bz2
import dataclasses
import gzip
import lzma
import os
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar",)
TGZ_SUFFIXES = (".tar.gz", ".tgz")
TBZ_SUFFIXES = (".tar.bz2", ".tbz2", ".tbz")
TXZ_SUFFIXES = (".tar.xz", ".txz")
# Compressed tars (members shipped inline). Decompressed by these file objects, which inflate at most
# what each read asks for, not by tarfile's "r|gz": its stream inflates a whole input block at once and
# copies the rest of that output on every read, quadratic on a high-ratio stream (9 s to skip a 210 MiB
# member of zeros; 0.6 s like this).
_DECOMPRESSORS = {"tgz": lambda f: gzip.GzipFile(fileobj=f, mode="rb"), "tbz": bz2.BZ2File, "txz": lzma.LZMAFile}


@dataclasses.dataclass(frozen=True)
class Limits:
    max_member_bytes: int = 512 * 1024 * 1024
    max_compression_ratio: float = 200.0  # only applied above 1 MiB uncompressed
    chunk_size: int = 64                 # members per chunk
    chunk_bytes: int = 32 * 1024 * 1024  # inline bytes per tar.gz chunk


@dataclasses.dataclass
class MemberRef:
    path: str                 # printable path inside the archive ("" for a loose file)
    size: int                 # uncompressed bytes
    locator: object = None    # ZipInfo (zip), data offset (tar), bytes (tar.gz), None (file)
    error_code: str = None    # set when the lister already knows the member is bad
    error_message: str = None


@dataclasses.dataclass
class Chunk:
    source_uri: str
    kind: str                 # zip / tar / tgz / tbz / txz / file / dicomweb
    index: int
    refs: list


# A chunk of one PACS study's instances; "dicomweb-series" holds every listed instance of one series,
# which is then fetched with one series request (dicomweb.retrieve_series) before any one by one.
DICOMWEB_KINDS = ("dicomweb", "dicomweb-series")


def _read_dicomweb(chunk):
    """(ref, bytes, error) for every ref of a DICOMweb chunk: a whole series from one series request
    where the chunk holds it, then every instance that answer did not deliver with a request of its own
    (a server without series retrieval, a cut or slow answer), so every ref still gets its row."""
    from beam_pipeline import dicomweb
    pending = {}
    for ref in chunk.refs:
        if ref.error_code is not None:
            yield ref, None, None
        else:
            pending[ref.locator[3]] = ref
    if chunk.kind == "dicomweb-series" and len(pending) > 1:
        base, study, series, _, max_bytes = next(iter(pending.values())).locator
        try:
            for sop, data in dicomweb.retrieve_series(base, study, series, set(pending), max_bytes):
                ref = pending.pop(sop, None)
                if ref is not None:
                    yield ref, data, None
        except Exception:  # noqa: BLE001 (refused, cut, slow or not offered: the fallback below covers it)
            pass  # what the series answer did not deliver is fetched one by one below
    for ref in pending.values():
        try:
            yield ref, dicomweb.retrieve(*ref.locator), None
        except Exception as e:  # HTTP errors after retries, a 404 for a deleted instance, ...
            yield ref, None, e


def archive_kind(path):
    lower = path.lower()
    if lower.endswith(ZIP_SUFFIXES):
        return "zip"
    if lower.endswith(TGZ_SUFFIXES):
        return "tgz"
    if lower.endswith(TBZ_SUFFIXES):
        return "tbz"
    if lower.endswith(TXZ_SUFFIXES):
        return "txz"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    return "file"


def safe_name(name):
    """A printable, valid-UTF-8 form of a member name; never used as a disk path.

    Control and format characters (newline, ESC, BEL, right-to-left override)
    are escaped, so a name cannot forge a line in a log or reorder text in the
    report.
    """
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") else c
                   for c in name)


def _escape(c):
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _open(uri):
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def _chunks(uri, kind, refs, limits):
    """Group an iterator of MemberRefs into Chunks, honouring count and byte limits."""
    batch, inline, index, seen = [], 0, 0, False
    for ref in refs:
        seen = True
        batch.append(ref)
        if isinstance(ref.locator, bytes):
            inline += len(ref.locator)
        if len(batch) >= limits.chunk_size or inline >= limits.chunk_bytes:
            yield Chunk(uri, kind, index, batch)
            batch, inline, index = [], 0, index + 1
    if batch:
        yield Chunk(uri, kind, index, batch)
    if not seen:  # every input a row: an archive without a single file is reported, not silently dropped
        yield Chunk(uri, kind, 0, [_whole_input_error("archive_empty", "the archive holds no file")])


def _whole_input_error(code, message):
    return MemberRef(path="", size=0, error_code=code, error_message=message)


def _zip_refs(uri, limits):
    try:
        f = _open(uri)
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
        archive_size = f.seek(0, os.SEEK_END)
    except Exception as e:
        yield _whole_input_error("archive_corrupt", f"zip index unreadable: {type(e).__name__}: {e}")
        return
    # Entries whose local data would overlap another's (several central-directory
    # entries pointing at one member inflate it many times: a zip bomb).
    starts = sorted({i.header_offset for i in infos})
    seen_offsets = set()
    for n, info in enumerate(infos):
        name = info.filename
        if name.endswith("/") and info.file_size == 0:
            continue  # a directory entry: structure, not a member
        ref = MemberRef(safe_name(name) if name else f"(unnamed member {n})", info.file_size, info)
        data_end = info.header_offset + zipfile.sizeFileHeader + len(info.orig_filename.encode("utf-8",
                                                                                            "surrogateescape"))
        at = bisect.bisect_right(starts, info.header_offset)
        nxt = starts[at] if at < len(starts) else archive_size
        if info.header_offset in seen_offsets:
            ref.error_code, ref.error_message = "overlapping_member", "entry shares its data with an earlier entry"
        elif data_end + info.compress_size > nxt:
            ref.error_code = "member_size_mismatch"
            ref.error_message = (f"declared compressed size {info.compress_size} runs past the next member "
                                 f"or the end of the archive")
        elif info.flag_bits & 0x1:
            ref.error_code, ref.error_message = "encrypted_member", "member is password-protected"
        elif info.file_size > limits.max_member_bytes:
            ref.error_code = "member_too_large"
            ref.error_message = f"{info.file_size} bytes > limit {limits.max_member_bytes}"
        elif (info.file_size > (1 << 20)
              and info.file_size > limits.max_compression_ratio * max(info.compress_size, 1)):
            ref.error_code = "suspicious_compression_ratio"
            ref.error_message = (f"{info.file_size} bytes from {info.compress_size} compressed "
                                 f"(ratio > {limits.max_compression_ratio:g})")
        seen_offsets.add(info.header_offset)
        yield ref
    f.close()


def _skipped_entry(member):
    """A coded ref for a tar entry that is not a regular file (links are never followed)."""
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        return MemberRef(safe_name(member.name), 0, None, "link_member", f"{kind}; links are not followed")
    kinds = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}
    return MemberRef(safe_name(member.name), 0, None, "special_member",
                     f"{kinds.get(member.type, 'unknown entry type ' + repr(member.type))}, not a file")


def _tar_member_ref(member, locator, limits):
    ref = MemberRef(safe_name(member.name), member.size, locator)
    if member.issparse():
        ref.locator = None
        ref.error_code = "sparse_member"
        ref.error_message = "sparse tar member: its stored bytes are not the file's content"
    elif member.size > limits.max_member_bytes:
        ref.locator = None
        ref.error_code = "member_too_large"
        ref.error_message = f"{member.size} bytes > limit {limits.max_member_bytes}"
    return ref


def _tar_refs(uri, limits, kind, archive_size=0):
    """Members of a tar (offsets) or compressed tar (inline bytes), streaming.

    Every entry but a directory gets a ref: links, devices and FIFOs with a
    code. In a compressed tar, a member whose bytes would take the inflated
    total past `max_compression_ratio` x the archive's size is coded and not
    held (a tar.gz of zeros is a zip bomb too).
    """
    compressed = kind != "tar"
    f = None
    try:
        f = _open(uri)
        stream = _DECOMPRESSORS[kind](f) if compressed else f
        # ignore_zeros: read on past an end-of-archive block, as GNU `tar -i` does (concatenated tars,
        # `cat a.tar b.tar`, would otherwise lose every member after the first archive's end).
        tar = tarfile.open(fileobj=stream, mode="r|" if compressed else "r:", ignore_zeros=True)
    except Exception as e:
        if f is not None:
            f.close()
        yield _whole_input_error("archive_corrupt", f"tar unreadable: {type(e).__name__}: {e}")
        return
    inflated = 0
    budget = limits.max_compression_ratio * max(archive_size, 1 << 20)
    try:
        while True:
            member = tar.next()
            if member is None:
                break
            tar.members = []  # tarfile caches every header; drop them to stay bounded
            if member.isdir():
                continue
            if not member.isfile():
                yield _skipped_entry(member)
                continue
            if not compressed:
                yield _tar_member_ref(member, member.offset_data, limits)
                continue
            ref = _tar_member_ref(member, None, limits)
            inflated += member.size
            if ref.error_code is None and inflated > budget:
                ref.error_code = "suspicious_compression_ratio"
                ref.error_message = (f"{inflated} bytes inflated from a {archive_size}-byte archive "
                                     f"(ratio > {limits.max_compression_ratio:g})")
            if ref.error_code is None:
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise EOFError(f"member {ref.path!r} cut at {len(data)} of {member.size} bytes")
                ref.locator = data
            yield ref
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as e:
        yield _whole_input_error("archive_truncated", f"archive ends early: {type(e).__name__}: {e}")
    finally:
        f.close()


def _not_regular(uri):
    """A reason when a local input is a FIFO, socket or device (opening a FIFO blocks forever)."""
    if "://" in uri:
        return None
    try:
        mode = os.stat(uri).st_mode
    except OSError:
        return None  # the reader reports it as unreadable
    if stat.S_ISREG(mode):
        return None
    return {stat.S_ISFIFO(mode): "a FIFO", stat.S_ISSOCK(mode): "a socket",
            stat.S_ISCHR(mode): "a character device", stat.S_ISBLK(mode): "a block device"}.get(True, "not a file")


def list_chunks(uri, size, limits=Limits()):
    """Chunks of member references for one input file (archive or loose image)."""
    kind = archive_kind(uri)
    reason = _not_regular(uri)
    if reason:
        return [Chunk(uri, "file", 0, [MemberRef("", 0, None, "not_a_regular_file",
                                                 f"input is {reason}; never opened")])]
    if kind == "file":
        ref = MemberRef("", size)
        if size > limits.max_member_bytes:
            ref.error_code = "member_too_large"
            ref.error_message = f"{size} bytes > limit {limits.max_member_bytes}"
        return [Chunk(uri, "file", 0, [ref])]
    refs = {"zip": lambda: _zip_refs(uri, limits),
            "tar": lambda: _tar_refs(uri, limits, "tar"),
            "tgz": lambda: _tar_refs(uri, limits, "tgz", size),
            "tbz": lambda: _tar_refs(uri, limits, "tbz", size),
            "txz": lambda: _tar_refs(uri, limits, "txz", size)}[kind]()
    return _chunks(uri, kind, refs, limits)


def _read_zip_member(f, info):
    f.seek(info.header_offset)
    header = f.read(zipfile.sizeFileHeader)
    if len(header) != zipfile.sizeFileHeader:
        raise zipfile.BadZipFile("truncated local file header")
    fields = struct.unpack(zipfile.structFileHeader, header)
    if fields[zipfile._FH_SIGNATURE] != zipfile.stringFileHeader:
        raise zipfile.BadZipFile("bad local file header signature")
    f.read(fields[zipfile._FH_FILENAME_LENGTH] + fields[zipfile._FH_EXTRA_FIELD_LENGTH])
    with zipfile.ZipExtFile(f, "r", info, None, False) as member:
        return member.read()  # verifies the CRC at EOF


def read_members(chunk):
    """Yield (ref, bytes | None, error | None) for every ref of `chunk`, in order.

    A ref the lister already marked bad yields (ref, None, None). One member's
    failure never stops the others.
    """
    if chunk.kind in _DECOMPRESSORS:
        for ref in chunk.refs:
            yield ref, ref.locator, None
        return
    if chunk.kind in DICOMWEB_KINDS:  # locator: (base URL, study, series, sop, max bytes)
        yield from _read_dicomweb(chunk)
        return
    try:
        f = _open(chunk.source_uri) if any(r.error_code is None for r in chunk.refs) else None
    except Exception as e:
        for ref in chunk.refs:
            yield ref, None, e
        return
    try:
        for ref in chunk.refs:
            if ref.error_code is not None:
                yield ref, None, None
                continue
            try:
                if chunk.kind == "zip":
                    data = _read_zip_member(f, ref.locator)
                elif chunk.kind == "tar":
                    f.seek(ref.locator)
                    data = f.read(ref.size)
                    if len(data) != ref.size:
                        raise EOFError(f"member cut at {len(data)} of {ref.size} bytes")
                else:
                    data = f.read()
                yield ref, data, None
            except Exception as e:
                yield ref, None, e
    finally:
        if f is not None:
            f.close()


def is_resource_fork(path):
    parts = path.replace("\\", "/").split("/")
    return "__MACOSX" in parts or os.path.basename(path).startswith("._")

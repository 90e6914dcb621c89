"""Archive expansion: peak memory and read throughput on very large archives.

  .venv/bin/python bench/archive_memory.py [--gib 2] [--members 100000]

Each case runs in a fresh process that lists and reads every member exactly
as the pipeline's ListMembers + Decode stages do (archives.list_chunks +
archives.read_members), and reports that process's peak RSS (VmHWM).
The limit is a plain sequential read of the same file in 8 MiB blocks. For
zips it also times the standard library's way (one zipfile.ZipFile per chunk,
ZipFile.open per member): `zipfile_open_seconds_ratio` is its time over ours.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, %(repo)r)
from beam_pipeline import archives
path, mode = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if mode == "plain":
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass
    members = 0
elif mode == "zipfile_open":
    # The alternative issue 18 asked to measure: one zipfile.ZipFile per chunk and ZipFile.open
    # per member (the standard library's own checks) instead of the offset reader.
    import zipfile
    members = 0
    limits = archives.Limits(max_member_bytes=1 << 30)
    for chunk in archives.list_chunks(path, os.path.getsize(path), limits):
        with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
            for ref in chunk.refs:
                with zf.open(ref.locator.filename) as m:
                    m.read()
                members += 1
else:
    members = 0
    limits = archives.Limits(max_member_bytes=1 << 30)
    for chunk in archives.list_chunks(path, os.path.getsize(path), limits):
        for ref, data, err in archives.read_members(chunk):
            if mode == "expand":  # "expand_any": members the lister marks (empty, ...) count too
                assert err is None and ref.error_code is None, (ref, err)
            members += 1
secs = time.perf_counter() - t0
print(json.dumps({"seconds": secs, "members": members,
                  "peak_rss_mib": %(peak)s}))
"""


def measure(path, mode):
    code = _CHILD % {"repo": common.REPO, "peak": common.PEAK_RSS_MIB}
    out = subprocess.run([sys.executable, "-c", code, path, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_big_zip(path, gib, member_mib=4):
    block = os.urandom(member_mib << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for i in range(int(gib * 1024 / member_mib)):
            zf.writestr(f"series/{i:06d}.dcm", block[i % 997:] + block[:i % 997])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--empty-members", type=int, default=1_000_000,
                        help="also a zip of this many empty members (0: skip); issue 27's bound: under 1 GiB")
    parser.add_argument("--only-empty", action="store_true",
                        help="measure only the empty-members zip (results in archive_memory_empty.json)")
    parser.add_argument("--work", default=tempfile.mkdtemp(prefix="bench-archive-"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    cases = []
    big = os.path.join(args.work, "big.zip")
    if not args.only_empty:
        blobs, _ = common.image_bytes(min(args.members, 2000))
        make_big_zip(big, args.gib)
        cases.append(("zip", f"{args.gib:g} GiB, 4 MiB members", big, False))
        many_zip = os.path.join(args.work, "many.zip")
        many_tgz = os.path.join(args.work, "many.tar.gz")
        members = [blobs[i % len(blobs)] for i in range(args.members)]
        common.write_zip(many_zip, members)
        common.write_tgz(many_tgz, members)
        del members
        cases.append(("zip", f"{args.members} members", many_zip, False))
        cases.append(("tar.gz", f"{args.members} members", many_tgz, False))
    if args.empty_members:
        empty_zip = os.path.join(args.work, "empty.zip")
        with zipfile.ZipFile(empty_zip, "w", zipfile.ZIP_STORED) as zf:
            for i in range(args.empty_members):
                zf.writestr(f"s/{i:07d}.dcm", b"")
        cases.append(("zip", f"{args.empty_members} empty members", empty_zip, True))
    rows = []
    for kind, what, path, empty in cases:  # empty: its members are marked by the lister, not read
        size = os.path.getsize(path)
        measure(path, "plain")  # warm the page cache so both reads see the same cache state
        plain = measure(path, "plain")
        expand = measure(path, "expand_any" if empty else "expand")
        row = {"archive": f"{kind}: {what}", "file_mib": round(size / 2 ** 20, 1),
               "members": expand["members"], "peak_rss_mib": round(expand["peak_rss_mib"], 1),
               "expand_mib_per_s": round(size / 2 ** 20 / expand["seconds"], 1),
               "plain_read_mib_per_s": round(size / 2 ** 20 / plain["seconds"], 1),
               "ratio_to_plain_read": round(plain["seconds"] / expand["seconds"], 3)}
        if kind == "zip" and not empty:
            alt = measure(path, "zipfile_open")
            row["zipfile_open_seconds_ratio"] = round(alt["seconds"] / expand["seconds"], 2)
            row["zipfile_open_peak_rss_mib"] = round(alt["peak_rss_mib"], 1)
        else:
            row["zipfile_open_seconds_ratio"] = row["zipfile_open_peak_rss_mib"] = "n/a"
        rows.append(row)
        os.remove(path) if path == big or empty else None
    common.report("archive_memory_empty" if args.only_empty else "archive_memory", rows, {"peak_rss_target_mib": 1024,
                                           "note": "tar.gz throughput is of decompressed-stream reading; "
                                                   "plain read is of the compressed file"})


if __name__ == "__main__":
    main()

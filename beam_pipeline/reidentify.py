"""For authorised readers inside the hospital: pseudonyms back to what they stand for.

Outputs name exams and files by keyed pseudonyms (`p-` + 12 hex of an HMAC),
which cannot be reversed without the key. Whoever holds the key and can read
the inputs finds the real accession number or path in one step:

  python -m beam_pipeline.reidentify resolve --pseudonym-key-file KEY --input INPUT p-fdbb71f76a7f ...
  python -m beam_pipeline.reidentify report --pseudonym-key-file KEY --input INPUT OUTPUT --to FILE

`resolve` prints each pseudonym with its clear value (accession number with
its study date and Study Instance UID, or the path); `report` renders the
result's report for the reading room with clear accession numbers and paths,
to a file outside the output: the tables and the promoted report stay
pseudonymised. Nothing is stored: the map is rebuilt from the inputs each
time (file and folder names, DICOM headers of files and archive members,
QIDO-RS for dicomweb:// inputs).
"""
import argparse
import glob
import html
import os
import re
import sys

from beam_pipeline import archives, dicomweb, pseudonym

_PSEUDONYM = re.compile(r"p-[0-9a-f]{12}(?:\.[A-Za-z0-9]{1,8}){0,2}")


def clear_values(inputs, key, credentials_file=None):
    """{pseudonym: (clear value, what it is)} for everything the inputs name."""
    ps = pseudonym.Pseudonymiser(key)
    found = {}

    def add(clear, what):
        if clear:
            found.setdefault(ps.component(clear), (clear, what))

    for uri in inputs:
        if dicomweb.is_dicomweb(uri):
            _from_dicomweb(uri, credentials_file, add)
            continue
        if os.path.isdir(uri):
            paths = [os.path.join(d, f) for d, _, fs in os.walk(uri) for f in fs]
        elif any(c in uri for c in "*?["):  # a pattern, as brain-score records a folder input ("<folder>/**")
            paths = [p for p in glob.glob(uri, recursive=True) if os.path.isfile(p)]
        else:
            paths = [uri]
        for path in paths:
            for part in os.path.abspath(path).split(os.sep):
                add(part, "path component")
            _from_file(path, add)
    return found


def _from_file(path, add):
    """Member names and the accession numbers in DICOM headers of one file or archive."""
    try:
        chunks = archives.list_chunks(path, os.path.getsize(path))
        for chunk in chunks:
            for ref, data, _ in archives.read_members(chunk):
                for part in (ref.path or "").replace("\\", "/").split("/"):
                    add(part, "archive member path component")
                if data and data[128:132] == b"DICM":
                    _from_header(data, add)
    except Exception:  # an unreadable input names nothing; the job reported it already
        return


def _from_header(data, add):
    import io

    import pydicom
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:
        return
    acc = str(ds.get("AccessionNumber") or "")
    if acc:
        add(acc, f"accession number, study date {ds.get('StudyDate') or '-'}, "
                 f"StudyInstanceUID {ds.get('StudyInstanceUID') or '-'}")


def _from_dicomweb(uri, credentials_file, add):
    base, filters = dicomweb.parse(uri)
    dicomweb.configure(dicomweb.DEFAULT_MAX_PARALLEL, credentials_file)
    for item in dicomweb.paged(base, "studies", {**filters, "includefield": ["00080050", "00080020", "0020000D"]}):
        acc = dicomweb.value(item, "00080050")
        if acc:
            add(acc, f"accession number, study date {dicomweb.value(item, '00080020') or '-'}, "
                     f"StudyInstanceUID {dicomweb.value(item, '0020000D') or '-'}")


def reidentified(text, found, escape=True):
    """`text` with every known pseudonym replaced by its clear value (HTML-escaped for a page)."""
    def swap(m):
        token = m.group(0)
        clear = found.get(token)
        while clear is None and "." in token:  # 'p-...' followed by a sentence's full stop
            token = token.rsplit(".", 1)[0]
            clear = found.get(token)
        if clear is None:
            return m.group(0)
        rest = m.group(0)[len(token):]
        return (html.escape(clear[0]) if escape else clear[0]) + rest
    return _PSEUDONYM.sub(swap, text)


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m beam_pipeline.reidentify", description=__doc__.split("\n")[0],
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("resolve", "report"):
        s = sub.add_parser(name, allow_abbrev=False)
        s.add_argument("--pseudonym-key-file", default=pseudonym.DEFAULT_KEY_FILE,
                       help="the key the runs used (default %(default)s)")
        s.add_argument("--input", action="append", required=True,
                       help="the run's inputs (folders, archives, dicomweb:// queries); repeatable")
        s.add_argument("--dicomweb-credentials", default=None, help="as in brain-score")
    sub.choices["resolve"].add_argument("pseudonyms", nargs="+", help="p-... as shown in a report or table")
    sub.choices["report"].add_argument("output", help="the run's --output")
    sub.choices["report"].add_argument("--to", required=True,
                                       help="where to write the reading-room page (outside the output: it holds "
                                            "identifiers)")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    try:
        with open(args.pseudonym_key_file) as f:
            key = f.read().strip()
        pseudonym.Pseudonymiser(key)
    except (OSError, ValueError) as e:
        print(f"error: pseudonym key {args.pseudonym_key_file}: {e}", file=sys.stderr)
        return 2
    if any(dicomweb.has_userinfo(u) for u in args.input):
        print(f"error: {dicomweb.USERINFO_REFUSED}", file=sys.stderr)
        return 2
    try:
        found = clear_values(args.input, key, args.dicomweb_credentials)
    except (dicomweb.RetrieveError, dicomweb.CredentialsError, dicomweb.RedirectRefused) as e:
        # a PACS that cannot be searched resolves nothing: say which and why, not a traceback
        print(f"error: DICOMweb search failed: {e}", file=sys.stderr)
        return 2
    if args.command == "resolve":
        missing = 0
        for p in args.pseudonyms:
            clear = found.get(p)
            if clear is None:
                missing += 1
                print(f"{p}\tnot found in the inputs (another key, or inputs that no longer hold it)")
            else:
                print(f"{p}\t{clear[0]}\t({clear[1]})")
        return 1 if missing else 0
    try:
        write_reading_room(args.output, args.to, found)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Reading-room report: {args.to} ({len(found)} pseudonyms resolvable from the inputs)")
    return 0


def check_outside(output, to):
    """ValueError when `to` is inside `output`: the page holds identifiers and must not sit beside the
    pseudonymised result (nor be promoted, copied or served with it)."""
    out_root = os.path.realpath(output)
    target = os.path.realpath(to)
    if target == out_root or target.startswith(out_root.rstrip(os.sep) + os.sep):
        raise ValueError(f"--to {to} is inside the output {output}; the reading-room page holds identifiers and "
                         "must not sit beside the pseudonymised result")


def write_reading_room(output, to, found):
    """The result's report with every resolvable pseudonym in clear, written to `to` (outside `output`)."""
    from beam_pipeline import report, results_store
    check_outside(output, to)
    results = results_store.results_dir(output)
    page = reidentified(report.render(results), found)
    page = page.replace('href="heatmaps/', f'href="{os.path.abspath(results)}/heatmaps/')  # the page lives elsewhere
    page = page.replace("<h1>", '<p class="drift-warning"><b>Reading-room copy with patient identifiers:</b> '
                                "for use inside the hospital only; do not forward.</p><h1>", 1)
    with open(to, "w") as f:
        f.write(page)


if __name__ == "__main__":
    sys.exit(main())

"""What an incremental (--manifest) run does to the rows it carries over from the current result.

A night scores only new or changed inputs, but a changed input is part of something larger: a corrected
slice belongs to a folder study, a re-sent instance to a DICOM study whose other series did not change.
The promoted result must still hold every image once, from its newest scoring, and every series and study
row over all of its images. So before promotion:

  * carried image rows of an input scored again tonight are superseded (dropped, and their counts taken
    out of the result's counts), with the review overlays no row shows any more;
  * every study holding a row scored tonight or a superseded row is aggregated again, from tonight's rows
    and the carried rows of its other inputs, with the pipeline's own CombineFns (studies.aggregate).

Everything is read from the promoted result, which stays untouched until this run's result replaces it,
and written into the run's staging folder: a retried finalisation computes the same tables and counts.
"""
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import schema, studies


def read_table(path, columns=None):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return pq.read_table(f, columns=columns)


def replace_table(path, table):
    """A new file renamed into place, never the old one rewritten: a carried file in staging is a hard
    link to the promoted result's file, which must stay as it is until this result replaces it."""
    tmp = f"{path}.tmp"
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        pq.write_table(table, f)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def read_rows(paths):
    return [row for path in paths for row in read_table(path).to_pylist()]


def drop_superseded(results, staging, names, fresh_sources):
    """Filter the carried image tables `names` (read from `results`, written to `staging`) of every row
    whose input was scored again tonight; returns the rows dropped."""
    dropped = []
    value_set = pa.array(sorted(fresh_sources), pa.string())
    for name in names:
        sources = read_table(f"{results}/{name}", columns=["source_uri"]).column("source_uri")
        if not pc.any(pc.fill_null(pc.is_in(sources, value_set=value_set), False)).as_py():
            continue  # the common case, read one column only
        table = read_table(f"{results}/{name}")
        stale = pc.fill_null(pc.is_in(table.column("source_uri"), value_set=value_set), False)
        dropped.extend(table.filter(stale).to_pylist())
        replace_table(f"{staging}/{name}", table.filter(pc.invert(stale)))
    return dropped


def drop_orphan_heatmaps(staged_path, staged_images, superseded, fresh_rows):
    """Remove from staging the review overlays of superseded rows that no row of the new result shows (an
    overlay is named by its image's content, so a corrected slice gets a new one; a copy of the same image
    elsewhere keeps the old one). `staged_path` maps a row's heatmap_path to its staged file."""
    stale = {r["heatmap_path"] for r in superseded if r["heatmap_path"]}
    stale -= {r["heatmap_path"] for r in fresh_rows if r["heatmap_path"]}
    for path in staged_images if stale else ():
        stale -= set(read_table(path, columns=["heatmap_path"]).column("heatmap_path").to_pylist())
    for path in sorted(stale):
        if FileSystems.exists(staged_path(path)):
            FileSystems.delete([staged_path(path)])


def complete_studies(results, staging, carried, fresh_rows, superseded, fresh_tables):
    """Aggregate again every study touched tonight (see the module docstring).

    carried: {"images": [...], "series": [...], "studies": [...]} table names of the carried result;
    fresh_tables: {"series": [...], "studies": [...]} staged paths of tonight's tables."""
    key = studies.study_key_of_image
    ok = [(key(r), r) for r in fresh_rows if r["status"] == "ok"]
    dropped_ok = [(key(r), r) for r in superseded if r["status"] == "ok"]
    touched = {k for k, _ in ok + dropped_ok}
    if not touched:
        return
    fresh_sources = pa.array(sorted({r["source_uri"] for r in fresh_rows}), pa.string())
    others = []  # (study, row) of carried ok rows of touched studies whose input was not scored again
    for name in carried["images"]:
        table = read_table(f"{results}/{name}", columns=_NEAR_COLUMNS)
        keep = pc.and_(pc.and_(pc.equal(table.column("status"), "ok"), _near(table, [r for _, r in ok + dropped_ok])),
                       pc.invert(pc.fill_null(pc.is_in(table.column("source_uri"), value_set=fresh_sources), False)))
        if not pc.any(keep).as_py():
            continue  # the common case: nothing of tonight's studies in this file, a few columns read
        others.extend((k, r) for r in read_table(f"{results}/{name}").filter(keep).to_pylist() if (k := key(r)) in touched)
    if not others and not dropped_ok:
        return  # tonight's tables already hold these studies whole (new studies, or rescored in full)
    affected = {k for k, _ in others + dropped_ok}
    rows = [r for k, r in ok + others if k in affected]
    series, study_rows = studies.aggregate(rows)
    series_keys = {studies.series_key(r) for r in rows + [r for _, r in dropped_ok]}
    replace_rows([f"{staging}/{n}" for n in carried["series"]], series_keys)
    replace_rows([f"{staging}/{n}" for n in carried["studies"]], affected)
    replace_rows(fresh_tables["series"], series_keys, [studies.series_table_row(s) for s in series],
                 schema.SERIES_SCHEMA)
    replace_rows(fresh_tables["studies"], affected, [{k: s.get(k) for k in schema.STUDY_SCHEMA.names}
                                                      for s in study_rows], schema.STUDY_SCHEMA)


_NEAR_COLUMNS = ["status", "source_uri", "study_instance_uid", "patient_group"]


def _near(table, rows):
    """Rows of `table` that may share a study with `rows`: the same StudyInstanceUID, --group-pattern patient
    or folder. A cheap superset, so that a large carried result is not read into Python; the study key
    (studies.study_key_of_image) decides."""
    def among(column, values):
        return pc.fill_null(pc.is_in(column, value_set=pa.array(sorted(values), pa.string())), False)

    def parent(column):
        return pc.replace_substring_regex(column, pattern="/[^/]*$", replacement="")

    uid = table.column("study_instance_uid")
    dicom = pc.invert(pc.is_null(uid))
    uids = {r["study_instance_uid"] for r in rows if r["study_instance_uid"]}
    plain = [r for r in rows if not r["study_instance_uid"]]
    groups = {r["patient_group"] for r in plain if r["patient_group"]}
    parents = {r["source_uri"].rpartition("/")[0] for r in plain}
    non_dicom = pc.or_(among(table.column("patient_group"), groups), among(parent(table.column("source_uri")), parents))
    return pc.if_else(dicom, among(uid, uids), non_dicom)


def replace_rows(paths, keys, new_rows=(), schema_=None):
    """Drop the rows keyed `keys` (column study_key) from the tables at `paths`; put `new_rows` into the first."""
    if new_rows and not paths:  # Beam writes an empty shard for an empty table; never drop rows silently
        raise RuntimeError("no table of tonight's to hold the studies aggregated again; the result is not promoted")
    value_set = pa.array(sorted(keys), pa.string())
    for i, path in enumerate(paths):
        table = read_table(path)
        kept = table.filter(pc.invert(pc.fill_null(pc.is_in(table.column("study_key"), value_set=value_set), False)))
        if i == 0 and new_rows:
            kept = pa.concat_tables([kept.cast(schema_), pa.Table.from_pylist(list(new_rows), schema=schema_)])
        if kept.num_rows != table.num_rows or (i == 0 and new_rows):
            replace_table(path, kept)

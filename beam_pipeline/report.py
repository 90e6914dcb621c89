"""Self-contained HTML run report, built from a run's outputs alone.

  python -m beam_pipeline.report <output-prefix>

Reads _SUMMARY.json, the image and study Parquet tables, the heatmap PNGs
and the model's metadata of one result folder, and writes report.html there with every image
inlined (data: URIs): it opens offline, from a bucket download or an e-mail.
"""
import base64
import collections
import html
import io
import os
import posixpath
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import model_store
from beam_pipeline import summary as run_summary
from beam_pipeline.studies import NON_AXIAL, flagged_label, plane_of_label
from screening_core import artifact, looks

MAX_FLAGGED_STUDIES = 50
MAX_ERRORS = 200


def _read(path):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


BATCH_ROWS = 65536


def _batches(pattern, columns=None):
    """Record batches of every Parquet file matching `pattern`, in file order: no table is read whole
    (the image table is 10 M rows a night in docs/dataflow.md; series and study tables 1/20 and 1/100 of it)."""
    for path in sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            pf = pq.ParquetFile(f)
            # a table written before a column was added: read what it has (readers use row.get)
            present = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
            yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=present)


def _top(pattern, k, flagged_only=False):
    """(the k rows of highest max_probability, as dicts; rows; flagged rows) of a series or study table,
    in one streaming pass that holds k rows and one batch. Ties keep file order, as a full sort would."""
    best, n, n_flagged = None, 0, 0
    for batch in _batches(pattern):
        n += batch.num_rows
        flags = batch.column("flagged")
        n_flagged += pc.sum(flags).as_py() or 0
        part = pa.Table.from_batches([batch.filter(flags) if flagged_only else batch])
        # promote: a table written before a column was added reads as nulls in that column
        best = part if best is None else pa.concat_tables([best, part], promote_options="default")
        best = best.sort_by([("max_probability", "descending")]).slice(0, k)
    return ([] if best is None else best.to_pylist()), n, n_flagged


_IMAGE_COLUMNS = ["status", "error_code", "error_message", "source_uri", "member_path", "tumor_probability",
                  "threshold", "threshold_source", "heatmap_path", "study_instance_uid", "series_instance_uid",
                  "series_description", "series_number", "instance_number", "in_distribution", "turned_back_degrees",
                  "taken_for_negative"]


def _data_uri(data, mime="image/png"):
    return f"data:{mime};base64," + base64.b64encode(data).decode()


HISTOGRAM_BINS = 40


def _histogram_svg(counts, threshold):
    """The probability histogram as a small SVG: drawn directly, no plotting library in the launcher
    (matplotlib took 0.2 s per report for these 40 bars), and sharp at any zoom."""
    w, h, left, right, top, bottom = 540, 234, 52, 12, 12, 40
    pw, ph = w - left - right, h - top - bottom
    peak = max(int(np.max(counts)), 1)
    bar = pw / len(counts)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
    for i, c in enumerate(counts):
        bh = ph * int(c) / peak
        if bh > 0:
            parts.append(f'<rect x="{left + i * bar:.1f}" y="{top + ph - bh:.1f}" width="{bar:.1f}" '
                         f'height="{bh:.1f}" fill="#4c72b0"/>')
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + t * pw
        parts.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" stroke="#444"/>'
                     f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak:,}</text>'
                 f'<text x="{left - 6}" y="{top + ph}" text-anchor="end">0</text>'
                 f'<text x="{left + pw / 2}" y="{h - 6}" text-anchor="middle">tumor probability</text>'
                 f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">images</text>')
    if threshold is not None:
        x = left + min(max(float(threshold), 0.0), 1.0) * pw
        anchor = "end" if threshold > 0.7 else "start"
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#c44e52" stroke-width="2"/>'
                     f'<text x="{x + (-4 if anchor == "end" else 4):.1f}" y="{top + 14}" text-anchor="{anchor}" '
                     f'fill="#c44e52">threshold {float(threshold):.3f}</text>')
    parts.append("</svg>")
    return "".join(parts).encode()


def _scan_images(pattern, shown_uids, shown_sources):
    """One pass over the image table in record batches: the probability histogram, the threshold,
    the error count with the first MAX_ERRORS error rows, and the heatmap rows of the studies shown.

    Memory is one batch plus what the page shows, whatever the number of rows
    (bench/report_memory.py: peak RSS at 100 k and 1 M rows)."""
    counts = np.zeros(HISTOGRAM_BINS, np.int64)
    threshold, n_errors, errors, near, threshold_sources = None, 0, [], [], set()
    uids, sources = pa.array(shown_uids, pa.string()), pa.array(shown_sources, pa.string())
    for batch in _batches(pattern, _IMAGE_COLUMNS):
        ok = pc.equal(batch.column("status"), "ok")
        threshold_sources.update(pc.unique(pc.filter(batch.column("threshold_source"), ok)).to_pylist())
        probs = pc.filter(batch.column("tumor_probability"), ok).to_numpy(zero_copy_only=False)
        counts += np.histogram(probs, HISTOGRAM_BINS, (0.0, 1.0))[0]
        if threshold is None and len(probs):
            threshold = pc.filter(batch.column("threshold"), ok)[0].as_py()
        bad = batch.filter(pc.invert(ok))
        n_errors += bad.num_rows
        if len(errors) < MAX_ERRORS:
            errors += bad.slice(0, MAX_ERRORS - len(errors)).to_pylist()
        if len(uids) or len(sources):
            # A loose file's series is named by the folder holding it (studies.series_key).
            folder = pc.replace_substring_regex(batch.column("source_uri"), pattern="/[^/]*$", replacement="")
            loose = pc.and_(pc.equal(batch.column("member_path"), ""), pc.is_in(folder, sources))
            shown = pc.and_(ok, pc.and_(pc.is_valid(batch.column("heatmap_path")), pc.or_(
                pc.is_in(batch.column("study_instance_uid"), uids),
                pc.or_(pc.is_in(batch.column("source_uri"), sources), loose))))
            near += batch.filter(shown).to_pylist()
    return counts, threshold, n_errors, errors, near, threshold_sources


class Site(collections.namedtuple("Site", "looks planes relaxed")):
    """The looks and slice planes the applied site profile validated (each None: no profile, or no claim), and the
    checks its validation ran below their defaults (empty: none)."""

    @classmethod
    def of(cls, summary):
        return cls(summary.get("site_validated_looks"), summary.get("site_validated_planes"),
                   tuple(summary.get("site_relaxed_checks") or ()))


NO_SITE = Site(None, None, ())


def _member_html(md):
    """Red, above everything, when the run scored with an ensemble's member (--allow-member-model)."""
    note = artifact.member_note(md or {})
    return (f'<p id="member-model" class="drift-warning"><b>Not a screening model:</b> {_esc(note)}. This run was '
            "scored with it on purpose (--allow-member-model): its flags are not the ensemble's.</p>") if note else ""


def _validation_html(threshold_sources, md, site=NO_SITE):
    """Whether this site validated the model, where the reader looks first. Errs on the side of "not".

    Validated only when every scored row used a site profile that met its checks; otherwise, in red,
    what the model did on collections it never saw (its card's external figures)."""
    sources = {s for s in threshold_sources if s}
    if sources and all(s.startswith("site_profile:") and not s.endswith(":forced") for s in sources):
        ids = ", ".join(sorted(s.split(":")[1] for s in sources))
        covered = ("" if site.looks is None else
                   f" Looks validated: {', '.join(looks.NAMES[k] for k in site.looks if k in looks.NAMES) or 'none'};"
                   " flagged series of other looks are marked.")
        covered += ("" if site.planes is None else
                    f" Planes validated: {', '.join(site.planes) or 'none'}; flagged series in other planes are marked.")
        relaxed = ("" if not site.relaxed else
                   f" <b>Its checks were relaxed:</b> {_esc('; '.join(site.relaxed))}.")
        return (f'<p id="validation" class="validated">Site threshold applied: this model was validated at this '
                f'site (site profile {_esc(ids)}, brain-validate verdict "meets").{relaxed}{covered}</p>')
    if any(s.endswith(":forced") for s in sources):
        why = "a site profile whose validation did <b>not</b> meet its checks was forced onto this run"
    else:
        why = "no site profile was applied (threshold from the model" + (
            " or --threshold)" if "flag" in sources else ")")
    external = ((md or {}).get("validation_metrics") or {}).get("by_source", {}).get("external", {})
    figures = "; ".join(f"{_esc(k)} AUC {v['roc_auc']:.2f}" for k, v in external.items()
                        if k != "all" and v.get("roc_auc") is not None)
    seen = f" On collections it never saw: {figures}." if figures else ""
    return (f'<p id="validation" class="drift-warning"><b>Not validated at this site:</b> {why}. Its scores here '
            f"may be far from its own validation figures.{seen}{_targets_html(md)}{_tumor_free_html(md)}"
            f"{_look_check_html(md)}{_stress_html(md)} Run "
            "brain-validate on local labelled patients (docs/new_site.md) before anyone relies on it.</p>")


def _targets_html(md):
    """How many of its acceptance targets the model meets (trainer.targets --write); unmeasured ones are not met."""
    rows = ((md or {}).get("targets") or {}).get("rows") or []
    if not rows:
        return ""
    met = sum(r.get("met") is True for r in rows)
    return f" It meets {met} of its {len(rows)} acceptance targets (model card, \"Acceptance targets\")."


def _probe_looks(md):
    """{look: {"volumes", "slices", "flagged", "highest_volume"}} of the model's tumor-free probe
    (trainer.tumor_free_probe --write; "highest_volume" since session 16)."""
    return ((md or {}).get("tumor_free_probe") or {}).get("looks") or {}


def _tumor_free_html(md):
    """The model's false alarms on real heads without a tumor, by look (trainer.tumor_free_probe --write)."""
    probe = (md or {}).get("tumor_free_probe") or {}
    per_look = _probe_looks(md)
    if not per_look:
        return ""
    def share(a):
        worst = _worst_head(a)
        return f"{a['flagged']:.0%}" + (f" (one head {worst:.0%})" if worst is not None else "")
    parts = ", ".join(f"{_esc(name)} {share(per_look[k])}" for k, name in looks.NAMES.items() if k in per_look)
    planes = ", ".join(f"{_esc(k)} {share(a)}" for k, a in (probe.get("planes") or {}).items())
    return (f" On {probe.get('volumes', '?')} real heads without a tumor it flagged, at its own threshold, "
            f"<b>{parts}</b> of slices" + (f", and of the same heads cut in other planes <b>{planes}</b>" if planes
                                           else "") + ".")


def _look_check_html(md):
    """The share of tumor slices the model found by look on patients whose looks share one tumor mask
    (trainer.look_check --write), with the looks it finds least often named: there an unflagged series is no
    negative."""
    check = (md or {}).get("look_check") or {}
    per_look = check.get("looks") or {}
    if not per_look:
        return ""
    parts = ", ".join(f"{_esc(name)} {per_look[k]['found']:.0%}" for k, name in looks.NAMES.items() if k in per_look)
    best = max(a["found"] for a in per_look.values())
    weak = [looks.NAMES[k] for k in looks.NAMES if k in per_look and per_look[k]["found"] < best - LOOK_MISS_GAP]
    tail = ""
    if weak:
        named = weak[0] if len(weak) == 1 else f"{', '.join(weak[:-1])} or {weak[-1]}"
        tail = f": a {_esc(named)} series without a flag is not a negative, read it"
    return (f" On the same tumors seen in several looks ({check.get('patients', '?')} patients) it found "
            f"<b>{parts}</b> of tumor slices{tail}.")


def _stress_html(md):
    """How often the model flags a real tumor set into the tumor-free slices of its validation collections
    (trainer.stress transplant --write): a tumor on a slice that looks like a tumor-free collection's can be vetoed
    by that look, which no validation split shows."""
    sources = ((md or {}).get("stress") or {}).get("sources") or {}
    found = {k: v["flagged_changed"] for k, v in sources.items() if v.get("flagged_changed") is not None}
    text = ""
    if found:
        parts = ", ".join(f"{_esc(k)} {v:.0%}" for k, v in found.items())
        text = (f" With a real tumor set into tumor-free slices of its validation collections it flagged <b>{parts}"
                f"</b> of them: a tumor on a slice that looks like a tumor-free collection (axial T2 archives look "
                f"like brain-mri's) can go unflagged.")
    return text + _spots_html(md)


def _spots_html(md):
    """Where the model flags more tumor-free FLAIR/T2 slices once small bright foci, the look of white-matter
    lesions, are set into them (trainer.stress spots --write): a flag on an MS or small-vessel-disease scan is not
    a tumor. Each source that moved is named, not a pooled share that the healthy planes' quiet slices would dilute."""
    sources = ((md or {}).get("stress_spots") or {}).get("sources") or {}
    moved = {k: v for k, v in sources.items() if v.get("n_changed") and v["flagged_changed"] > v["flagged_plain"]}
    if not moved:
        return ""
    parts = ", ".join(f"{_esc(k.partition(':')[2] or k)} {v['flagged_plain']:.0%} &rarr; {v['flagged_changed']:.0%}"
                      for k, v in moved.items())
    return (f" With small bright foci like white-matter lesions set into tumor-free FLAIR and T2 slices it flagged more "
            f"of them: <b>{parts}</b>; a flag on a scan with multiple sclerosis or small-vessel disease is not a tumor "
            f"until read.")


LOOK_MISS_GAP = 0.15  # a look whose tumor slices are found this much less often than the best look's is named


def _worst_head(probe_look):
    """The share flagged of the look's worst volume where it stands 5 points above the pooled share, else None."""
    high = probe_look.get("highest_volume")
    if high is None or probe_look.get("volumes", 1) <= 1 or high - probe_look["flagged"] < 0.05:
        return None
    return high


LOOK_WARNING_SHARE = 0.2  # a look on which the model flags this share of tumor-free slices gets a note by its flags
UNTRAINED_LOOKS = ("dwi", "swi")  # no training collection holds a diffusion or susceptibility slice


def plane_caveat(plane, md, site_planes=None):
    """'sagittal slices: ...' for a series in a plane the model did not learn to read, '' otherwise. The model
    reads axial slices; where its tumor-free probe measured a plane (trainer.tumor_free_probe, "planes"), the
    note gives the share it flagged; where the applied site profile validated planes (`site_planes`) and not this
    one, it says so first."""
    if plane not in NON_AXIAL:
        return ""
    probe = (((md or {}).get("tumor_free_probe") or {}).get("planes") or {}).get(plane, {})
    share = probe.get("flagged")
    measured = (f"; it flags {share:.0%} of {plane} slices of heads without a tumor" if share is not None else "")
    here = "not validated at this site; " if site_planes is not None and plane not in site_planes else ""
    return f"{plane} slices: {here}the model was chosen on axial slices{measured}"


def look_caveat(label, md, site=NO_SITE, plane=None):
    """'T2: not validated at this site; ...' for a flagged series whose look (screening_core.looks, from its
    description or folder) is one where the model's flags are known to be unreliable: the model never trained
    on it, the applied site profile did not validate it (`site`: the profile's looks and planes, Site.of),
    or the tumor-free probe flagged at least LOOK_WARNING_SHARE of such slices; and, for a series whose `plane`
    is not axial, `plane_caveat`. '' otherwise."""
    look = looks.look_of(label)
    notes = []
    if look in UNTRAINED_LOOKS:
        notes.append("a look the model never trained on")
    if site.looks is not None and look not in site.looks:
        notes.append("not validated at this site")
    probe = _probe_looks(md).get(look, {})
    share, highest = probe.get("flagged"), probe.get("highest_volume")
    if share is not None and max(share, highest or 0) >= LOOK_WARNING_SHARE:
        worst = _worst_head(probe)
        notes.append(f"the model flags {share:.0%} of slices of heads without a tumor"
                     + (f", {worst:.0%} of one head's" if worst is not None else ""))
    text = f"{looks.NAMES[look]}: {'; '.join(notes)}" if notes else ""
    return "; ".join(c for c in (text, plane_caveat(plane, md, site.planes)) if c)


def _look_note(label, md, site=NO_SITE, plane=None):
    caveat = look_caveat(label, md, site, plane)
    return f' <b class="look-warning">({_esc(caveat)})</b>' if caveat else ""


def _model_metadata(summary):
    uri = summary.get("model_uri") or model_store.DEFAULT_MODEL
    try:
        return model_store.metadata(uri)
    except Exception:
        return None


def _drift_html(drift):
    """The first thing on the page: did tonight's input move away from the validation data?"""
    if not drift:
        return ""
    if not drift.get("assessed"):
        return f'<p id="drift" class="drift-none">Drift not assessed: {_esc(drift.get("reason"))}</p>'
    if drift.get("drifted"):
        items = "".join(f"<li>{_esc(r)}</li>" for r in drift["reasons"])
        return (f'<div id="drift" class="drift-warning"><b>Input drift: scores tonight are less trustworthy.</b>'
                f'<ul>{items}</ul>Validate the model on local data before relying on it (docs/new_site.md).</div>')
    warn = "".join(f" Note: {_esc(w)}." for w in drift.get("warnings", []))
    return (f'<p id="drift" class="drift-ok">No drift: {drift["ood_rate"]:.1%} of images out of distribution '
            f'(limit {drift["ood_rate_limit"]:.0%}); probability PSI {drift["score_psi"]:.2f}.{warn}</p>')


def _write_back_html(back):
    """Whether the reports reached the PACS: a failed store means a radiologist reading in the viewer does not
    see that series' result, so it is said where the reader looks first."""
    if not back:
        return ""
    from beam_pipeline.write_back import in_words, troubled
    return f'<p id="write-back" class="{"drift-warning" if troubled(back) else "drift-none"}">{_esc(in_words(back))}.</p>'


def _worklist_html(worklist, total, md=None, site=NO_SITE):
    """Studies by highest tumor probability: the order a radiologist should read them in; a flagged series of
    a look the model is unreliable on carries a note (_look_note)."""
    from beam_pipeline.studies import place_label
    if not worklist:
        return ""
    shown = f" (showing the {len(worklist)} highest of {total})" if total > len(worklist) else ""
    as_high = bool(tumor_free_maxima(md))
    rows = []
    for s in worklist:
        what = (f"exam {s['accession_number'] or '-'}, {_date(s['study_date'])}" if s["group_kind"] == "dicom_study"
                else f"patient {s.get('patient_group')}" if s["group_kind"] == "patient"
                else f"folder {place_label(s)}")
        rows.append(f"<tr class=\"{'flagged' if s['flagged'] else ''}\"><td>{s['max_probability']:.3f}</td><td>{_esc(what)}</td>"
                    f"<td>{_esc(', '.join(s['modalities']))}</td><td>{s['n_flagged']} of {s['n_images']} in "
                    f"{s['n_series']} series{_lesion_note(s)}</td><td>{_series_cell(s['flagged_series'], md, site)}</td>"
                    f"{_ood_cell(s)}" + (f"<td>{_esc(_as_high_cell(s, md))}</td>" if as_high else "")
                    + "</tr>")
    note = healthy_series_note(md)
    return (f'<h2>Worklist: studies by highest probability{shown}</h2><p>'
            + (f'<strong class="healthy-series">{_esc(note)}</strong> ' if note else "")
            + 'All flagged studies: '
            '<a href="flagged_studies.csv">flagged_studies.csv</a></p><table id="worklist"><tr><th>max p</th>'
            '<th>study</th><th>modalities</th><th>flagged slices</th><th>flagged series</th>'
            '<th>out of distribution</th>'
            + ('<th title="whole series of heads without a tumor in the model\'s evaluation whose highest slice scored '
               'at least this study\'s">tumor-free heads as high</th>' if as_high else "") + '</tr>'
            + "".join(rows) + "</table>")


def healthy_series_note(md):
    """How many whole series of heads without a tumor the model flagged in its own evaluation, at its own
    threshold (a series is flagged when its highest slice is: tumor_free_maxima), as a sentence; "" where the
    artifact has none. Why: at 5-25 % of a tumor-free head's slices flagged, nearly every tumor-free study
    carries a flag; the reader must read the worklist as an order, not as a set of findings."""
    maxima = [m for v in tumor_free_maxima(md).values() for m in v]
    threshold = (md or {}).get("threshold")
    if not maxima or threshold is None:
        return ""
    flagged = sum(m >= threshold for m in maxima)
    return (f"In its evaluation this model flagged {flagged} of {len(maxima)} series of heads without a tumor (a slice "
            "at or above its threshold): a flag places a study in the reading order, it is not a finding.")


def tumor_free_maxima(md):
    """{look: highest slice probability of each whole tumor-free series of that look in the artifact's
    evaluation} (lesion.tumor_free_series_max, trainer.lesion_eval), or {}."""
    return ((md or {}).get("lesion") or {}).get("tumor_free_series_max") or {}


def tumor_free_as_high(probability, md, flagged_series=()):
    """'3 of 42': how many whole tumor-free series of the model's evaluation reached this highest slice
    probability; "" where the artifact has none. A study's false-alarm rate at its own score: what a flag alone
    cannot say when nearly every tumor-free head has one. A flagged series of a look no such series had (T2,
    PD) is named: ranking high against FLAIR and T1 heads says nothing about it."""
    maxima = tumor_free_maxima(md)
    if not maxima or probability is None:
        return ""
    values = [m for v in maxima.values() for m in v]
    text = f"{sum(m >= probability for m in values)} of {len(values)}"
    missing = sorted({look for label in flagged_series or () for look in [looks.look_of(label)]
                      if look and look != "other" and look not in maxima})
    if missing:
        text += f" (none of them {', '.join(looks.NAMES.get(x, x) for x in missing)})"
    return text


def _as_high_cell(study, md):
    """tumor_free_as_high for a flagged study; "-" for one below the threshold, where "42 of 42" (every tumor-free
    head scored at least this) is true but reads like a warning about a study nothing flagged."""
    return tumor_free_as_high(study["max_probability"], md, study["flagged_series"]) if study["flagged"] else "-"


def _series_cell(labels, md, site=NO_SITE):
    return ", ".join(_esc(label) + _look_note(label, md, site, plane_of_label(label))
                     for label in labels) or "-"


def _ood_cell(row):
    """The study's share of images unlike the model's training images: its scores are less trustworthy."""
    n, total = row.get("n_out_of_distribution"), row.get("n_images") or 0
    if n is None:
        return "<td>-</td>"
    cls = ' class="ood"' if n else ""
    return f"<td{cls}>{n} of {total}{' (scores less trustworthy)' if n else ''}</td>"


def _ood_note(row):
    n = row.get("n_out_of_distribution")
    return f', <b class="ood">{n} out of distribution</b>' if n else ""


def _turned_note(series):
    """', 3 of 9 scored turned upright (...)' where the orientation network turned some slices of the series
    before scoring. A series comes in one orientation, so some of its slices turned and others not means the
    network erred on one part: a false turn (slab and skull-stripped sagittal or coronal series) or a missed one
    (40 brats-sample slices turned 90 degrees: 36 turned back); docs/output_schema.md."""
    n, total = series.get("n_turned_back"), series.get("n_images") or 0
    if not n:
        return ""
    why = ("the series came turned" if n == total else
           "a series comes in one orientation: either the turned or the other slices were scored the wrong way up")
    return f', <b class="ood">{n} of {total} scored turned upright</b> ({why})'


def _caption(r):
    """What a reader finds the image by: series (description, number) and instance number; the file for
    non-DICOM images. Out-of-distribution images are marked, and so are images the model's orientation network
    turned upright before scoring (that was its call, and a reader should check it) and negatives scored as their
    positive (the thumbnail shows the positive)."""
    if r.get("series_instance_uid"):
        series = r.get("series_description") or (f"series {r['series_number']}" if r.get("series_number") is not None
                                                 else "series ..." + r["series_instance_uid"][-6:])
        if r.get("series_description") and r.get("series_number") is not None:
            series += f" (series {r['series_number']})"
        where = f"{series}, image {r['instance_number'] if r.get('instance_number') is not None else '?'}"
    else:
        where = r["member_path"] or os.path.basename(r["source_uri"])
    ood = ' <b class="ood">out of distribution</b>' if r.get("in_distribution") is False else ""
    turned = r.get("turned_back_degrees")
    turned = f" <i>scored turned upright (it came turned {turned}&deg;)</i>" if turned else ""
    negative = " <i>scored as its positive (the image is a negative)</i>" if r.get("taken_for_negative") else ""
    return f"{_esc(where)} p={r['tumor_probability']:.3f}{ood}{turned}{negative}"


def _lesion_note(row):
    """', largest lesion 310 mm² (T2 AX, image 14)' (px without a pixel spacing) for rows of a lesion-map model,
    else '': where to look first. The place is named for study rows of DICOM series (a series row's own
    heading names its series; file members keep pseudonymised names that would not help a reader).

    An unflagged row's map may still outline something below the threshold: named as an outline, not a
    lesion, and not pointed at, so that a line of the worklist never reads like a finding the model did not make;
    a flagged row whose map outlines nothing says so, so that the missing outline never reads like an all-clear."""
    if row.get("max_lesion_area_px") is None:
        return ""
    if not row["max_lesion_area_px"]:  # a flag the map does not place (v32: 8 % of flagged tumor slices)
        return ", flagged but no lesion outlined: read every image" if row.get("flagged") else ", no lesion outlined"
    area = (f"{row['max_lesion_area_mm2']:.0f} mm²" if row.get("max_lesion_area_mm2") is not None
            else f"{row['max_lesion_area_px']:.0f} px")
    if row.get("flagged") is False:
        return f", largest map outline {area} (below the threshold)"
    member = row.get("largest_lesion_member") or ""
    where = (f" ({row['largest_lesion_series']}, {member})" if row.get("largest_lesion_series")
             and member.startswith("image ") else "")
    return f", largest lesion {area}{where}"


def _date(da):
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}" if da and len(da) == 8 and da.isdigit() else "no date"


def _in_words(by_status, by_error_code):
    """'1,234 scored, 3 errors (2 dicom_corrupt, 1 not_an_image), 2 skipped' instead of a raw dict."""
    words = [f"{by_status.get('ok', 0):,} scored"]
    for status, noun in (("error", "error"), ("skipped", "skipped")):
        n = by_status.get(status, 0)
        if n:
            words.append(f"{n:,} {noun}{'s' if noun == 'error' and n != 1 else ''}")
    if by_error_code:
        words[-1] += " (" + ", ".join(f"{v:,} {k}" for k, v in sorted(by_error_code.items(), key=lambda kv: -kv[1])) + ")"
    return ", ".join(words)


def flagged_csv(folder, md=None):
    """CSV of every flagged study, highest probability first, for the worklist system or a spreadsheet; its
    last column carries the report's caveats on flagged series of looks the model is unreliable on (`md`: the
    model's metadata, read from the summary's model when not given)."""
    import csv
    out = io.StringIO()
    cols = ["max_probability", "group_kind", "accession_number", "study_date", "study_instance_uid", "source_uri",
            "folder", "patient_group", "modalities", "n_series", "n_images", "n_flagged", "flagged_series",
            # where to look first (a lesion-map model; empty otherwise): the slice with the largest lesion
            "largest_lesion_series", "largest_lesion_member", "max_lesion_area_mm2", "max_lesion_area_px"]
    summary = run_summary.read(folder)
    md, site = md or _model_metadata(summary), Site.of(summary)
    w = csv.writer(out)
    as_high = bool(tumor_free_maxima(md))
    w.writerow([*cols, "look_caveats"] + (["tumor_free_heads_as_high"] if as_high else []))
    # Flagged studies only (the file lists them all), and only the columns written.
    flagged = [pa.Table.from_batches([b.filter(b.column("flagged")).select([c for c in cols if c in b.schema.names])])
               for b in _batches(folder.rstrip("/") + "/studies-*.parquet", cols + ["flagged"])]
    if flagged:
        rows = pa.concat_tables(flagged, promote_options="default").sort_by([("max_probability", "descending")])
        for r in rows.to_pylist():
            caveats = [f"{label} ({c})" for label in r["flagged_series"] or []
                       for c in [look_caveat(label, md, site, plane_of_label(label))] if c]
            w.writerow([f"{r['max_probability']:.4f}" if c == "max_probability" else
                        ";".join(r[c]) if isinstance(r.get(c), list) else
                        f"{r[c]:.0f}" if c.startswith("max_lesion_area") and r.get(c) is not None else
                        r.get(c) for c in cols] + [";".join(caveats)]
                       + ([tumor_free_as_high(r["max_probability"], md, r["flagged_series"])] if as_high else []))
    return out.getvalue()


def _esc(v):
    return html.escape("" if v is None else str(v))


def render(folder, md=None):
    """HTML for the result in `folder` (a promoted results/ folder or a staging folder); `md`: the model's
    metadata, read from the summary's model when not given."""
    prefix = folder.rstrip("/")
    summary = run_summary.read(folder)
    totals = summary.get("result") or summary  # a result can hold several incremental runs

    from beam_pipeline.studies import is_volume_series, place_label, series_key, series_label
    # The flagged section shows series with heatmaps; the worklist, studies. Both the top ones only.
    flagged, n_series, n_flagged = _top(prefix + "/series-*.parquet", MAX_FLAGGED_STUDIES, flagged_only=True)
    worklist, n_exams, _ = _top(prefix + "/studies-*.parquet", MAX_FLAGGED_STUDIES)
    # Heatmap rows of the studies on the page only (top MAX_FLAGGED_STUDIES), as Python rows.
    counts, threshold, n_errors, errors, near, threshold_sources = _scan_images(
        prefix + "/images-*.parquet", [s["study_instance_uid"] for s in flagged if s["study_instance_uid"]],
        [s["source_uri"] for s in flagged if not s["study_instance_uid"]])
    by_study = {}
    for r in near:
        by_study.setdefault(series_key(r), []).append(r)
    md = md or _model_metadata(summary)
    site = Site.of(summary)  # Nones: no site profile applied (or one without looks or planes)
    parts = [f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>Brain-MRI screening run {_esc(summary['run_id'])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}}
.notice{{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px}}
.study{{border:1px solid #bbb;margin:12px 0;padding:8px}} .study img{{margin:4px;border:1px solid #999}}
.prob{{font-weight:bold;color:#c44e52}}
.drift-warning{{background:#f8d7da;border:1px solid #c44e52;padding:8px 12px}}
.validated{{background:#d4edda;border:1px solid #5a9;padding:8px 12px}}
.ood{{color:#8a5a00;background:#fff3cd}} .look-warning{{color:#8a5a00}}
</style></head><body>
<h1>Brain-MRI screening run <code>{_esc(summary['run_id'])}</code></h1>
<p class="notice"><b>Screening aid, not a diagnostic device.</b> Scores prioritise studies for a radiologist;
every study still needs a radiologist's read.</p>
{_member_html(md)}
{_validation_html(threshold_sources, md, site)}
{_drift_html(summary.get('drift'))}
{_write_back_html(summary.get('write_back'))}
<h2>Summary</h2><table id="summary">
<tr><th>rows (images)</th><td>{totals['rows']}</td></tr>
<tr><th>by status</th><td>{_esc(_in_words(totals['by_status'], totals.get('by_error_code', {})))}</td></tr>
<tr><th>flagged images</th><td>{totals['flagged']}</td></tr>
<tr><th>out of distribution (below threshold, not judged)</th><td>{totals.get('out_of_distribution', 0)}</td></tr>
<tr><th>runs in this result</th><td>{_esc(", ".join(totals.get("run_ids", [summary["run_id"]])))}</td></tr>
<tr><th>flagged series / folders</th><td>{n_flagged} of {n_series}</td></tr>
<tr><th>throughput (last run)</th><td>{summary['images_per_second']} images/s over {summary['elapsed_seconds']} s</td></tr>
<tr><th>inputs</th><td>{totals['sources']}</td></tr>
</table>"""]
    parts.append(_worklist_html(worklist, n_exams, md, site))
    if counts.sum():
        parts.append(f'<h2>Probabilities</h2><img id="histogram" alt="histogram of tumor probabilities" '
                     f'src="{_data_uri(_histogram_svg(counts, threshold), "image/svg+xml")}">')
    shown = f" (showing the {len(flagged)} highest)" if n_flagged > len(flagged) else ""
    parts.append(f'<h2>Flagged series ({n_flagged}){shown}</h2><div id="flagged">')
    for s in flagged:
        # No 60-character UIDs as headings: what a radiologist recognises (series, exam, date).
        title = (f"{series_label(s)} ({s['modality'] or '-'}) of exam {s.get('accession_number') or '-'}, "
                 f"{_date(s.get('study_date'))}"
                 if s["study_instance_uid"] else
                 f"folder {series_label(s)} of patient {s['patient_group']}" if s.get("patient_group") else
                 f"volume {place_label(s)}" if is_volume_series(s) else f"folder {place_label(s)}")
        parts.append(f'<div class="study" data-max-probability="{s["max_probability"]:.4f}"><h3>{_esc(title)}</h3>'
                     f'<p>max <span class="prob">{s["max_probability"]:.3f}</span>, mean {s["mean_probability"]:.3f}, '
                     f'{s["n_flagged"]} of {s["n_images"]} images flagged{_lesion_note(s)}{_ood_note(s)}'
                     f'{_turned_note(s)}; '
                     f'modality {_esc(s["modality"] or "-")}{_look_note(flagged_label(s), md, site, s.get("plane"))}</p>')
        top = sorted((r for r in by_study.get(s["study_key"], []) if r["heatmap_path"]),
                     key=lambda r: -r["tumor_probability"])[:4]
        for r in top:
            try:
                # Read from this folder: rows name the promoted path, which a staged report precedes.
                src = _data_uri(_read(f"{prefix}/heatmaps/{posixpath.basename(r['heatmap_path'])}"))
            except Exception:
                continue
            # The thumbnail opens the full-size overlay (heatmaps/ beside this page).
            full = f"heatmaps/{posixpath.basename(r['heatmap_path'])}"
            parts.append(f'<figure style="display:inline-block"><a href="{_esc(full)}" target="_blank">'
                         f'<img class="heatmap" src="{src}" alt="input and review overlay (lesion map or Grad-CAM) of '
                         f'{_esc(r["member_path"])}" width="256"></a><figcaption>{_caption(r)}</figcaption></figure>')
        parts.append("</div>")
    parts.append("</div>")
    more = f" (showing the first {len(errors)})" if n_errors > len(errors) else ""
    parts.append(f'<h2>Errors and skipped inputs ({n_errors}){more}</h2><table id="errors">'
                 "<tr><th>status</th><th>code</th><th>input</th><th>member</th><th>message</th></tr>")
    for r in errors:
        parts.append(f"<tr><td>{_esc(r['status'])}</td><td>{_esc(r['error_code'])}</td>"
                     f"<td>{_esc(os.path.basename(r['source_uri']))}</td><td>{_esc(r['member_path'])}</td>"
                     f"<td>{_esc((r['error_message'] or '')[:200])}</td></tr>")
    parts.append("</table>")
    parts.append('<h2>Model</h2><table id="model">')
    m = summary["model"]
    parts.append(f"<tr><th>name / version</th><td>{_esc(m['model_name'])} v{_esc(m['model_version'])}</td></tr>"
                 f"<tr><th>sha256</th><td><code>{_esc(m['model_sha256'])}</code></td></tr>")
    if md and md.get("validation_metrics"):
        v = md["validation_metrics"]
        parts.append(f"<tr><th>validation</th><td>AUC {v['roc_auc']:.4f}; sensitivity {v['sensitivity']:.3f}, "
                     f"specificity {v['specificity']:.3f} at threshold {md['threshold']:.4f} (n={v['n']})</td></tr>")
    parts.append("<tr><th>intended use</th><td>Screening aid that prioritises brain-MRI studies for a "
                 "radiologist. Research model; <b>not a diagnostic device</b>.</td></tr></table>")
    parts.append("""<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});
</script></body></html>""")
    return "\n".join(parts)


def write_report(folder):
    """report.html and, beside it, flagged_studies.csv (every flagged study; the page shows the top ones)."""
    md = _model_metadata(run_summary.read(folder))  # verified once: it hashes the model's files
    with FileSystems.create(folder.rstrip("/") + "/flagged_studies.csv", mime_type="text/csv",
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(flagged_csv(folder, md).encode())
    path = folder.rstrip("/") + "/report.html"
    with FileSystems.create(path, mime_type="text/html", compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(render(folder, md).encode())
    return path


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipeline.report",
        description="Rebuild <output>/results/report.html from a finished run's tables and _SUMMARY.json.")
    parser.add_argument("output", help="the run's --output prefix (local or gs://), or its results/ folder")
    args = parser.parse_args(argv)
    from beam_pipeline import results_store
    for folder in (results_store.results_dir(args.output), args.output):
        if run_summary.exists(folder):
            print(write_report(folder))
            return 0
    print(f"error: {args.output} holds no finished run (no results/_SUMMARY.json)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The lesion-first model's acceptance targets, measured on an artifact: each figure, its CI, met or not.

Why: the card holds every figure, but spread over a dozen sections and mostly at the operating threshold,
while the targets are points of ROC curves (sensitivity at a specificity), AUCs per sequence, map figures
and level bins. Whoever decides the default, and whoever reads the card, should see in one table which
targets the model misses and by how much, measured the same way for every model. A target whose figures the
artifact does not carry is listed as not measured, never as met.

  python -m trainer.targets models/brain-tumor-cnn/21            # print the table
  python -m trainer.targets models/brain-tumor-cnn/21 --write    # and store it in metadata.json (re-sealed)

Exits 0 either way: missing a target is a finding, not an error (the default is chosen by the cross-collection
figures, docs/model_v4_notes.md).
"""
import argparse
import csv
import os
import sys

import numpy as np

from screening_core import artifact, metrics
from trainer import HelpFormatter

BOOTSTRAP = 1000

# (split, source, what, target): ROC figures of one source of validation_predictions.csv
ROC_TARGETS = (
    ("validation", "brain-mri", "auc", 0.995),
    ("validation", "brain-mri", "sensitivity_at_specificity_0.95", 0.98),
    ("held_out_site", "lgg/flair", "auc", 0.95),
    ("held_out_site", "lgg/flair", "specificity_at_sensitivity_0.90", 0.85),
)
LEVEL_BINS = "tumor-free level bins whose median is above the threshold (target: none)"
EXTERNAL_AUC = ("brats-sample/", 0.90)  # every sequence of the collection never trained on
CROSS_COLLECTION_AUC = 0.85  # a check trained without a collection, scored on it
MAP_TARGETS = (("validation/lgg/flair", "dice", 0.6), ("validation/lgg/flair", "pointing_game", 0.8),
               ("validation/lgg/flair", "mass_inside_mask", 0.5))


def _roc_figure(labels, scores, what):
    if what == "auc":
        return metrics.roc_auc(labels, scores)
    name, _, level = what.rpartition("_")
    if name == "sensitivity_at_specificity":
        return metrics.sensitivity_at_specificity(labels, scores, float(level))
    if name == "specificity_at_sensitivity":
        return metrics.specificity_at_sensitivity(labels, scores, float(level))
    raise ValueError(f"unknown ROC figure {what!r}")


def roc_figure_with_ci(labels, scores, groups, what, n=BOOTSTRAP, seed=0):
    """(figure, [low, high]): the 95 % interval resamples whole groups (patients, near-duplicate groups); None
    for fewer than two groups, where resampling has nothing to vary."""
    y, s = np.asarray(labels).astype(bool), np.asarray(scores, np.float64)
    value = _roc_figure(y, s, what)
    if len(set(groups)) < 2:
        return float(value), None
    draws = [_roc_figure(y[idx], s[idx], what) for idx in metrics.group_resamples(y, groups, n, seed)]
    ci = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if draws else None
    return float(value), ci


def _row(target, what, value, ci=None, n=None, groups=None):
    met = None if value is None or np.isnan(value) else bool(value >= target)
    return {"what": what, "target": target, "value": None if met is None else round(float(value), 4),
            "ci95": ci and [round(c, 4) for c in ci], "n": n, "groups": groups, "met": met}


def _predictions(artifact_dir):
    path = os.path.join(artifact_dir, artifact.PREDICTIONS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def measure(artifact_dir, metadata, bootstrap=BOOTSTRAP):
    """The target rows of one artifact, from its scored rows and the figures its metadata carries."""
    rows, out = _predictions(artifact_dir), []
    by_key = {}
    for r in rows:
        by_key.setdefault((r["split"], r["source"]), []).append(r)

    def roc_row(split, source, what, target):
        part = by_key.get((split, source), [])
        labels = [int(r["label"]) for r in part]
        text = f"{split} {source}: {what.replace('_', ' ')}"
        if len(set(labels)) < 2:
            return _row(target, text, None)
        groups = [r["group"] for r in part]
        value, ci = roc_figure_with_ci(labels, [float(r["score"]) for r in part], groups, what, n=bootstrap)
        return _row(target, text, value, ci, len(part), len(set(groups)))

    out += [roc_row(*t) for t in ROC_TARGETS]
    prefix, target = EXTERNAL_AUC
    external = sorted(src for split, src in by_key if split == "external" and src.startswith(prefix))
    out += [roc_row("external", src, "auc", target) for src in external] or [
        _row(target, f"external {prefix}*: auc", None)]
    trained = {os.path.basename(d.rstrip("/")) for d in metadata.get("training_config", {}).get("data_dir", [])}
    cross = []
    for c in metadata.get("generalisation") or []:
        left_out = trained - {t.strip() for t in c.get("trained_on", "").split(",")}
        for src, m in c.get("by_source", {}).items():
            if src.split("/")[0] in left_out:
                cross.append(_row(CROSS_COLLECTION_AUC, f"trained without {src.split('/')[0]}, scored on {src}: auc",
                                  m.get("roc_auc"), (m.get("ci95") or {}).get("auc"), m.get("n")))
    out += cross or [_row(CROSS_COLLECTION_AUC, "a check trained without one of its collections, scored on it: auc",
                          None)]
    lesion = metadata.get("lesion") or {}
    for key, what, target in MAP_TARGETS:
        f = (lesion.get("map_figures") or {}).get(key) or {}
        value = f.get("dice_mean_at_map_level", f.get("dice_mean")) if what == "dice" else f.get(what)
        label = (f"{key}: map Dice" + (f" at the map level {f['map_level']}" if "dice_mean_at_map_level" in f else "")
                 if what == "dice" else f"{key}: {what.replace('_', ' ')}")
        out.append(_row(target, label, value, n=f.get("n")))
    bins = [(split, src, b) for split, by_source in (lesion.get("level_bins") or {}).items()
            for src, bs in by_source.items() for b in bs]
    if bins:
        above = [f"{split}/{src} {b['bin']} (n {b['n']})" for split, src, b in bins if b["median"] > metadata["threshold"]]
        row = _row(0, LEVEL_BINS, None, n=len(bins))
        row.update(value=len(above), met=not above, above=above)
        out.append(row)
    else:
        out.append(_row(0, LEVEL_BINS, None))
    return out


def table(target_rows):
    lines = ["| target | measured (95 % CI) | met |", "|---|---|---|"]
    for r in target_rows:
        if r["what"] == LEVEL_BINS:
            fig = "not measured" if r["met"] is None else f"{r['value']} of {r['n']}"
            goal = r["what"]
        else:
            fig = "not measured" if r["met"] is None else f"{r['value']:.3f}" + (
                f" ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})" if r.get("ci95") else
                f" ({r['groups']} group, no CI)" if r.get("groups") == 1 else "")
            goal = f"{r['what']} >= {r['target']}"
        lines.append(f"| {goal} | {fig} | {'-' if r['met'] is None else 'yes' if r['met'] else '**no**'} |")
    return "\n".join(lines)


def summary(target_rows):
    met = sum(r["met"] is True for r in target_rows)
    unmeasured = sum(r["met"] is None for r in target_rows)
    return f"{met} of {len(target_rows)} targets met" + (f", {unmeasured} not measured" if unmeasured else "")


def entry(metadata, target_rows):
    """metadata["targets"]: stored at the artifact's threshold (the level bins are read at it), so the contract
    refuses them once the threshold changes."""
    return {"threshold": metadata["threshold"], "rows": target_rows,
            "what": "the lesion-first model's acceptance targets (python -m trainer.targets)"}


def write_to_artifact(version_dir, target_rows):
    """Store the rows in metadata.json and re-seal it (model.keras untouched); returns the metadata."""
    return artifact.update_metadata(version_dir, lambda md: md.update(targets=entry(md, target_rows)))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.targets", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("artifact", help="model artifact folder (metadata.json, validation_predictions.csv)")
    p.add_argument("--write", action="store_true", help="store the rows in its metadata.json (re-sealed) for the card")
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="group-bootstrap draws for the CIs (0: none)")
    args = p.parse_args(argv)
    if args.bootstrap < 0:
        p.error("--bootstrap must be 0 or more")
    try:
        metadata = artifact.read_metadata(args.artifact)
        if args.write:  # writing re-seals: never over files that no longer match their seal
            artifact.check_sums(args.artifact)
    except artifact.ArtifactError as e:
        p.error(str(e))
    rows = measure(args.artifact, metadata, bootstrap=args.bootstrap)
    print(table(rows))
    print(summary(rows), file=sys.stderr)
    if args.write:
        write_to_artifact(args.artifact, rows)
        print("stored in: " + os.path.join(args.artifact, artifact.METADATA_FILE), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

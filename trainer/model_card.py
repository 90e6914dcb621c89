"""Render model_card.md from an artifact's metadata (one template, all models)."""
import posixpath

from screening_core import artifact


def _pct(x):
    return f"{100 * x:.1f}%"


def _num(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def _ci(m, key, pct):
    ci = m.get("ci95", {}).get(key)
    if not ci:
        return ""
    lo, hi = ci
    return f" ({_pct(lo)}-{_pct(hi)})" if pct else f" ({lo:.3f}-{hi:.3f})"


def source_table(by_source):
    """Markdown rows: source, n (tumor), groups, AUC, sensitivity, specificity (95% CIs by group)."""
    lines = ["| source | n (tumor) | groups | AUC | sensitivity | specificity |",
             "|---|---|---|---|---|---|"]
    for k, m in by_source.items():
        sens = "n/a" if m["sensitivity"] is None else _pct(m["sensitivity"]) + _ci(m, "sensitivity", True)
        spec = "n/a" if m["specificity"] is None else _pct(m["specificity"]) + _ci(m, "specificity", True)
        lines.append(f"| {k} | {m['n']} ({m['n_positive']}) | {m.get('n_groups', '')} | "
                     f"{_num(m['roc_auc'], '.3f')}{_ci(m, 'auc', False)} | {sens} | {spec} |")
    return "\n".join(lines)


_SPLIT_TITLES = {
    "validation": "Validation split (patients / near-duplicate groups held out)",
    "held_out_site": "Held-out site (every image of the institution matching the hold-out pattern; "
                     "never trained on, not used for the threshold)",
    "external": "External collections (scored only; never trained on)",
}


def _by_source_section(m):
    parts = []
    for split, table in m.get("by_source", {}).items():
        parts.append(f"### {_SPLIT_TITLES.get(split, split)}\n{source_table(table)}\n")
    if not parts:
        return ""
    return ("## Metrics per source (at the operating threshold; 95% CIs by patient/group bootstrap)\n"
            + "\n".join(parts))


def _generalisation_section(metadata):
    checks = metadata.get("generalisation") or []
    if not checks:
        return ""
    out = ["## Generalisation checks (separate training runs, same recipe unless stated)"]
    for c in checks:
        out.append(f"### {c['title']}\n{c.get('description', '')}\n\n{source_table(c['by_source'])}\n")
    return "\n".join(out)


def _localisation_section(metadata):
    loc = metadata.get("localisation")
    if not loc:
        return ""
    lines = ["## Does it look at the tumor? (Grad-CAM vs expert masks)",
             f"Tumor slices with a mask; masks moved into model-input coordinates with the image's own "
             f"head crop and dilated by {loc['dilate_px']} px of the {loc['input_size']} px input. "
             "Heat share = Grad-CAM mass inside the dilated mask; pointing game = heat peak inside it. "
             "Command: `python -m trainer.localisation <artifact> --mask-dir ../shared/data/lgg/masks`.",
             "", "| split/source | n | heat share in mask (mean / median) | pointing game | dilated mask area |",
             "|---|---|---|---|---|"]
    for k, v in loc["by_split_and_source"].items():
        lines.append(f"| {k} | {v['n']} | {_pct(v['mean_heat_share_in_mask'])} / "
                     f"{_pct(v['median_heat_share_in_mask'])} | {_pct(v['pointing_game_hit_rate'])} | "
                     f"{_pct(v['mean_dilated_mask_area_fraction'])} |")
    return "\n".join(lines) + "\n"


def _ood_section(metadata):
    o = metadata.get("ood")
    if not o:
        return ""
    lines = ["## Out-of-distribution guard",
             f"Method: {o['method']} over {', '.join(o['components'])}; fitted on {o['n_train']} training "
             f"images; threshold {o['threshold']:.3f} set on {o['n_validation_threshold']} validation images; "
             f"false-OOD rate on the other {o['n_validation_check']} validation images: "
             f"{_pct(o['validation_false_ood_rate'])}. Scoring adds `ood_score` and `in_distribution` to every "
             "row; an image below the tumor threshold but out of distribution is labelled `out_of_distribution`, "
             "never `no_tumor`. Built with `python -m trainer.ood build <artifact>`.", ""]
    if o.get("evaluation"):
        lines += ["| case | n | AUROC (guard) | AUROC (max-probability baseline) | share flagged OOD |",
                  "|---|---|---|---|---|"]
        for r in o["evaluation"]:
            lines.append(f"| {r['case']} | {r['n']} | {_num(r.get('auroc_mahalanobis'), '.3f')} | "
                         f"{_num(r.get('auroc_max_probability'), '.3f')} | {_pct(r['flagged_ood'])} |")
        lines += ["", "Command: `python -m trainer.ood measure <artifact> --brats ../shared/data/brats-sample "
                  "--record`."]
    return "\n".join(lines) + "\n"


def _lesion_section(metadata):
    """Lesion-map figures, tumor-free slices by level, series-level rules and T2 coverage (v4 and later)."""
    les = metadata.get("lesion")
    if not les:
        return ""
    thr = metadata["threshold"]
    level = les.get("map_level")
    at = f"Dice at 0.5 and at the map level {level} chosen on validation masks" if level else "Dice at 0.5"
    out = [f"## The lesion map (the model's own output; {at}, peak and mass inside the mask dilated by "
           "4 px of the 128 px input)",
           "| split/source | tumor slices with a mask | Dice (mean / median) | "
           + ("Dice at the map level (mean / median) | " if level else "") + "pointing game | map mass inside mask |",
           "|---|---|---|---|---|" + ("---|" if level else "")]
    for k, v in les.get("map_figures", {}).items():
        if v.get("n"):
            at_level = (f"{v['dice_mean_at_map_level']:.3f} / {v['dice_median_at_map_level']:.3f} | "
                        if level and "dice_mean_at_map_level" in v else "- | " if level else "")
            out.append(f"| {k} | {v['n']} | {v['dice_mean']:.3f} / {v['dice_median']:.3f} | {at_level}"
                       f"{_pct(v['pointing_game'])} | {_pct(v['mass_inside_mask'])} |")
    if level:
        out += ["", f"The review overlay outlines, fills and measures (lesion area) the map at {level}: the map is "
                "calibrated low, and at 0.5 it outlines only the lesion's core."]
    out += ["", f"## Tumor-free slices by anatomical level (threshold {thr:.4f})",
            "Level = position in the patient's stack (0 = lowest slice of the patient, 1 = highest) for "
            "LGG and BraTS; for `brain-mri` (no patients) the rank of the head's share of the image. A slice "
            "classifier flags whole levels; here no bin should have its median above the threshold.", "",
            "| split | source | level bin | n | median probability | flagged |", "|---|---|---|---|---|---|"]
    for split, by_source in les.get("level_bins", {}).items():
        for source, bins in by_source.items():
            for b in bins:
                out.append(f"| {split} | {source} | {b['bin']} | {b['n']} | {b['median']:.3f} | "
                           f"{_pct(b['flagged'])} |")
    series = les.get("series") or {}
    if series:
        out += ["", "## Series-level operating point",
                "Every LGG and BraTS patient has a tumor: each patient's stack in one sequence is split into "
                "its tumor slices (positive part) and its tumor-free slices (negative part) and each rule is "
                "applied to the parts, in slice order. The healthy heads' volumes are whole tumor-free "
                "series (negative parts of their own): their specificity is what a tumor-free study meets.", "",
                "| split/source | rule | sensitivity (parts) | specificity (parts) |", "|---|---|---|---|"]
        for key, rules in series.items():
            for rule, v in rules.items():
                sens = "n/a" if v["sensitivity"] is None else f"{_pct(v['sensitivity'])} ({v['positive_parts']})"
                spec = "n/a" if v["specificity"] is None else f"{_pct(v['specificity'])} ({v['negative_parts']})"
                out.append(f"| {key} | {rule} | {sens} | {spec} |")
    by_look = les.get("tumor_free_series_max") or {}
    maxima = sorted(m for v in by_look.values() for m in v)
    if maxima:
        looks_seen = ", ".join(f"{look} {len(v)}" for look, v in by_look.items())
        out += ["", f"The highest slice probability of each of the {len(maxima)} whole tumor-free series ({looks_seen}): "
                f"lowest {maxima[0]:.3f}, median {maxima[len(maxima) // 2]:.3f}, highest {maxima[-1]:.3f}, "
                f"{sum(m >= 0.9 for m in maxima)} at 0.9 or more. The report's worklist and flagged_studies.csv rank "
                "each study's highest probability against them (\"tumor-free heads as high\"), naming any flagged "
                "look none of them had."]
    t2 = les.get("t2_coverage")
    if t2:
        out += ["", "## T2 coverage", f"Training saw {t2['tumor_slices']} T2 slices with a tumor from "
                f"{t2['patients']} patients ({', '.join(t2['collections']) or 'none'}); every other T2 "
                "slice it saw was tumor-free or came through contrast augmentation" + _transplant_note(metadata)]
    return "\n".join(out) + "\n"


def _transplant_note(metadata):
    """The end of the T2 coverage sentence for an ensemble whose classifiers were fine-tuned with transplanted
    tumors (trainer.ensemble records each member's `--transplant-tumors`)."""
    members = (metadata.get("training") or {}).get("members") or {}
    tuned = [(_version(m["artifact"]), m) for _, m in sorted(members.items())
             if isinstance(m, dict) and m.get("transplant_tumors")]
    if not tuned:
        return "."
    named = ", ".join(v for v, _ in tuned)
    shares = sorted({f"{m['transplant_tumors']:g}" for _, m in tuned})
    axial = " axial" if all(m.get("transplant_axial_only") for _, m in tuned) else ""
    return (f", except in the fine-tune of its classifier{'s' * (len(tuned) > 1)} {named}: a real FLAIR/T2 "
            f"training tumor set into each of its{axial} tumor-free FLAIR, T2 and brain-mri training slices with "
            f"probability {' or '.join(shares)} (`--transplant-tumors`), so it saw T2 tumors made by transplant, "
            "not imaged ones.")


def _look_check_section(metadata):
    """Tumor slices found and tumor-free slices flagged by look on patients whose looks share one tumor mask
    (trainer.look_check --write)."""
    check = metadata.get("look_check") or {}
    if not check.get("looks"):
        return ""
    out = ["## The same tumors in several looks",
           f"`{check.get('source', '?')}`: {check.get('patients', '?')} patients whose looks share one tumor mask, every "
           f"look scored by brain-score at the threshold {check['threshold']:.4f} (`python -m trainer.look_check`; "
           "docs/brats_toolkit_check.md). A look whose tumors are found less often than another's on the same slices "
           "is read by its look, not its lesion.", "",
           "| look | tumor slices found | tumor-free slices flagged | AUC |", "|---|---|---|---|"]
    for look, a in check["looks"].items():
        out.append(f"| {look} | {_pct(a['found'])} of {a['tumor_slices']} | {_pct(a['flagged'])} of "
                   f"{a['tumor_free_slices']} | {a['auc']:.3f} |")
    return "\n".join(out) + "\n"


def _stress_section(metadata):
    """The transplant and spots stress tests (trainer.stress), kept in metadata so a card rendered again keeps them."""
    from trainer import stress_report
    return "".join(stress_report.section(metadata.get(k)) for k in ("stress", "stress_spots")).lstrip("\n")


def _targets_section(metadata):
    """The acceptance targets of the lesion-first model, met or not (trainer.targets --write)."""
    targets = metadata.get("targets") or {}
    if not targets.get("rows"):
        return ""
    from trainer import targets as measured
    return ("## Acceptance targets: where this model stands\n"
            "ROC figures are points of each source's curve (whatever the operating threshold), with 95 % CIs by "
            "patient or near-duplicate group; map figures and level bins as in the sections below "
            f"(`python -m trainer.targets`). {measured.summary(targets['rows'])}.\n\n"
            f"{measured.table(targets['rows'])}\n" + "".join(
                f"\nLevel bins above the threshold: {', '.join(r['above'])}.\n" for r in targets["rows"] if r.get("above")))


def render(metadata, eda):
    m = metadata["validation_metrics"]
    ci = m.get("ci95", {})

    def with_ci(key):
        v = f"{m[key]:.4f}" if key == "roc_auc" else _pct(m[key])
        if key in ci or (key == "roc_auc" and "auc" in ci):
            lo, hi = ci["auc" if key == "roc_auc" else key]
            v += f" (95% CI {lo:.4f}-{hi:.4f})" if key == "roc_auc" else f" (95% CI {_pct(lo)}-{_pct(hi)})"
        return v

    per_type = "\n".join(f"| {c} | {_pct(s)} | {n} |" for c, (s, n) in
                         sorted(m.get("sensitivity_by_class", {}).items()))
    cfg = metadata["training_config"]
    spec = metadata["input_spec"]
    cm = m["confusion_matrix"]
    return artifact.with_member_status(f"""# Model card: {metadata['name']} v{metadata['version']}

## Intended use
A **screening aid** that scores 2-D brain MRI slices for the presence of a tumor
so that a radiologist can prioritise studies. It is a research model and **not a
diagnostic device**: it must not be used to rule out disease or to make treatment
decisions, and every flagged or unflagged study still needs a radiologist's read.

## Model
- {_architecture(metadata)}, input {spec['height']}x{spec['width']}x{spec['channels']}
  {spec['dtype']}, preprocessing `{spec['preprocessing']}` (head crop, square canvas,
  per-image percentile intensity normalisation).
- Output: probability of tumor (glioma, meningioma or pituitary vs no tumor).
- Framework: TensorFlow {metadata['framework']['tensorflow']}, Keras {metadata['framework']['keras']};
  `model.keras` sha256 `{metadata['model_sha256']}`.

## Training data
- {eda['n_images']} images from {', '.join(f'`{d}`' for d in _dirs(cfg['data_dir']))}; classes {eda['counts_per_class']}
  ({_pct(eda['binary_balance']['tumor_fraction'])} tumor).
- Split units: {eda['near_duplicate_groups']} groups (near-duplicates at thumbnail correlation >= {cfg['dedup_threshold']},
  joined with patient keys from `{cfg.get('group_pattern') or '(none)'}`); {eda['groups_crossing_split']} groups cross
  train/validation/held-out site.
- Split: {eda['split']['train']} train / {eda['split']['validation']} validation / {eda['split'].get('held_out_site', 0)}
  held-out site (pattern `{cfg.get('holdout_pattern') or '(none)'}`; seed {cfg['seed']}).
- Augmentation `{cfg.get('augment', 'v2')}`; sources balanced per batch: {metadata.get('training', {}).get('balanced_sources', False)}.
- Skipped unreadable files: {len(eda['skipped_files'])}.
- Data fingerprint: `{metadata['data_fingerprint']}`.

## Validation metrics (group-held-out validation split; threshold sources `{m.get('threshold_sources', 'all')}`, n={m['n']})
| metric | value |
|---|---|
| ROC AUC | {with_ci('roc_auc')} |
| sensitivity @ threshold | {with_ci('sensitivity')} |
| specificity @ threshold | {with_ci('specificity')} |
| accuracy @ threshold | {_pct(m['accuracy'])} |
| expected calibration error | {m['expected_calibration_error']:.4f} |
| confusion (tp/fp/tn/fn) | {cm['tp']}/{cm['fp']}/{cm['tn']}/{cm['fn']} |

Sensitivity by tumor type at the operating threshold:

| class | sensitivity | n |
|---|---|---|
{per_type}

{_targets_section(metadata)}
{_by_source_section(m)}
{_generalisation_section(metadata)}
{_localisation_section(metadata)}
{_lesion_section(metadata)}
{_look_check_section(metadata)}
{_stress_section(metadata)}
{_ood_section(metadata)}
{metadata.get('development_notes', '')}
## Operating threshold
`{metadata['threshold']:.4f}`: the highest threshold that reaches the target sensitivity of
{_pct(metadata['threshold_target_sensitivity'])} on validation, which gives the best specificity
at that sensitivity. A screening aid should miss few tumors; false positives cost a second look.
Plots: `roc.png`, `calibration.png`.

## Limitations
- 2-D slices only; no study-level context. The pipeline aggregates per study separately.
- Source confound: in public sets negatives and positives come largely from different
  collections; the model can learn collection style (contrast, borders, JPEG artefacts).
  Preprocessing and augmentation work against it, but validation on the same collections
  cannot prove it is gone: validate on local data before use.
- Trained on JPEG slices; DICOM inputs are windowed and normalised to a comparable range but
  differ from the training distribution.
- Slice level: in public sets tumor-free slices are often taken far from the tumor (other
  anatomical levels), so a slice classifier can learn the level instead of the lesion; the
  per-source tables and the localisation figures above show how far that goes.
- Validation numbers come from one group split of the training collections; the held-out site
  and external rows are the better guide to a new hospital, and local validation is still needed.

## Retrain on local data
`make train DATA="<collection folders>" MODEL_DIR=models` (class folders, Training/Testing parents,
MRI-sequence folders or a CSV index), or `python -m trainer.task --data-dir <folder> [--data-dir ...]
--model-dir models --epochs {cfg['epochs']} --seed {cfg['seed']}
--target-sensitivity {cfg['target_sensitivity']}` (see `python -m trainer.task --help`). The new artifact gets
the next version number; point the pipeline at it with `--model <model-dir>/{metadata['name']}/<version>`.
""", metadata)


def _ensemble(members):
    """The members of a trainer.ensemble graph (training.members), in words: the card's reader must see that
    the score is several models' combined evidence, not the first map's alone."""
    from trainer.ensemble import member_artifacts

    def names(kind):
        return [_version(a) for a in member_artifacts(members, kind)]
    maps, classifiers = names("lesion_map"), names("classifier")
    moved = members["classifier"].get("moved_towards")
    if moved:
        classifiers[0] += f" (its weights moved {moved.get('alpha', 0):g} of the way to {_version(moved.get('artifact'))}'s)"
    map_odds = "the maps' mean log-odds" if len(maps) > 1 else "the map's log-odds"
    classifier_odds = "the classifiers' mean log-odds" if len(classifiers) > 1 else "the classifier's log-odds"
    floor = members["classifier"].get("log_odds_floor")
    floored = f", each classifier's log-odds floored at {floor:g}" if floor is not None else ""
    mirror = ("; mirrored members also score the image mirrored left to right"
              if any(m.get("mirrored") for m in members.values()) else "")
    orientation = members.get("orientation")
    where = "/".join(str(orientation.get("artifact") or "?").rstrip("/").split("/")[-2:]) if orientation else ""
    half = (orientation or {}).get("half_turn_confidence")
    half = f" (upside down above {half:g})" if half is not None else ""
    turned = (f"; a slice the orientation network {where} (trainer/orientation.py) "
              f"calls turned sideways with probability above {orientation.get('confidence', 0):g}{half} is turned "
              "back before any member sees it, and its map turned onto the image as given" if orientation else "")
    return (f"Ensemble in one graph (trainer/ensemble.py): lesion-first U-Net map{'s' * (len(maps) > 1)} "
            f"{', '.join(maps)} and slice classifier{'s' * (len(classifiers) > 1)} {', '.join(classifiers)}, "
            f"trained from scratch (no pretrained weights); the slice probability adds {map_odds} and "
            f"{classifier_odds}{floored}{mirror}; the overlays show {_overlay(members, maps[0])}{turned}")


def _version(artifact_dir):
    """"v14" for models/brain-tumor-cnn/14 (a member named by its artifact folder)."""
    return f"v{posixpath.basename(str(artifact_dir or '?').rstrip('/'))}"


def _overlay(members, first_map):
    overlay = members.get("overlay_map")
    if not overlay:
        return f"{first_map}'s map"
    return f"the map of {_version(overlay.get('artifact'))}, a U-Net trained only to outline the lesion, which weighs 0 in the score"


def _architecture(metadata):
    members = (metadata.get("training") or {}).get("members")
    if isinstance(members, dict) and "lesion_map" in members and "classifier" in members:
        return _ensemble(members)
    if metadata.get("head") == "lesion_map":
        return ("Lesion-first U-Net, trained from scratch (no pretrained weights): a per-pixel tumor "
                "probability map at half the input resolution; the slice probability is the highest "
                "mean of that map over a 3x3-cell window, so a slice scores high only where the map "
                "finds a lesion (trainer/unet.py)")
    return "From-scratch CNN (no pretrained weights)"


def _dirs(value):
    return [value] if isinstance(value, str) else list(value)

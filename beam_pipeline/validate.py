"""brain-validate: measure the model on a site's own labelled images before using it there.

  brain-validate --sample /data/local-validation --output validation/
  brain-validate --scores out/2026-11-20 --labels labels.csv --output validation/

A sample folder holds images (or archives) under class folders (`tumor/`,
`notumor/`, ...); they are scored with brain-score's own pipeline (paths
pseudonymised as always; labels are joined by the same keyed pseudonyms).
Or take the output of an earlier brain-score run and a labels CSV keyed by
`sop_instance_uid`, `member_path` or `source_uri`, with a `label` column
(1/0 or tumor/no_tumor) and optional `group` (patient/study) and `subgroup`
(e.g. series description) columns.

Writes validation.json and validation.html and prints a plain verdict: "meets"
only when every check holds over patients (every image's patient known, enough
tumor and tumor-free patients, lower bounds of sensitivity, specificity and AUC;
see `evaluate`),
and the sample is not made of the model's own development images: each file is
compared with the fingerprints the artifact carries (screening_core/fingerprint.py),
since a public download measures the model's memory, not its accuracy.
Only then is site_profile.json written (the site threshold, bound to the
model's sha256 and sealed); --force writes it anyway, marked forced. The
profile also lists the looks (FLAIR, T1, T2, ...; screening_core/looks.py, read
from series descriptions or the sample's folder and file names) with enough
tumor and tumor-free patients of their own, and the slice planes (axial, sagittal,
coronal, oblique: DICOM orientation) likewise: brain-score's report marks flagged
series of any other look or plane as not validated at this site. A look or plane
with that many patients on which the model fails on its own (sensitivity or
specificity below the required) fails the verdict: pooled figures can hide it, and so
does a sample whose tumor and tumor-free images come in different looks or planes. Exit 0
when the verdict is "meets", 3 when "not met" or "insufficient sample", 2 on
bad input.
"""
import argparse
import base64
import csv
import html
import io
import json
import os
import re
import sys

import numpy as np

from beam_pipeline import errors, studies
from screening_core import artifact, looks

POSITIVE = {"tumor", "tumour", "yes", "positive", "glioma", "meningioma", "pituitary", "1"}
NEGATIVE = {"notumor", "no_tumor", "no-tumor", "no", "negative", "normal", "0"}


class ValidationError(errors.ScreeningError, ValueError):
    pass


def _label_of_path(rel):
    """Label from the nearest class folder of a path relative to the sample root (None if none)."""
    for part in reversed(rel.replace("\\", "/").split("/")[:-1]):
        if part.lower() in POSITIVE:
            return 1
        if part.lower() in NEGATIVE:
            return 0
    return None


def _label_value(text):
    t = str(text).strip().lower()
    if t in POSITIVE:
        return 1
    if t in NEGATIVE:
        return 0
    raise ValidationError(f"label {text!r} is neither tumor (1/tumor/yes) nor no tumor (0/no_tumor/no)")


def _is_class_folder(name):
    return name.lower() in POSITIVE or name.lower() in NEGATIVE


def patient_of(rel, group_pattern=None):
    """The patient (group) of a sample file, from its path relative to the sample root.

    With `group_pattern`, its first group (else the whole match) on the file name, as in the trainer;
    otherwise the folder that holds the file, unless that is a class folder (`tumor/P7/1.png` and
    `notumor/P7/9.png` are one patient, P7). None when neither applies: the image is its own group."""
    parts = rel.replace("\\", "/").split("/")
    if group_pattern:
        m = group_pattern.search(parts[-1])
        if m:
            return "pattern:" + (m.group(1) if m.groups() else m.group(0))
    if len(parts) >= 2 and not _is_class_folder(parts[-2]):
        return "folder:" + parts[-2]
    return None


def unmatched_names(paths, group_pattern):
    """How many of these files' names --group-pattern does not match (they fall back to their folder or
    stand alone): a pattern that fits only some names makes the patient count wrong without a sign."""
    return sum(patient_of(os.path.basename(p), group_pattern) is None for p in paths)  # patient_of's own rule


def sample_labels(sample, key, group_pattern=None):
    """{pseudonymised source_uri: (label, group, subgroup, path)} for the files under `sample`.

    Groups are patients (patient_of); an image without one is its own group. Group keys are
    pseudonymised like paths, so a folder named after a patient never reaches an output."""
    from beam_pipeline import pseudonym
    ps = pseudonym.Pseudonymiser(key)
    out = {}
    for root, _, files in os.walk(sample):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, sample)
            label = _label_of_path(rel)
            if label is None:
                continue
            parts = rel.split(os.sep)
            subgroup = parts[0] if len(parts) > 2 and _label_of_path(parts[0] + "/x") is None else ""
            patient = patient_of(rel, group_pattern)
            group = ps.uri(path) if patient is None else ps.component(patient)
            # the path: thumbnails in validation.html; the look: from the sample's own folder and file names
            out[ps.uri(path)] = (label, group, subgroup, path, looks.look_of(rel.replace(os.sep, "/")))
    if not out:
        raise ValidationError(f"{sample}: no images under class folders ({sorted(POSITIVE)} / {sorted(NEGATIVE)})")
    return out


def csv_labels(path):
    """(key column, {key: (label, group, subgroup)}) from a labels CSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        key_col = next((c for c in ("sop_instance_uid", "member_path", "source_uri") if c in cols), None)
        if key_col is None or "label" not in cols:
            raise ValidationError(f"{path}: needs a 'label' column and one of sop_instance_uid, member_path, "
                                  f"source_uri; has {cols}")
        out = {}
        for r in reader:
            out[r[key_col]] = (_label_value(r["label"]), r.get("group") or r[key_col], r.get("subgroup") or "")
    return key_col, out


def labelled_rows(rows, key_col, labels):
    """(label key, row) of the scored rows that have a label, in order: what `join` evaluates."""
    for r in rows:
        if r["status"] != "ok":
            continue
        key = r[key_col] if key_col != "member_path" or r["member_path"] else r["source_uri"]
        if key in labels:
            yield key, r


def join(rows, key_col, labels):
    """(y, p, groups, subgroups, in_distribution, unmatched, keys, looks, planes, patient_known) over scored rows
    that have a label.

    A row's look comes from its (scrubbed) series description, else from the sample's folder and file names; its
    plane from the row (DICOM orientation, NIfTI axial; None for JPEG/PNG/TIFF). Its patient is known from its DICOM
    study, else from the label's group (a --group-pattern match, a patient folder, a labels CSV's group column);
    an image whose group is only itself has no known patient."""
    y, p, g, sg, ind, keys, lk, pl, known = [], [], [], [], [], [], [], [], []
    matched = set()
    for key, r in labelled_rows(rows, key_col, labels):
        label, group, subgroup = labels[key][:3]
        matched.add(key)
        y.append(label)
        p.append(r["tumor_probability"])
        g.append(r.get("study_instance_uid") or group)
        known.append(bool(r.get("study_instance_uid")) or group != key)
        sg.append(subgroup or r.get("modality") or "")
        ind.append(r.get("in_distribution"))
        keys.append(key)
        described = looks.look_of(r.get("series_description"))
        if described == "other" and r.get("look"):  # the row's own: read from the image's path before pseudonyms
            described = r["look"]
        lk.append(described if described != "other" or len(labels[key]) < 5 else labels[key][4])
        pl.append(r.get("plane"))
    return (np.array(y), np.array(p, np.float64), np.array(g), np.array(sg), ind,
            len(set(labels) - matched), keys, np.array(lk), np.array(pl, dtype=object), np.array(known, bool))


def wilson_lower(proportion, n, z=1.96):
    """Lower bound of the Wilson score interval for a proportion observed on n independent units."""
    if n == 0:
        return 0.0
    centre = proportion + z * z / (2 * n)
    spread = z * np.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n))
    return float((centre - spread) / (1 + z * z / n))


def _site_threshold(y, p, target, required_lower, specificity_floor, n_pos_groups, n_neg_groups):
    """The highest threshold whose sensitivity reaches `target` with a Wilson lower bound (over the
    tumor patients) >= `required_lower` and whose specificity's bound stays >= the floor; when none
    does, the highest that reaches `target` (metrics.choose_threshold), and the checks say why it fails.

    The threshold that just reaches the target sits on the edge of the tumors' scores: on a sample
    that separates perfectly it would still miss 5 % of tumors, and no sample could meet the bound."""
    from screening_core import metrics
    fallback = metrics.choose_threshold(y, p, target)
    pos, neg = p[y == 1], p[y == 0]
    for t in np.unique(pos)[::-1]:
        sens = float(np.mean(pos >= t))
        if sens < target:
            continue
        spec = float(np.mean(neg < t))
        if wilson_lower(sens, n_pos_groups) >= required_lower and wilson_lower(spec, n_neg_groups) >= specificity_floor:
            return float(t)
    return fallback


DEFAULT_MIN_PATIENTS = 20
DEFAULT_SPECIFICITY_FLOOR = 0.5
DEFAULT_AUC_FLOOR = 0.8
DEFAULT_TARGET_SENSITIVITY = 0.95
DEFAULT_REQUIRED_LOWER = 0.90
MEETS, NOT_MET, INSUFFICIENT = "meets", "not met", "insufficient sample"


def evaluate(y, p, groups, subgroups, in_dist, artifact_threshold, target, required_lower, bootstrap=1000,
             specificity_floor=DEFAULT_SPECIFICITY_FLOOR, auc_floor=DEFAULT_AUC_FLOOR,
             min_patients=DEFAULT_MIN_PATIENTS, image_looks=None, development=None, image_planes=None,
             patient_known=None, ood_limit=None):
    """Every figure, and a verdict that is "meets" only when every check holds over patients.

    Checks: at least `min_patients` tumor and tumor-free patients (else "insufficient sample");
    at the site threshold, the sensitivity's lower 95% bound >= `required_lower` and the
    specificity's >= `specificity_floor`; the AUC's lower bound >= `auc_floor`. `image_looks` (one look per
    image, screening_core.looks) adds the figures by look and `validated_looks`: the looks with at least
    `min_patients` tumor and tumor-free patients of their own, and only when the verdict is "meets"; `image_planes`
    (one plane per image, None where unknown) the same by plane (`validated_planes`). A look or plane with that many
    patients whose own sensitivity falls below `required_lower` or specificity below `specificity_floor` fails the
    verdict: pooled figures can hide a look the model fails at this site. `development`
    ({"copies": one (collection or None) per image} or {"why": reason it was not checked}) fails the verdict when
    the sample holds near-copies of images the model was developed on (fingerprint.MIN_COPIES). Each lower bound
    is the smaller of the patient bootstrap's and (for proportions) Wilson's over patients: a
    bootstrap at a threshold chosen on the same images is optimistic. `patient_known` (one bool per image; default:
    none when every image is its own group, else all) makes the sample insufficient while any image's patient is
    unknown: such an image counts as a patient of its own, so one patient's 20 slices would pass for 20 patients
    and every count and bound would be overstated (a site whose images each come from another patient says so:
    --one-image-per-patient). `ood_limit` (the drift check's limit on the share of out-of-distribution images,
    beam_pipeline.drift) fails the verdict when the sample's own share is above it: every night of such a site
    would raise the drift alarm, so its figures describe images the model is out of its depth on.
    """
    from screening_core import metrics
    if len(y) < 10 or y.sum() == 0 or y.sum() == len(y):
        raise ValidationError(f"{len(y)} labelled images with {int(y.sum())} tumors: need both classes "
                              "and at least 10 images (labels are matched to the scored rows' pseudonymised "
                              "paths; see docs/new_site.md)")
    n_pos_groups = len(np.unique(groups[y == 1]))
    n_neg_groups = len(np.unique(groups[y == 0]))
    site_threshold = _site_threshold(y, p, target, required_lower, specificity_floor, n_pos_groups, n_neg_groups)
    at_artifact = metrics.evaluate_at(y, p, artifact_threshold, groups, bootstrap)
    at_site = metrics.evaluate_at(y, p, site_threshold, groups, bootstrap)
    ci = at_site.get("ci95", {})
    wilson = wilson_lower(at_site["sensitivity"], n_pos_groups)
    lower = min(ci.get("sensitivity", [1.0])[0], wilson)
    spec_wilson = wilson_lower(at_site["specificity"], n_neg_groups)
    spec_lower = min(ci.get("specificity", [1.0])[0], spec_wilson)
    auc = metrics.roc_auc(y, p)
    auc_lower = ci.get("auc", [0.0])[0] if ci.get("auc") else 0.0
    images_are_groups = len(np.unique(groups)) == len(y)
    if patient_known is None:
        patient_known = np.full(len(y), not images_are_groups)
    unknown = int(len(y) - np.count_nonzero(patient_known))
    checks = [
        ("patients known", unknown == 0, f"{len(y) - unknown} of {len(y)}",
         f"{unknown} of {len(y)} images have no known patient, so each counts as a patient of its own and the "
         "patient counts and bounds are overstated (give --group-pattern, one folder per patient, a labels CSV "
         "'group' column, or --one-image-per-patient where each image truly comes from another patient)"),
        ("tumor patients", n_pos_groups >= min_patients, f"{n_pos_groups}",
         f"only {n_pos_groups} tumor patients (need >= {min_patients})"),
        ("tumor-free patients", n_neg_groups >= min_patients, f"{n_neg_groups}",
         f"only {n_neg_groups} tumor-free patients (need >= {min_patients})"),
        ("sensitivity lower bound", lower >= required_lower, f"{lower:.3f}",
         f"the sensitivity's lower bound {lower:.3f} is below the required {required_lower:.3f}"),
        ("specificity lower bound", spec_lower >= specificity_floor, f"{spec_lower:.3f}",
         f"the specificity's lower bound {spec_lower:.3f} is below the required {specificity_floor:.3f}"),
        ("AUC lower bound", auc_lower >= auc_floor, f"{auc_lower:.3f}",
         f"the AUC's lower bound {auc_lower:.3f} is below the required {auc_floor:.3f}"),
    ]
    copies = _development_check(development, groups)
    if copies:
        checks.append(copies["check"])
    strata = {kind: _by_stratum(y, p, groups, values, order, site_threshold, min_patients, required_lower,
                                specificity_floor)
              for kind, values, order in (("look", image_looks, tuple(looks.NAMES)),
                                          ("plane", image_planes, PLANES)) if values is not None}
    if strata:
        checks.append(_strata_check(strata, min_patients))
    for kind, values in (("look", image_looks), ("plane", image_planes)):
        mix = _class_mix_check(y, values, kind) if values is not None else None
        if mix:
            checks.append(mix)
    judged = [v for v in in_dist if v is not None]
    ood_share = float(np.mean([not v for v in judged])) if judged else None
    if ood_limit is not None and ood_share is not None:
        checks.append(("out-of-distribution share", ood_share <= ood_limit, f"{ood_share:.1%}",
                       f"{ood_share:.1%} of the sample's images are unlike the model's training images (the nightly "
                       f"drift alarm rings above {ood_limit:.0%}): the model is out of its depth on this site's scans"))
    failed = [why for _, ok, _, why in checks if not ok]
    status = MEETS if not failed else INSUFFICIENT if not all(ok for _, ok, _, _ in checks[:3]) else NOT_MET
    offered = at_site["specificity"] >= specificity_floor and status == MEETS
    head = (f"At the site threshold {site_threshold:.4f}, sensitivity is {at_site['sensitivity']:.3f} "
            f"(lower 95% bound {lower:.3f}) and specificity {at_site['specificity']:.3f} (lower 95% bound "
            f"{spec_lower:.3f}); AUC {auc:.3f} (lower bound {auc_lower:.3f}); {int(y.sum())} tumor images "
            f"in {n_pos_groups} {'groups' if unknown else 'patients/studies'}, {int(len(y) - y.sum())} tumor-free "
            f"images in {n_neg_groups}{' (an image without a known patient is a group of its own)' if unknown else ''}. ")
    if status == MEETS:
        verdict = head + "MEETS every check: the site threshold may be used here."
    else:
        verdict = (head + f"{status.upper()}: " + "; ".join(failed) + ". Do not rely on the model here yet; "
                   "add labelled patients (docs/new_site.md) or review its errors.")
    if copies and copies["check"][1] and copies["summary"]["images"]:
        verdict += (f" NOTE: {copies['summary']['images']} images are near-copies of images the model was developed on "
                    "(fewer than the check counts; images the model never saw match by chance at 0.5-0.8 %); "
                    "validation.json's development_copies lists them (python -m beam_pipeline.reidentify resolve names them).")
    if development is not None and development.get("why"):
        verdict += (f" WARNING: the sample was not compared with the images the model was developed on "
                    f"({development['why']}); make sure none of them is in it.")
    patients = patient_flags(y, p, groups, site_threshold)
    if images_are_groups and unknown:
        verdict += (" WARNING: every image is its own group, so patients are not known: give --group-pattern "
                    "or put each patient's images in a folder of their own.")
    else:
        verdict += " " + _patient_line(patients)
    by_subgroup = {}
    for s in sorted(set(subgroups.tolist())):
        m = subgroups == s
        by_subgroup[s or "(all)"] = metrics.evaluate_at(y[m], p[m], site_threshold, groups[m], 0)
    by_look, validated_looks, _ = strata.get("look", ({}, [], []))
    by_plane, validated_planes, _ = strata.get("plane", ({}, None, []))
    if status != MEETS:
        validated_looks = []
        validated_planes = None if validated_planes is None else []
    return {"n_images": int(len(y)), "n_positive": int(y.sum()), "n_groups": int(len(np.unique(groups))),
            "n_positive_groups": n_pos_groups, "n_negative_groups": n_neg_groups,
            "every_image_its_own_group": bool(images_are_groups), "images_without_known_patient": unknown,
            "roc_auc": auc, "auc_ci95": ci.get("auc"), "auc_lower95": auc_lower,
            "target_sensitivity": target, "required_sensitivity_lower_bound": required_lower,
            "specificity_floor": specificity_floor, "auc_floor": auc_floor, "min_patients": min_patients,
            "artifact_threshold": artifact_threshold, "at_artifact_threshold": at_artifact,
            "site_threshold": site_threshold, "site_threshold_offered": bool(offered),
            "at_site_threshold": at_site,
            "sensitivity": at_site["sensitivity"], "sensitivity_ci95": ci.get("sensitivity"),
            "sensitivity_wilson_lower95": wilson, "sensitivity_lower95": lower,
            "specificity": at_site["specificity"], "specificity_ci95": ci.get("specificity"),
            "specificity_wilson_lower95": spec_wilson, "specificity_lower95": spec_lower,
            "checks": [{"check": n, "passed": bool(ok), "value": v} for n, ok, v, _ in checks],
            "calibration": metrics.calibration_curve(y, p),
            "expected_calibration_error": metrics.expected_calibration_error(y, p),
            "out_of_distribution_share": ood_share,
            "by_subgroup": by_subgroup, "by_look": by_look, "validated_looks": validated_looks,
            "by_plane": by_plane, "validated_planes": validated_planes, "by_patient": patients,
            "development_copies": copies and copies["summary"] or
            ({"checked": False, "why": development["why"]} if development else None),
            "status": status, "meets": status == MEETS, "verdict": verdict}


def patient_flags(y, p, groups, threshold):
    """What the worklist's study flag does at this site: of the patients with a tumor image, how many have one
    at or above `threshold`; of the patients with only tumor-free images, how many have any image flagged.

    Why: the checks judge images, but a radiologist reads patients; with a tenth of a tumor-free head's slices
    flagged, nearly every tumor-free patient carries a flag (docs/model_v4_notes.md, rows SR, SER) while the image
    specificity still looks acceptable. Reported beside the verdict, not a check: a flag on every tumor-free study
    costs reading order, not safety."""
    found = flagged = n_tumor = n_free = 0
    for g in np.unique(groups):
        m = groups == g
        if y[m].any():
            n_tumor += 1
            found += bool((p[m][y[m] == 1] >= threshold).any())
        else:
            n_free += 1
            flagged += bool((p[m] >= threshold).any())
    return {"tumor_patients": n_tumor, "tumor_patients_found": found,
            "tumor_free_patients": n_free, "tumor_free_patients_flagged": flagged}


def _patient_line(pf):
    """The verdict's sentence on `patient_flags`."""
    line = f"By patient at the site threshold: {pf['tumor_patients_found']} of {pf['tumor_patients']} tumor patients found"
    if pf["tumor_free_patients"]:
        line += (f", {pf['tumor_free_patients_flagged']} of {pf['tumor_free_patients']} tumor-free patients flagged "
                 "(a flag is a place in the reading order, not a finding)")
    else:
        line += ("; no patient has only tumor-free images, so the sample cannot show how often a tumor-free study is "
                 "flagged")
    return line + "."


def _development_check(development, groups):
    """The check of `evaluate` on near-copies of development images, with its summary; None if not checked."""
    from collections import Counter

    from screening_core import fingerprint
    if not development or development.get("copies") is None:
        return None
    found = [c for c in development["copies"] if c]
    least, share = fingerprint.MIN_COPIES
    ok = len(found) < max(least, share * len(groups))
    patients = len({g for g, c in zip(groups.tolist(), development["copies"], strict=True) if c})
    where = ", ".join(f"{n} {k}" for k, n in sorted(Counter(found).items()))
    why = (f"{len(found)} of {len(groups)} images (in {patients} patients) are near-copies of images the model was "
           f"developed on ({where}): figures on them measure its memory, not how it reads this site's scans; "
           "validate on the site's own patients")
    return {"check": ("near-copies of development images", ok, f"{len(found)}", why),
            "summary": {"checked": True, "images": len(found), "patients": patients,
                        "collections": dict(Counter(found)),
                        "keys": sorted({k for k, c in zip(development.get("keys") or [], development["copies"],
                                                          strict=False) if c})}}  # pseudonymised, as in the rows


def development_copies(paths, version_dir, metadata, member_name=lambda name: name):
    """({(key, member): the development collection it nearly copies, or None}, note) for `paths` ({key: local
    file}), or (None, why not). A loose file is member ""; an archive's members are named as the rows name them
    (`member_name`: the run's pseudonymiser).

    Each member is read and decoded as brain-score reads and decodes it (beam_pipeline.archives and decoding,
    with their limits); one of many frames (a volume, a multi-frame DICOM) is a copy when any frame is."""
    from beam_pipeline import archives, decoding, model_store
    from screening_core import fingerprint
    reference, why = fingerprint.load_development(model_store.stage(version_dir), metadata)
    if reference is None:
        return None, why
    fps, names = reference
    out, unread = {}, 0
    for key, path in paths.items():
        for chunk in archives.list_chunks(path, os.path.getsize(path)):
            for ref, data, err in archives.read_members(chunk):
                try:
                    if data is None:
                        raise OSError(ref.error_message or err)
                    frames = decoding.decode(data, ref.path or path).frames
                    thumbs = np.stack([fingerprint.thumbnail(fr.gray) for fr in frames])
                except (decoding.DecodeError, OSError, ValueError):
                    unread += 1  # brain-score reports it; not compared here
                    continue
                thumbs = thumbs[fingerprint.informative(thumbs)]  # blank: brain-score does not judge it either
                match = None
                if len(thumbs):
                    d, i = fingerprint.nearest(fingerprint.of_thumbnails(thumbs), fps)
                    j = int(np.argmin(d))
                    match = names[i[j]] if d[j] <= fingerprint.MAX_DISTANCE else None
                out[(key, member_name(ref.path))] = match
    return out, (f"{unread} images could not be read for the comparison" if unread else None)


def _compare_with_development(args, labels, rows, key_col, model, metadata, pseudonymiser):
    """`evaluate`'s `development`, one entry per labelled row as `join` orders them: the sample's files and
    archive members (--sample), or with --scores the scored rows' files where they are at hand (loose files
    scored with --keep-paths); a why where none is."""
    matched = list(labelled_rows(rows, key_col, labels))
    if args.sample:
        paths = {k: v[3] for k, v in labels.items()}
    else:
        paths = {k: r["source_uri"] for k, r in matched if not r["member_path"] and os.path.isfile(r["source_uri"] or "")}
        if not paths:
            return {"why": "--scores: the images' files are not at hand (paths pseudonymised, or in archives or a "
                           "PACS); brain-validate --sample compares them"}
    print(f"Comparing the {len(paths)} sample files with the images the model was developed on ...")
    copies, note = development_copies(paths, model, metadata, pseudonymiser.member if pseudonymiser else str)
    if copies is None:
        return {"why": note}
    per_row = [copies.get((k, r["member_path"] or "")) for k, r in matched]
    missing = 0 if args.sample else len({k for k, r in matched if (k, r["member_path"] or "") not in copies})
    if missing:
        note = "; ".join(filter(None, [note, f"{missing} scored images' files are not at hand"]))
    return {"copies": per_row, "keys": [k if not r["member_path"] else f"{k}!{r['member_path']}" for k, r in matched],
            "why": note}


PLANES = ("axial",) + studies.NON_AXIAL  # decoding.plane_of's answers


def _by_stratum(y, p, groups, values, order, threshold, min_patients, required_lower, specificity_floor):
    """({stratum: figures at the site threshold}, [strata validated], [(stratum, why it fails)]) for one kind of
    stratum (looks, planes; `values` one per image, None where unknown, `order` the strata in display order).

    A stratum is checked when it has `min_patients` tumor and tumor-free patients of its own; it is validated when
    its own sensitivity and specificity reach `required_lower` and `specificity_floor`. Point figures, not bounds:
    the pooled checks hold the bounds, and a stratum's own bound over 20 patients could never reach 0.90. When no
    image has a known value, validated is None: the sample says nothing about this kind (JPEG has no plane)."""
    from screening_core import metrics
    values = np.asarray(values, dtype=object)
    out, validated, failing = {}, [], []
    for name in order:
        m = values == name
        if not m.any():
            continue
        figures = metrics.evaluate_at(y[m], p[m], threshold, groups[m], 0)
        pos, neg = len(np.unique(groups[m][y[m] == 1])), len(np.unique(groups[m][y[m] == 0]))
        out[name] = {**figures, "n_positive_groups": pos, "n_negative_groups": neg}
        if pos < min_patients or neg < min_patients:
            continue
        low = [f"{k} {figures[k]:.3f} is below {floor:.3f}" for k, floor in
               (("sensitivity", required_lower), ("specificity", specificity_floor)) if figures[k] < floor]
        if low:
            failing.append((name, f"{' and '.join(low)} ({pos} tumor, {neg} tumor-free patients)"))
        else:
            validated.append(name)
    return out, (validated if out else None), failing


def _strata_check(strata, min_patients):
    """The check of `evaluate` that every look and plane with enough patients of its own holds on its own."""
    failing = [(kind, name, why) for kind, (_, _, fails) in strata.items() for name, why in fails]
    checked = sum(len(v) + len(f) for _, v, f in strata.values() if v is not None)
    names = {"look": lambda k: looks.NAMES.get(k, k), "plane": lambda k: f"{k} plane"}
    why = ("; ".join(f"{names[kind](name)}: {text}" for kind, name, text in failing)
           + " at the site threshold; the pooled figures hide it. Take those images out of the sample to validate "
             "the rest (brain-score then marks such series as not validated here)")
    value = (f"{len(failing)} of {checked} fail" if checked else f"none with {min_patients} patients of each class")
    return ("looks and planes on their own", not failing, value, why)


MAX_CLASS_MIX_DISTANCE = 0.5  # total variation distance between the classes' looks (or planes)
MIN_KNOWN_PER_CLASS = 10  # images of each class whose look (plane) is known before the mix is judged


def _class_mix_check(y, values, kind):
    """The check that tumor and tumor-free images come in the same looks (planes): None when fewer than
    MIN_KNOWN_PER_CLASS images of either class have a known one.

    Why: a sample whose tumors are T1 with contrast and whose tumor-free images are FLAIR (or sagittal against
    axial) is separated by the look alone, which is how public collections taught slice classifiers the wrong
    thing (docs/model_v4_notes.md); pooled figures on it measure the look as much as the tumor, and a site
    threshold chosen on it fits neither. The distance is the share of one class's images that would have to
    change look for the two classes to match."""
    values = np.asarray(values, dtype=object)
    known = np.array([v is not None and v != "other" for v in values], bool)
    pos, neg = values[known & (y == 1)], values[known & (y == 0)]
    if len(pos) < MIN_KNOWN_PER_CLASS or len(neg) < MIN_KNOWN_PER_CLASS:
        return None
    names = sorted(set(pos.tolist()) | set(neg.tolist()))
    share = {c: {n: float(np.mean(arr == n)) for n in names} for c, arr in (("tumor", pos), ("tumor-free", neg))}
    distance = 0.5 * sum(abs(share["tumor"][n] - share["tumor-free"][n]) for n in names)
    label = (lambda n: looks.NAMES.get(n, n)) if kind == "look" else (lambda n: n)
    most = {c: max(names, key=lambda n: share[c][n]) for c in share}
    why = (f"the tumor images are {share['tumor'][most['tumor']]:.0%} {label(most['tumor'])} and the tumor-free "
           f"ones {share['tumor-free'][most['tumor-free']]:.0%} {label(most['tumor-free'])}: the classes differ by "
           f"{kind} (distance {distance:.2f}, above {MAX_CLASS_MIX_DISTANCE}), so the pooled figures measure the "
           f"{kind} as much as the tumor; validate on tumor and tumor-free images of the same {kind}s")
    return (f"tumor and tumor-free images in the same {kind}s", distance <= MAX_CLASS_MIX_DISTANCE,
            f"distance {distance:.2f}", why)


def _calibration_png(curve):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="#999")
    ax.plot([c[0] for c in curve], [c[1] for c in curve], "o-", color="#4c72b0")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("share with tumor")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


MAX_CASES = 8


def cases(y, p, keys, subgroups, threshold, paths=None):
    """The missed tumors (lowest scores) and the worst false positives (highest) at `threshold`, each
    with its key (pseudonymised), subgroup, score and, where the real file is known (`paths`), a
    thumbnail of the model's input: what a reviewer looks at first."""
    def one(i):
        return {"key": keys[i], "subgroup": str(subgroups[i]), "probability": float(p[i]),
                "thumbnail": _thumbnail(paths.get(keys[i])) if paths else None}
    missed = [i for i in np.argsort(p) if y[i] == 1 and p[i] < threshold][:MAX_CASES]
    false_pos = [i for i in np.argsort(-p) if y[i] == 0 and p[i] >= threshold][:MAX_CASES]
    return {"missed_tumors": [one(i) for i in missed], "worst_false_positives": [one(i) for i in false_pos]}


def _thumbnail(path):
    """Base64 PNG of the model input of the image at `path` (128 px), or None if it cannot be read."""
    if not path:
        return None
    try:
        from PIL import Image

        from screening_core import preprocessing
        with open(path, "rb") as f:
            x = preprocessing.prepare(preprocessing.decode_raster(f.read()), preprocessing.InputSpec())[..., 0]
        buf = io.BytesIO()
        Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()
    except Exception:
        return None


def _roc_png(y, p, points):
    """ROC curve with the operating points marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from screening_core import metrics
    fpr, tpr, _ = metrics.roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="#999")
    ax.plot(fpr, tpr, color="#4c72b0")
    for name, (sens, spec), colour in zip(points, points.values(), ("#c44e52", "#55a868"), strict=False):
        ax.plot([1 - spec], [sens], "o", color=colour, label=name)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _confusion_html(name, m):
    c = m.get("confusion_matrix") or {}
    return (f"<tr><td>{html.escape(name)}</td><td>{c.get('tp', '-')}</td><td>{c.get('fn', '-')}</td>"
            f"<td>{c.get('fp', '-')}</td><td>{c.get('tn', '-')}</td></tr>")


def _cases_html(title, items, anchor):
    if not items:
        return f'<h2 id="{anchor}">{title}</h2><p>None at the site threshold.</p>'
    cells = "".join(
        '<figure style="display:inline-block;margin:4px">'
        + (f'<img src="data:image/png;base64,{c["thumbnail"]}" width="128" alt="model input">'
           if c.get("thumbnail") else "")
        + f'<figcaption>p={c["probability"]:.3f} {html.escape(c["subgroup"])}<br><code>'
        f'{html.escape(str(c["key"])[-40:])}</code></figcaption></figure>' for c in items)
    return f'<h2 id="{anchor}">{title}</h2><div>{cells}</div>'


def _looks_line(result):
    return _strata_line(result, "look", lambda k: looks.NAMES[k]) + " " + _strata_line(result, "plane", str)


def _strata_line(result, kind, name):
    """What the site profile validates of one kind of stratum (looks or planes), for validation.html and the console."""
    validated = result.get(f"validated_{kind}s")
    if validated is None:
        return f"No {kind} is known in this sample: the profile makes no claim about {kind}s."
    if not validated:
        return (f"No {kind} is validated: none has enough tumor and tumor-free patients of its own and holds on its "
                "own, or the verdict is not 'meets'.")
    # Validated strata exist only under a verdict that meets, which no stratum failing on its own allows: every
    # other stratum has too few patients of its own.
    others = [k for k in result.get(f"by_{kind}", {}) if k not in validated]
    tail = f"; too few patients of their own: {', '.join(name(k) for k in others)}" if others else ""
    return (f"Validated {kind}s: <b>{', '.join(name(k) for k in validated)}</b>{tail}. brain-score's report marks "
            f"flagged series of any other {kind} as not validated at this site.")


def _member_line(metadata):
    note = artifact.member_note(metadata)
    return (f'<p class="fails" id="member-model"><b>Not a screening model:</b> {html.escape(note)} '
            "(validated with --allow-member-model).</p>") if note else ""


def render_html(result, metadata, curve=None):
    def fmt(m, k):
        ci = (m.get("ci95") or {}).get(k)
        v = m.get(k)
        return "n/a" if v is None else f"{v:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{m['n']}</td><td>{m['n_positive']}</td>"
                   f"<td>{fmt(m, 'sensitivity')}</td><td>{fmt(m, 'specificity')}</td></tr>"
                   for name, m in result["by_subgroup"].items())
    look_rows = "".join(f"<tr><td>{looks.NAMES.get(k, k)}</td><td>{m['n']}</td><td>{m['n_positive']}</td>"
                        f"<td>{m['n_positive_groups']}</td><td>{m['n_negative_groups']}</td>"
                        f"<td>{fmt(m, 'sensitivity')}</td><td>{fmt(m, 'specificity')}</td></tr>"
                        for k, m in result.get("by_look", {}).items())
    plane_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{m['n']}</td><td>{m['n_positive']}</td>"
                         f"<td>{m['n_positive_groups']}</td><td>{m['n_negative_groups']}</td>"
                         f"<td>{fmt(m, 'sensitivity')}</td><td>{fmt(m, 'specificity')}</td></tr>"
                         for k, m in result.get("by_plane", {}).items())
    checks = "".join(f"<tr><td>{html.escape(c['check'])}</td><td>{html.escape(c['value'])}</td>"
                     f"<td>{'yes' if c['passed'] else '<b>NO</b>'}</td></tr>" for c in result.get("checks", []))
    a, s = result["at_artifact_threshold"], result["at_site_threshold"]
    ci = result["auc_ci95"]
    auc_ci = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Local validation</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1000px}} td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}} .{'meets' if result['meets'] else 'fails'}{{padding:8px 12px;border:1px solid;
background:{'#d4edda' if result['meets'] else '#f8d7da'}}}</style></head><body>
<h1>Local validation of {html.escape(metadata['name'])} v{html.escape(str(metadata['version']))}</h1>
<p class="{'meets' if result['meets'] else 'fails'}" id="verdict">{html.escape(result['verdict'])}</p>
{_member_line(metadata)}
<p>{result['n_images']} images, {result['n_positive']} with tumor, {result['n_groups']} groups (patients/studies);
AUC {result['roc_auc']:.3f}{auc_ci};
out of distribution: {'n/a' if result['out_of_distribution_share'] is None else f"{result['out_of_distribution_share']:.1%}"}.</p>
<table><tr><th>threshold</th><th>value</th><th>sensitivity (95% CI)</th><th>specificity (95% CI)</th></tr>
<tr><td>model's own</td><td>{result['artifact_threshold']:.4f}</td><td>{fmt(a, 'sensitivity')}</td><td>{fmt(a, 'specificity')}</td></tr>
<tr><td>site (target sensitivity {result['target_sensitivity']})</td><td>{result['site_threshold']:.4f}</td>
<td>{fmt(s, 'sensitivity')}</td><td>{fmt(s, 'specificity')}</td></tr></table>
<h2>Confusion (images)</h2><table id="confusion"><tr><th>threshold</th><th>tumor found</th><th>tumor missed</th>
<th>false alarms</th><th>correctly clear</th></tr>{_confusion_html("model's own", a)}{_confusion_html("site", s)}</table>
{f'<h2>ROC</h2><img id="roc" alt="ROC curve" src="data:image/png;base64,{curve}">' if curve else ""}
{_cases_html("Missed tumors (lowest scores)", result.get("cases", {}).get("missed_tumors", []), "missed")}
{_cases_html("Worst false positives (highest scores)", result.get("cases", {}).get("worst_false_positives", []),
             "false-positives")}
<h2>Checks (all must pass for "meets")</h2><table id="checks"><tr><th>check</th><th>value</th><th>passed</th></tr>
{checks}</table>
<h2>By look (site threshold)</h2><p id="validated-looks">{_strata_line(result, "look", lambda k: looks.NAMES[k])}</p>
<table id="by-look"><tr><th>look</th><th>images</th><th>tumor</th><th>tumor patients</th><th>tumor-free patients</th>
<th>sensitivity</th><th>specificity</th></tr>{look_rows}</table>
<h2>By plane (site threshold)</h2><p id="validated-planes">{_strata_line(result, "plane", str)}</p>
<table id="by-plane"><tr><th>plane</th><th>images</th><th>tumor</th><th>tumor patients</th><th>tumor-free patients</th>
<th>sensitivity</th><th>specificity</th></tr>{plane_rows}</table>
<h2>By subgroup (site threshold)</h2><table><tr><th>subgroup</th><th>images</th><th>tumor</th><th>sensitivity</th>
<th>specificity</th></tr>{rows}</table>
<h2>Calibration</h2><img id="calibration" alt="calibration curve" src="data:image/png;base64,{_calibration_png(result['calibration'])}">
</body></html>"""


def relaxed_checks(args):
    """The checks run below their defaults ("sensitivity lower bound 0.80 (default 0.90)", ...): a site may lower
    them (a sample of 20 tumor patients, all found, has a Wilson bound of 0.84), but the verdict, the site profile
    and every report that applies the profile say so."""
    rows = (("target sensitivity", args.target_sensitivity, DEFAULT_TARGET_SENSITIVITY),
            ("sensitivity lower bound", args.required_lower_bound, DEFAULT_REQUIRED_LOWER),
            ("specificity floor", args.specificity_floor, DEFAULT_SPECIFICITY_FLOOR),
            ("AUC floor", args.auc_floor, DEFAULT_AUC_FLOOR),
            ("patients of each class", args.min_patients, DEFAULT_MIN_PATIENTS))
    return [f"{name} {value:g} (default {default:g})" for name, value, default in rows if value < default]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="brain-validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--sample", help="folder of labelled images (class folders), scored here")
    src.add_argument("--scores", help="output of an earlier brain-score run (with --labels)")
    parser.add_argument("--labels", help="labels CSV for --scores")
    parser.add_argument("--output", required=True, help="folder for validation.json/.html and site_profile.json")
    parser.add_argument("--model", default=None, help="model artifact (default: brain-score's default)")
    parser.add_argument("--target-sensitivity", type=float, default=DEFAULT_TARGET_SENSITIVITY,
                        help="(default: %(default)s)")
    parser.add_argument("--required-lower-bound", type=float, default=DEFAULT_REQUIRED_LOWER,
                        help="the verdict is met when the sensitivity's lower 95%% CI bound at the site threshold "
                             "reaches this (default: %(default)s)")
    parser.add_argument("--specificity-floor", type=float, default=DEFAULT_SPECIFICITY_FLOOR,
                        help="the specificity's lower 95%% bound at the site threshold must reach this: a tool that "
                             "flags most tumor-free patients is not usable (default: %(default)s)")
    parser.add_argument("--auc-floor", type=float, default=DEFAULT_AUC_FLOOR,
                        help="the AUC's lower 95%% bound (patient bootstrap) must reach this (default: %(default)s)")
    parser.add_argument("--min-patients", type=int, default=DEFAULT_MIN_PATIENTS,
                        help="tumor and tumor-free patients each; fewer gives 'insufficient sample' "
                             "(default: %(default)s)")
    parser.add_argument("--group-pattern", default=None,
                        help="regex on a sample file's name whose first group is its patient, as in the trainer; "
                             "without it the folder holding the image is the patient, unless that is a class "
                             "folder (then every image is its own group, and the sample is insufficient unless "
                             "--one-image-per-patient)")
    parser.add_argument("--one-image-per-patient", action="store_true", default=False,
                        help="each labelled image comes from another patient (one key slice per study): count images "
                             "as patients. Without it, an image with no known patient makes the sample insufficient")
    parser.add_argument("--pseudonym-key-file", default=None,
                        help="key for path pseudonyms, as in brain-score (default: $BRAIN_SCREENING_PSEUDONYM_KEY or "
                             "brain-score's default key file)")
    parser.add_argument("--force", action="store_true", default=False,
                        help="write site_profile.json even when the verdict is not 'meets' (recorded in it; "
                             "brain-score refuses it unless told --force-site-profile)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--allow-member-model", action="store_true", default=False,
                        help="validate a model artifact marked as an ensemble's member (metadata member_of); refused "
                             "by default: a site profile for it would let brain-score screen with it")
    args = parser.parse_args(argv)
    from beam_pipeline import cli, drift, model_store, pseudonym, run, site_profile
    cli.quiet_tensorflow()
    try:
        if args.scores and not args.labels:
            raise ValidationError("--scores needs --labels")
        if not all(0 < v < 1 for v in (args.target_sensitivity, args.required_lower_bound,
                                           args.specificity_floor, args.auc_floor)):
            raise ValidationError("--target-sensitivity, --required-lower-bound, --specificity-floor and "
                                  "--auc-floor must be in (0, 1)")
        if args.min_patients < 1:
            raise ValidationError("--min-patients must be at least 1")
        if args.auc_floor <= 0.5:
            raise ValidationError(f"--auc-floor {args.auc_floor} is at or below chance (0.5): a model no better than "
                                  "a coin could meet it")
        try:
            group_rx = re.compile(args.group_pattern) if args.group_pattern else None
        except re.error as e:
            raise ValidationError(f"--group-pattern {args.group_pattern!r}: {e}") from e
        key_file = args.pseudonym_key_file or os.environ.get("BRAIN_SCREENING_PSEUDONYM_KEY",
                                                             pseudonym.DEFAULT_KEY_FILE)
        model, _ = model_store.resolve(args.model or model_store.DEFAULT_MODEL)
        metadata = model_store.metadata(model)
        member = model_store.member_allowed(metadata, args.allow_member_model, "Validate")
        if args.sample:
            key = pseudonym.load_or_create_key(key_file)
            sample = os.path.abspath(args.sample)
            labels, key_col = sample_labels(sample, key, group_rx), "source_uri"
            groups = {v[1] for v in labels.values()}
            print(f"{len(labels)} labelled images in {len(groups)} patient groups "
                  f"({'--group-pattern' if group_rx else 'one folder per patient'})")
            missed = unmatched_names([v[3] for v in labels.values()], group_rx) if group_rx else 0
            if missed:
                print(f"WARNING: --group-pattern does not match {missed} of {len(labels)} file names; those are "
                      "grouped by their folder or stand alone: check the pattern", file=sys.stderr)
            if len(groups) == len(labels):
                print("WARNING: every image is its own group: patients are unknown, so the sample size is "
                      "overstated; give --group-pattern or one folder per patient", file=sys.stderr)
            scores = os.path.join(args.output, "scores")
            run.run(["--input", sample, "--output", scores, "--model", model, "--no-heatmaps", "--no-report",
                     "--log-format", "text", "--pseudonym-key-file", key_file,
                     *(["--allow-member-model"] if member else [])])
        else:
            key_col, labels = csv_labels(args.labels)
            scores = args.scores
        import pyarrow.parquet as pq
        summary = run.read_summary(scores)
        if summary["model"]["model_sha256"] != metadata["model_sha256"]:
            raise ValidationError(f"{scores} was scored with another model ({summary['model']['model_name']} "
                                  f"v{summary['model']['model_version']}); validate the model that scored it")
        rows = pq.read_table(summary["result"]["output_files"]).to_pylist()
        y, p, groups, subgroups, in_dist, unmatched, keys, image_looks, image_planes, patient_known = join(
            rows, key_col, labels)
        if args.one_image_per_patient:
            patient_known[:] = True
        development = _compare_with_development(args, labels, rows, key_col, model, metadata,
                                                pseudonym.Pseudonymiser(key) if args.sample else None)
        reference = drift.reference_of(metadata)
        result = evaluate(y, p, groups, subgroups, in_dist, float(metadata["threshold"]), args.target_sensitivity,
                          args.required_lower_bound, args.bootstrap, args.specificity_floor, args.auc_floor,
                          args.min_patients, image_looks, development, image_planes, patient_known,
                          drift.ood_limit(reference) if reference else None)
        result["unmatched_labels"] = unmatched
        result["relaxed_checks"] = relaxed_checks(args)
        if result["relaxed_checks"]:
            result["verdict"] += (" NOTE: checks relaxed below their defaults: " + "; ".join(result["relaxed_checks"])
                                  + ".")
        result["one_image_per_patient_stated"] = bool(args.one_image_per_patient)
        if args.one_image_per_patient:
            result["verdict"] += (" NOTE: each image was counted as a patient of its own, as --one-image-per-patient "
                                  "stated; the patient counts and bounds rest on that statement.")
        if unmatched:
            many = unmatched > 1
            result["verdict"] += (f" NOTE: {unmatched} labelled image{'s were' if many else ' was'} not scored "
                                  "(blank, unreadable or not found among the scored rows; the scores' Parquet gives "
                                  f"each scored file's error_code) and {'are' if many else 'is'} not in these figures.")
        result["cases"] = cases(y, p, keys, subgroups, result["site_threshold"],
                                {k: v[3] for k, v in labels.items() if len(v) > 3})
        points = {f"model's own ({result['artifact_threshold']:.3f})": (
            result["at_artifact_threshold"]["sensitivity"], result["at_artifact_threshold"]["specificity"]),
            f"site ({result['site_threshold']:.3f})": (result["sensitivity"], result["specificity"])}
        curve = _roc_png(y, p, points)
    except artifact.ArtifactError as e:  # --model: missing, broken, or an ensemble's member
        print(f"error: model: {e}", file=sys.stderr)
        return 2
    except (ValidationError, run.JobError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "validation.json"), "w") as f:
        json.dump({**result, "cases": {k: [{**c, "thumbnail": None} for c in v]
                                       for k, v in result.get("cases", {}).items()}}, f, indent=2)
    with open(os.path.join(args.output, "validation.html"), "w") as f:
        f.write(render_html(result, metadata, curve))
    written = ["validation.html", "validation.json"]
    profile_path = os.path.join(args.output, "site_profile.json")
    if os.path.exists(profile_path):  # an earlier run's profile must not outlive this verdict
        os.remove(profile_path)
    if result["meets"] or args.force:
        profile = site_profile.build(metadata, result["site_threshold"], args.target_sensitivity, {
            **{k: result[k] for k in ("n_images", "n_positive", "n_groups", "n_positive_groups", "n_negative_groups",
                                      "roc_auc", "auc_lower95", "sensitivity", "sensitivity_lower95", "specificity",
                                      "specificity_lower95", "status", "meets", "verdict", "validated_looks",
                                      "validated_planes", "one_image_per_patient_stated", "relaxed_checks")},
            "forced": not result["meets"]})
        site_profile.write(profile, profile_path)
        written.append("site_profile.json")
    print(result["verdict"])
    print(re.sub(r"</?b>", "", _looks_line(result)))
    if not result["meets"]:
        print("No site profile written" + (" (--force: written anyway, marked forced)" if args.force else
                                           " (the verdict is not 'meets')"), file=sys.stderr)
    for name in written:
        print(f"  {os.path.join(args.output, name)}")
    return 0 if result["meets"] else 3


if __name__ == "__main__":
    sys.exit(main())

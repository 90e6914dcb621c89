"""What a lesion-first model is judged on, beyond slice AUC: where its map points and how it treats levels.

- Slice metrics per split and source (trainer/evaluation.py), threshold chosen
  on validation sources that carry clean labels.
- Lesion map on validation and held-out LGG FLAIR tumor slices: Dice of the
  map at 0.5, the pointing game (map peak inside the mask dilated by 4 input
  pixels) and the share of the map's mass inside that dilated mask.
- Tumor-free slices by anatomical level bin: a slice classifier flags whole
  levels (posterior fossa, vertex); the table shows the median score and the
  share flagged per bin.

Stress tests (a tumor put into each source's tumor-free slices) live in trainer/stress.py.

Tumor-free slices by level for any artifact from its validation_predictions.csv (v3 before, v4 after):

  python -m trainer.lesion_eval levels models/brain-tumor-cnn/3 models/brain-tumor-cnn/4 --out levels.json
"""
import csv
import json
import os
import posixpath
import re

import numpy as np

from trainer import HelpFormatter, evaluation, lesion_data

DILATE_CELLS = 2  # on the 64x64 map: 4 pixels of the 128 px input


def predict(model, x, batch=128):
    """(slice scores, lesion maps) of prepared inputs (n, H, W) f16."""
    import keras
    twin = getattr(model, "_score_and_map", None)
    if twin is None:
        twin = keras.Model(model.inputs, [model.output, model.get_layer("lesion_map").output])
        model._score_and_map = twin
    scores, maps = [], []
    for i in range(0, len(x), batch):
        s, m = twin.predict_on_batch(x[i:i + batch].astype(np.float32)[..., None])
        scores.append(np.asarray(s).reshape(-1))
        maps.append(np.asarray(m)[..., 0].astype(np.float16))
    return np.concatenate(scores).astype(np.float64), np.concatenate(maps)


def _downsample(mask_u8, size):
    n, h, _ = mask_u8.shape
    f = h // size
    return (mask_u8.astype(np.float32) / 255.0).reshape(n, size, f, size, f).mean(axis=(2, 4)) >= 0.5


MAP_LEVELS = (0.01, 0.02, 0.03) + tuple(round(0.05 * i, 2) for i in range(1, 11))  # candidate map levels, 0.01-0.5


def _dice(maps, truth, level):
    pred = maps >= level
    inter = (pred & truth).reshape(len(maps), -1).sum(1)
    return 2 * inter / np.maximum(pred.reshape(len(maps), -1).sum(1) + truth.reshape(len(maps), -1).sum(1), 1)


def _masked(maps, masks_u8):
    maps = maps.astype(np.float32)
    truth = _downsample(masks_u8, maps.shape[1])
    keep = truth.reshape(len(truth), -1).any(axis=1)
    return maps[keep], truth[keep]


def choose_map_level(maps, masks_u8):
    """The map level (outline, area) with the best mean Dice on validation slices with a mask.

    The map's probabilities are calibrated low (the pixel loss weighs a sea of negatives): at 0.5 it
    outlines the lesion's core. The level is chosen on validation and only applied elsewhere."""
    maps, truth = _masked(maps, masks_u8)
    if not len(maps):
        return 0.5
    return max(MAP_LEVELS, key=lambda lv: (float(_dice(maps, truth, lv).mean()), lv))


def lesion_figures(maps, masks_u8, level=0.5):
    """Dice at 0.5 and at the chosen map `level`, pointing game and mass inside the dilated mask,
    over slices with a mask."""
    maps, truth = _masked(maps, masks_u8)
    if not len(maps):
        return {"n": 0}
    dice = _dice(maps, truth, 0.5)
    at_level = _dice(maps, truth, level)
    from screening_core.gradcam import grow
    dil = grow(truth, DILATE_CELLS)
    flat = maps.reshape(len(maps), -1)
    peak_in = dil.reshape(len(maps), -1)[np.arange(len(maps)), flat.argmax(1)]
    mass_in = (flat * dil.reshape(len(maps), -1)).sum(1) / np.maximum(flat.sum(1), 1e-9)
    return {"n": int(len(maps)), "dice_mean": round(float(dice.mean()), 4),
            "dice_median": round(float(np.median(dice)), 4),
            "map_level": level, "dice_mean_at_map_level": round(float(at_level.mean()), 4),
            "dice_median_at_map_level": round(float(np.median(at_level)), 4),
            "pointing_game": round(float(peak_in.mean()), 4), "mass_inside_mask": round(float(mass_in.mean()), 4)}


def level_table(scores, labels, level, sources, threshold, n_bins=5):
    """{source: [{bin, n, median score, share flagged}]} for tumor-free slices."""
    bins = lesion_data.level_bins(level, n_bins)
    out = {}
    for s in sorted(set(sources.tolist())):
        rows = []
        for b in range(n_bins):
            sel = (sources == s) & (labels == 0) & (bins == b)
            if sel.any():
                rows.append({"bin": f"{b / n_bins:.1f}-{(b + 1) / n_bins:.1f}", "n": int(sel.sum()),
                             "median": round(float(np.median(scores[sel])), 4),
                             "flagged": round(float((scores[sel] >= threshold).mean()), 4)})
        if rows:
            out[s] = rows
    return out


SERIES_RULES = {"any slice": 1, "2 neighbouring slices": 2}


def _runs(flags):
    """Longest run of consecutive True values."""
    best = cur = 0
    for f in flags:
        cur = cur + 1 if f else 0
        best = max(best, cur)
    return best


_VOLUME_SLICE = re.compile(r"^(.+)_z(\d+)\.\w+$")  # a volume cut into slices (healthy heads, volume_slices)


def _volume_slice(path):
    """(volume, slice number) of a `<volume>_z<slice>` file, else None."""
    m = _VOLUME_SLICE.match(posixpath.basename(path.replace("\\", "/")))
    return (m.group(1), int(m.group(2))) if m else None


def series_table(rows, threshold):
    """{split/source: {rule: sensitivity, specificity, n}} over series parts of patient stacks.

    Every patient of LGG and BraTS has a tumor, so a patient's stack in one sequence is split into its
    tumor slices (a positive part) and its tumor-free slices (a negative part, from other levels). A
    volume cut into `<volume>_z<slice>` files (the healthy heads) is a whole tumor-free series, the one
    real kind: at 5-25 % of slices flagged, a series of 70-190 slices rarely escapes (notes row SER). A
    rule flags a part when it finds `k` neighbouring slices (in slice order) at or above the threshold.
    """
    parts = {}
    for r in rows:
        pos = lesion_data.stack_position(r["path"], r["source"].split("/")[0]) or _volume_slice(r["path"])
        if pos:
            parts.setdefault((f"{r['split']}/{r['source']}", pos[0], r["label"]), []).append(
                (pos[1], r["score"] >= threshold))
    out = {}
    for (key, _, label), members in parts.items():
        flags = [f for _, f in sorted(members)]
        for rule, k in SERIES_RULES.items():
            cell = out.setdefault(key, {}).setdefault(rule, {"tp": 0, "pos": 0, "tn": 0, "neg": 0})
            hit = _runs(flags) >= k
            if label == 1:
                cell["pos"] += 1
                cell["tp"] += int(hit)
            else:
                cell["neg"] += 1
                cell["tn"] += int(not hit)
    for rules in out.values():
        for rule, c in rules.items():
            rules[rule] = {"sensitivity": round(c["tp"] / c["pos"], 4) if c["pos"] else None,
                           "specificity": round(c["tn"] / c["neg"], 4) if c["neg"] else None,
                           "positive_parts": c["pos"], "negative_parts": c["neg"]}
    return dict(sorted(out.items()))


def tumor_free_series_max(rows):
    """{look: sorted highest slice score of each whole tumor-free series of that look} over volumes cut into
    `<volume>_z<slice>` files (the held-out healthy heads). The report ranks a study's highest score against
    them ("tumor-free heads as high"), a study-level false-alarm rate at the study's own score, since nearly
    every tumor-free series has a slice above the threshold (series_table); by look, because a look without
    tumor-free heads here (T2, PD) is no better for ranking high against FLAIR and T1 heads."""
    from screening_core import looks
    best = {}
    for r in rows:
        volume = _volume_slice(r["path"])
        if volume and int(r["label"]) == 0 and not lesion_data.stack_position(r["path"], r["source"].split("/")[0]):
            key = (looks.look_of(r["source"].split("/")[-1]) or "other", r["split"], r["source"], volume[0])
            best[key] = max(best.get(key, 0.0), float(r["score"]))
    out = {}
    for (look, *_), v in best.items():
        out.setdefault(look, []).append(round(v, 6))
    return {look: sorted(v) for look, v in sorted(out.items())}


def t2_coverage(examples, labels, is_train):
    """Training T2 slices with a tumor, and their patients (the sequence no other collection covers)."""
    idx = [i for i in np.flatnonzero(is_train) if examples[i].sequence == "t2" and labels[i] == 1]
    positions = [lesion_data.stack_position(examples[i].path, examples[i].collection) for i in idx]
    patients = {pos[0] for pos in positions if pos}
    return {"tumor_slices": len(idx), "patients": len(patients),
            "collections": sorted({examples[i].collection for i in idx})}


def evaluate_all(model, data, arrays, ext, ext_arrays, args):
    """Rows, metrics, lesion figures and level tables for validation, held-out site and external sets."""
    ex, labels, groups = data["examples"], data["labels"], data["groups"]
    parts = [("validation", np.flatnonzero(data["is_val"]), ex, labels, groups, arrays)]
    if data["is_holdout"].any():
        parts.append(("held_out_site", np.flatnonzero(data["is_holdout"]), ex, labels, groups, arrays))
    if ext_arrays is not None:
        parts.append(("external", np.arange(len(ext["examples"])), ext["examples"], ext["labels"], ext["groups"],
                      ext_arrays))
    rows, scored = [], {}
    for split, idx, exs, labs, grps, arr in parts:
        scores, maps = predict(model, arr["x"][idx])
        scored[split] = (idx, scores, maps, exs, labs, arr)
        for i, s in zip(idx, scores, strict=True):
            rows.append({"path": exs[i].path, "class_name": exs[i].class_name, "label": int(labs[i]),
                         "group": int(grps[i]), "score": float(s), "split": split,
                         "source": evaluation.source_key(exs[i]), "level": float(arr["level"][i])})
    m = evaluation.operating_metrics(rows, args.target_sensitivity, args.threshold_sources, args.bootstrap)
    lesion = {"map_figures": {}, "level_bins": {}}

    def with_masks(split):
        idx, _, maps, exs, labs, arr = scored[split]
        src = np.array([evaluation.source_key(exs[i]) for i in idx])
        for s in sorted(set(src.tolist())):
            sel = (src == s) & (labs[idx] == 1) & (arr["mask"][idx].reshape(len(idx), -1).max(1) > 0)
            if sel.any() and (s.endswith("flair") or s.endswith("t2")):
                yield s, maps[sel], arr["mask"][idx][sel]

    val_sets = list(with_masks("validation"))
    lesion["map_level"] = choose_map_level(np.concatenate([m for _, m, _ in val_sets]),
                                           np.concatenate([k for _, _, k in val_sets])) if val_sets else 0.5
    for split in scored:
        for s, maps, masks in with_masks(split):
            lesion["map_figures"][f"{split}/{s}"] = lesion_figures(maps, masks, lesion["map_level"])
    for split, (idx, scores, _maps, exs, labs, arr) in scored.items():
        src = np.array([evaluation.source_key(exs[i]) for i in idx])
        lesion["level_bins"][split] = level_table(scores, np.asarray(labs)[idx], arr["level"][idx], src,
                                                  m["threshold"])
    lesion["series"] = series_table(rows, m["threshold"])
    lesion["tumor_free_series_max"] = tumor_free_series_max(rows)
    lesion["t2_coverage"] = t2_coverage(ex, labels, ~data["is_val"] & ~data["is_holdout"])
    return {"metrics": m, "lesion": lesion, "rows": rows}


COLUMNS = ["path", "class_name", "label", "group", "score", "split", "source", "level"]


def write_extras(out_dir, metadata, data, report):
    """validation_predictions.csv (with level) and lesion.json beside the artifact; the card (model_card)."""
    from screening_core import artifact
    from trainer import eda, model_card
    eda.write_report(data["report"], os.path.join(out_dir, "eda"))
    with open(os.path.join(out_dir, artifact.PREDICTIONS_FILE), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in report["rows"]:
            w.writerow([repr(r[c]) if c in ("score", "level") else r[c] for c in COLUMNS])
    with open(os.path.join(out_dir, "lesion.json"), "w") as f:
        json.dump(report["lesion"], f, indent=2)
    write_plots(out_dir, metadata, report["rows"])
    from trainer import targets  # read off the rows just written: the card shows them from the start
    metadata = targets.write_to_artifact(out_dir, targets.measure(out_dir, metadata))
    with open(os.path.join(out_dir, artifact.MODEL_CARD_FILE), "w") as f:
        f.write(model_card.render(metadata, data["report"]))


def write_plots(out_dir, metadata, rows):
    """roc.png and calibration.png (the card names them) over the validation rows of the threshold
    sources: the rows the card's validation metrics and the threshold come from."""
    import re

    from trainer import plots
    sources = (metadata.get("training_config") or {}).get("threshold_sources") or ""
    val = [r for r in rows if r["split"] == "validation" and (not sources or re.search(sources, r["source"]))]
    if val:
        plots.write_plots(np.array([int(r["label"]) for r in val]), np.array([float(r["score"]) for r in val]),
                          metadata["threshold"], out_dir)


def _row_levels(rows):
    """Level of each prediction row (lesion_data.levels), decoding images only where no stack position exists."""
    from screening_core import preprocessing
    from trainer.discovery import Example
    ex = [Example(r["path"], int(r["label"]), r["class_name"], "", *(r["source"].split("/", 1) + [""])[:2])
          for r in rows]
    shares = []
    for e in ex:
        if lesion_data.stack_position(e.path, e.collection):
            shares.append(0.0)
            continue
        with open(e.path, "rb") as f:
            shares.append(lesion_data.head_share(preprocessing.decode_raster(f.read())))
    return lesion_data.levels(ex, shares)


def levels_of_artifact(version_dir):
    """{split: level table} at the artifact's own threshold, from its scored rows."""
    with open(os.path.join(version_dir, "metadata.json")) as f:
        threshold = json.load(f)["threshold"]
    with open(os.path.join(version_dir, "validation_predictions.csv")) as f:
        rows = [r for r in csv.DictReader(f) if os.path.exists(r["path"])]
    lv = _row_levels(rows)
    out = {"threshold": threshold}
    for split in sorted({r["split"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["split"] == split]
        out[split] = level_table(np.array([float(rows[i]["score"]) for i in idx]),
                                 np.array([int(rows[i]["label"]) for i in idx]), lv[idx],
                                 np.array([rows[i]["source"] for i in idx]), threshold)
    return out


def _mask_of(path):
    """The mask file beside a masked collection's slice: <collection>/masks/<same stem>.*, or None."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(path)))  # <collection>/<sequence>/<class>/<file>
    stem = os.path.splitext(os.path.basename(path))[0]
    mdir = os.path.join(root, "masks")
    if not os.path.isdir(mdir):
        return None
    hits = [f for f in os.listdir(mdir) if os.path.splitext(f)[0] == stem]
    return os.path.join(mdir, hits[0]) if hits else None


def map_level_of_artifact(version_dir, write=False):
    """Choose a lesion-map artifact's map level on its validation FLAIR/T2 tumor slices with masks and
    report the map figures at it for every split; with `write`, store both in its metadata (re-sealed:
    model.keras is untouched, so the ONNX binding holds). For artifacts trained before the level existed."""
    from screening_core import artifact
    model, md = artifact.load(version_dir)
    size = md["input_spec"]["height"]
    with open(os.path.join(version_dir, "validation_predictions.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["label"] == "1" and r["source"].endswith(("flair", "t2"))
                and os.path.exists(r["path"])]
    by_key = {}
    for r in rows:
        mask = _mask_of(r["path"])
        if mask:
            x, m, _, _ = lesion_data._load_one((r["path"], mask, "", size, md["input_spec"]["preprocessing"]))
            by_key.setdefault(f"{r['split']}/{r['source']}", []).append((x, m))
    maps = {k: (predict(model, np.stack([x for x, _ in v]))[1], np.stack([m for _, m in v]))
            for k, v in by_key.items()}
    val = [k for k in maps if k.startswith("validation/")]
    if not val:
        raise ValueError(f"{version_dir}: no validation FLAIR/T2 tumor slice with a mask to choose a level on")
    level = choose_map_level(np.concatenate([maps[k][0] for k in val]), np.concatenate([maps[k][1] for k in val]))
    figures = {k: lesion_figures(mp, mk, level) for k, (mp, mk) in sorted(maps.items())}
    if write:
        artifact.update_metadata(version_dir, lambda metadata: metadata.setdefault("lesion", {}).update(
            map_level=level, map_figures=figures))
    return {"map_level": level, "map_figures": figures}


def _rates_at(labels, scores, sensitivity=None, specificity=None):
    """Specificity at the highest threshold reaching `sensitivity`, or sensitivity at the lowest reaching
    `specificity` (the issue's operating points, read off the ROC)."""
    pos, neg = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    if not len(pos) or not len(neg):
        return None
    if sensitivity is not None:
        t = pos[int(np.floor((1 - sensitivity) * len(pos)))]
        return float(np.mean(neg < t))
    t = neg[min(int(np.ceil(specificity * len(neg))), len(neg) - 1)]
    return float(np.mean(pos > t))


def compare(artifacts):
    """{artifact: {split/source: {n, auc, spec@sens0.90, sens@spec0.95}}} from their scored rows."""
    from screening_core import metrics
    out = {}
    for a in artifacts:
        with open(os.path.join(a, "validation_predictions.csv")) as f:
            rows = list(csv.DictReader(f))
        table = {}
        for key in sorted({f"{r['split']}/{r['source']}" for r in rows}):
            sel = [r for r in rows if f"{r['split']}/{r['source']}" == key]
            y = np.array([int(r["label"]) for r in sel])
            p = np.array([float(r["score"]) for r in sel])
            if len(set(y.tolist())) < 2:
                continue
            table[key] = {"n": len(sel), "auc": round(float(metrics.roc_auc(y, p)), 4),
                          "spec_at_sens_0.90": round(_rates_at(y, p, sensitivity=0.90), 4),
                          "sens_at_spec_0.95": round(_rates_at(y, p, specificity=0.95), 4)}
        out[a] = table
    return out


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m trainer.lesion_eval", description=__doc__, allow_abbrev=False,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    lv = sub.add_parser("levels", allow_abbrev=False, help="tumor-free slices by level bin for artifacts (their own thresholds)")
    lv.add_argument("artifacts", nargs="+")
    lv.add_argument("--out", default="")
    ml = sub.add_parser("map-level", allow_abbrev=False, help="choose a lesion-map artifact's map level on validation masks and "
                                          "report Dice/pointing/mass at it (--write stores it, re-sealed)")
    ml.add_argument("artifact")
    ml.add_argument("--write", action="store_true")
    cmp_ = sub.add_parser("compare", allow_abbrev=False, help="AUC and the issue's operating points per split/source, side by side")
    cmp_.add_argument("artifacts", nargs="+")
    cmp_.add_argument("--out", default="")
    pl = sub.add_parser("plots", allow_abbrev=False, help="write roc.png and calibration.png of artifacts from their "
                                      "validation_predictions.csv (artifacts made before the lesion trainer drew them)")
    pl.add_argument("artifacts", nargs="+")
    args = p.parse_args(argv)
    if args.command == "plots":
        from screening_core import artifact
        for a in args.artifacts:
            with open(os.path.join(a, "metadata.json")) as f:
                metadata = json.load(f)
            with open(os.path.join(a, artifact.PREDICTIONS_FILE), newline="") as f:
                write_plots(a, metadata, list(csv.DictReader(f)))
            print(f"{a}: roc.png, calibration.png")
        return 0
    if args.command == "map-level":
        print(json.dumps(map_level_of_artifact(args.artifact, args.write), indent=2))
        return 0
    if args.command == "compare":
        result = compare(args.artifacts)
        keys = sorted({k for t in result.values() for k in t})
        print("| split/source | n | " + " | ".join(f"{os.path.basename(a.rstrip('/'))}: AUC / spec@sens.90 / "
                                                  f"sens@spec.95" for a in args.artifacts) + " |")
        print("|---|---|" + "---|" * len(args.artifacts))
        for k in keys:
            n = next(t[k]["n"] for t in result.values() if k in t)
            cells = [f"{t[k]['auc']:.3f} / {t[k]['spec_at_sens_0.90']:.3f} / {t[k]['sens_at_spec_0.95']:.3f}"
                     if k in t else "-" for t in result.values()]
            print(f"| {k} | {n} | " + " | ".join(cells) + " |")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    result = {a: levels_of_artifact(a) for a in args.artifacts}
    for a, tables in result.items():
        print(f"## {a} (threshold {tables['threshold']:.4f})")
        print("| split | source | level bin | n | median | flagged |")
        print("|---|---|---|---|---|---|")
        for split, by_source in tables.items():
            if split == "threshold":
                continue
            for source, bins in by_source.items():
                for b in bins:
                    print(f"| {split} | {source} | {b['bin']} | {b['n']} | {b['median']:.3f} | "
                          f"{100 * b['flagged']:.1f}% |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

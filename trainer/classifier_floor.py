"""The highest classifier floor an ensemble's validation operating points allow (v30: -5.5 on v29's members).

  python -m trainer.classifier_floor models/brain-tumor-cnn/29

Why: an ensemble's slice classifiers learnt the look of their collections and veto a lesion the maps
find on a slice of a tumor-free collection's look with log-odds far below anything they gave a
validation tumor (docs/model_v4_notes.md row VF). `trainer.ensemble --classifier-floor F` caps each
classifier's log-odds at F from below. This command chooses F without looking at any external source:
it scores the ensemble's own validation rows (validation_predictions.csv) with each member named in its
metadata, and for each candidate floor chooses the threshold again as the artifact's was chosen (its
target sensitivity on its threshold sources) and compares every validation source's counts at that
threshold with the unfloored ensemble's. The answer is the highest candidate at which none moves.
"""
import argparse
import os

import numpy as np

from trainer import HelpFormatter, artifact_data, evaluation
from trainer.ensemble import member_artifacts

CANDIDATES = tuple(-8.0 + 0.5 * i for i in range(14))  # -8 ... -1.5


def _log_odds(p):
    from screening_core.evidence import EPS
    p = np.clip(np.asarray(p, np.float64).reshape(-1), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def members_of(metadata):
    """([classifier artifact folders], [map artifact folders]) of an ensemble's metadata (training.members)."""
    members = (metadata.get("training") or {}).get("members") or {}
    if "classifier" not in members or "lesion_map" not in members:
        raise ValueError("not an ensemble of trainer.ensemble: its metadata names no classifier and lesion map "
                         "members (training.members)")
    if any(m.get("mirrored") for m in members.values()) or members["classifier"].get("moved_towards"):
        raise ValueError("mirrored members and a classifier moved towards a fine-tune are not scored as their "
                         "artifacts are: choose the floor on an ensemble without them")
    return member_artifacts(members, "classifier"), member_artifacts(members, "lesion_map")


def member_scores(loaded, paths, batch=128):
    """{folder: log-odds of each image} for every loaded member ({folder: (model, metadata)}), through the one
    preprocessing."""
    from screening_core import preprocessing
    out, inputs = {}, {}
    for folder, (model, md) in loaded.items():
        spec = preprocessing.InputSpec.from_dict(md["input_spec"])
        key = (spec.height, spec.width, spec.preprocessing)
        if key not in inputs:
            inputs[key] = np.stack(artifact_data.read_inputs(paths, spec))
        x = inputs[key]
        out[folder] = _log_odds(np.concatenate([np.asarray(model.predict_on_batch(x[i:i + batch])).reshape(-1)
                                                for i in range(0, len(x), batch)]))
    return out


def combine(scores, classifiers, maps, floor=None):
    """The ensemble's log-odds: the classifiers' mean (each floored) plus the maps' mean, as OddsProduct adds them."""
    cls = [scores[c] if floor is None else np.maximum(scores[c], floor) for c in classifiers]
    return np.mean(cls, axis=0) + np.mean([scores[m] for m in maps], axis=0)


def operating_points(rows, z, target_sensitivity, threshold_sources):
    """(threshold, {validation source: (tp, fn, tn, fp)}) with the threshold chosen as the trainers choose it."""
    probs = 1.0 / (1.0 + np.exp(-z))
    scored = [{**r, "score": float(p)} for r, p in zip(rows, probs, strict=True)]
    m = evaluation.operating_metrics(scored, target_sensitivity, threshold_sources, bootstrap=0)
    counts = {s: tuple(v["confusion_matrix"][k] for k in ("tp", "fn", "tn", "fp"))
              for s, v in m["by_source"]["validation"].items()}
    return m["threshold"], counts


def choose(rows, scores, classifiers, maps, target_sensitivity, threshold_sources, candidates=CANDIDATES):
    """(chosen floor or None, [(floor, threshold, counts, unchanged)]) over `candidates`, lowest first."""
    _, base = operating_points(rows, combine(scores, classifiers, maps), target_sensitivity, threshold_sources)
    table, chosen, broken = [], None, False
    for f in sorted(candidates):
        t, counts = operating_points(rows, combine(scores, classifiers, maps, f), target_sensitivity,
                                     threshold_sources)
        same = counts == base
        table.append((f, t, counts, same))
        broken = broken or not same
        if not broken:
            chosen = f  # the highest of the unbroken run from the lowest candidate up
    return chosen, table


def _sens_spec(c):
    tp, fn, tn, fp = c
    return (f"{100 * tp / (tp + fn):.1f}" if tp + fn else "-") + " / " + (f"{100 * tn / (tn + fp):.1f}" if tn + fp else "-")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainer.classifier_floor", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("artifact", help="an ensemble artifact of trainer.ensemble, without a floor or with one "
                        "(its members' own scores are floored here)")
    parser.add_argument("--floors", default=",".join(f"{f:g}" for f in CANDIDATES),
                        help="candidate floors (log-odds, below 0), comma-separated; give them with '=' "
                        "(--floors=-7,-6.5,-6), as a value starting with '-' is read as a flag otherwise")
    args = parser.parse_args(argv)
    try:
        candidates = [float(f) for f in args.floors.split(",") if f.strip()]
    except ValueError:
        parser.error(f"--floors takes numbers separated by commas, got {args.floors!r}")
    if not candidates or any(not -16 < f < 0 for f in candidates):
        parser.error("--floors are log-odds between -16 and 0")
    from screening_core import artifact
    try:
        md = artifact.verify(args.artifact)
        classifiers, maps = members_of(md)
        loaded = {folder: artifact.load(folder) for folder in classifiers + maps}  # verified before any scoring
    except (ValueError, artifact.ArtifactError, OSError) as e:
        parser.error(f"{args.artifact}: {e}")
    rows = [r for r in artifact_data.split_rows(args.artifact) if r["split"] == "validation"]
    missing = [r["path"] for r in rows if not os.path.exists(r["path"])]
    if missing:
        parser.error(f"{len(missing)} of the artifact's {len(rows)} validation images are not here (first: "
                     f"{missing[0]}): run where it was trained, from the same folder")
    target = float(md.get("threshold_target_sensitivity") or 0.98)
    sources = (md.get("training_config") or {}).get("threshold_sources") or ""
    print(f"scoring {len(rows)} validation images with {len(classifiers)} classifiers and {len(maps)} maps ...")
    scores = member_scores(loaded, [r["path"] for r in rows])
    chosen, table = choose(rows, scores, classifiers, maps, target, sources, candidates)
    names = sorted(table[0][2])
    print("| floor | threshold | " + " | ".join(f"{s} sensitivity / specificity %" for s in names) + " | unchanged |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for f, t, counts, same in table:
        print(f"| {f:g} | {t:.4f} | " + " | ".join(_sens_spec(counts[s]) for s in names) + f" | {'yes' if same else 'no'} |")
    if chosen is None:
        print("no candidate floor leaves every validation operating point where it was")
        return 1
    print(f"the highest floor that moves no validation operating point: {chosen:g} "
          f"(trainer.ensemble --classifier-floor {chosen:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

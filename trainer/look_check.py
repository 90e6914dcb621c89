"""The share of tumor slices a model finds in each look, on patients whose looks share one tumor mask.

Why: a model chosen on FLAIR and T1 can read the look instead of the lesion. Scored on the same slices of the
same patients in FLAIR, T2 and T1 (docs/brats_toolkit_check.md), v21 finds 86 % of the FLAIR tumor slices and
53 % of the T2 ones, and a T2 series it does not flag is not cleared. The tumor-free probe
(trainer.tumor_free_probe) says how often a look is flagged without a tumor; this says how often a tumor in a
look is missed, and `--write` stores it beside the probe for the run report's banner.

Input: a labelled collection laid out like brats-sample (`<look>/{tumor,notumor}/<patient>_z<k>.png`, e.g. `make
data-brats-toolkit`); every look folder is scored by brain-score itself, at the model's threshold.

  python -m trainer.look_check --input ../data/brats-toolkit --model models/brain-tumor-cnn/21 [--write]
"""
import argparse
import os
import sys
import tempfile

from screening_core import artifact, looks
from trainer import HelpFormatter, lesion_data, tumor_free_probe

CLASSES = (("tumor", 1), ("notumor", 0))


def look_folders(collection):
    """{look: folder} of the collection's folders that hold tumor/ and notumor/ and whose name is a known look."""
    out = {}
    for name in sorted(os.listdir(collection)):
        folder = os.path.join(collection, name)
        if all(os.path.isdir(os.path.join(folder, c)) for c, _ in CLASSES):
            look = looks.look_of(name)
            if look == "other":
                raise SystemExit(f"{folder}: the folder's name must say its look ({', '.join(looks.NAMES)})")
            if look in out:
                raise SystemExit(f"{out[look]} and {folder} are both {look}: one folder per look, or the "
                                 f"figures would silently be one folder's")
            out[look] = folder
    if not out:
        raise SystemExit(f"{collection} holds no <look>/tumor/ + <look>/notumor/ folders")
    return out


def summarise(rows):
    """{"tumor_slices", "found", "tumor_free_slices", "flagged", "auc", "patients"} of one look's brain-score rows:
    the label is the class folder of each row's kept path, a slice is found or flagged when brain-score labelled
    it tumor at the model's threshold; rows not scored are left out."""
    from screening_core import metrics
    labels, scores, flags, patients = [], [], [], set()
    for r in rows:
        parts = r["source_uri"].replace("\\", "/").split("/")
        label = dict(CLASSES).get(parts[-2])
        if r.get("status") != "ok" or label is None:
            continue
        labels.append(label)
        scores.append(float(r["tumor_probability"]))
        flags.append(r["predicted_label"] == "tumor")
        m = lesion_data.SLICE_NAME_RX.match(parts[-1])
        patients.add(m.group(1) if m else parts[-1])
    n_tumor = sum(labels)
    n_free = len(labels) - n_tumor
    if not n_tumor or not n_free:
        raise SystemExit("a look needs scored tumor and tumor-free slices")
    return {"tumor_slices": n_tumor, "found": round(sum(f for f, y in zip(flags, labels, strict=True) if y) / n_tumor, 4),
            "tumor_free_slices": n_free, "flagged": round(sum(f for f, y in zip(flags, labels, strict=True) if not y) / n_free, 4),
            "auc": round(float(metrics.roc_auc(labels, scores)), 4), "patients": len(patients)}


def write_to_artifact(version_dir, per_look, source):
    """Store the per-look figures in metadata.json at the artifact's threshold and re-seal it (model.keras is
    untouched, so the ONNX binding holds; the contract refuses them once the threshold changes)."""
    def add(metadata):
        metadata["look_check"] = {
            "threshold": metadata["threshold"], "source": source,
            "patients": max(a["patients"] for a in per_look.values()), "looks": per_look,
            "what": "share of tumor slices found and of tumor-free slices flagged at the threshold, by look, on "
                    "patients whose looks share one tumor mask (python -m trainer.look_check)"}
    artifact.update_metadata(version_dir, add)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.look_check", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--input", required=True, help="labelled collection: <look>/tumor/, <look>/notumor/")
    p.add_argument("--model", action="append", required=True, help="model artifact folder; repeat to compare")
    p.add_argument("--write", action="store_true", help="store each model's figures by look in its metadata.json "
                   "(re-sealed) for the run report")
    args = p.parse_args(argv)
    if not os.path.isdir(args.input):
        p.error(f"--input {args.input}: not a folder (make data-brats-toolkit cuts one: docs/brats_toolkit_check.md)")
    for m in args.model:
        if not os.path.exists(os.path.join(m, "metadata.json")):
            p.error(f"--model {m}: not a model artifact (no metadata.json)")
    folders = look_folders(args.input)
    print("| model | look | patients | tumor slices found | tumor-free slices flagged | AUC |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="look-check-") as tmp:
        for i, m in enumerate(args.model):
            per_look = {}
            for look, folder in folders.items():
                print(f"scoring {folder} with {m} ...", file=sys.stderr, flush=True)
                per_look[look] = summarise(tumor_free_probe.score(folder, m, os.path.join(tmp, f"{i}-{look}")))
                a = per_look[look]
                print(f"| {os.path.basename(os.path.normpath(m))} | {looks.NAMES[look]} | {a['patients']} | "
                      f"{100 * a['found']:.0f} % of {a['tumor_slices']} | {100 * a['flagged']:.0f} % of "
                      f"{a['tumor_free_slices']} | {a['auc']:.3f} |", flush=True)
            if args.write:
                write_to_artifact(m, per_look, os.path.basename(os.path.normpath(args.input)))
    if args.write:
        print("stored in: " + ", ".join(os.path.join(m, "metadata.json") for m in args.model), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Attach cross-collection checks and Grad-CAM localisation to an artifact's card.

  python -m trainer.generalisation models/brain-tumor-cnn/3 \
      --check /tmp/xc-mri/brain-tumor-cnn/1 --check /tmp/xc-lgg/brain-tumor-cnn/1

A check is a separate training run of the same recipe on a subset of the
collections, scored on the collections it never saw (`--eval-data-dir`):
trained without `lgg` and tested on all of it, trained without `brain-mri`
and tested on it. Their external per-source metrics, and localisation.json if
`trainer.localisation` wrote one, go into metadata.json ("generalisation",
"localisation") and the model card is rendered again. model.keras and its
sha256 are not touched.
"""
import argparse
import json
import os
import sys

from screening_core import artifact
from trainer import HelpFormatter, model_card


def check_entry(check_dir):
    md = artifact.read_metadata(check_dir)
    cfg = md["training_config"]
    trained = ", ".join(os.path.basename(d.rstrip("/")) for d in cfg["data_dir"])
    tested = ", ".join(os.path.basename(d.rstrip("/")) for d in cfg.get("eval_data_dir", []))
    external = md["validation_metrics"].get("by_source", {}).get("external", {})
    if not external:
        raise ValueError(f"{check_dir}: no external (--eval-data-dir) metrics to report")
    t = md.get("training", {})
    return {
        "title": f"Trained on {trained} only; tested on {tested}",
        "description": (f"augmentation `{cfg.get('augment', 'v2')}`, {t.get('epochs_run', '?')} epochs, seed "
                        f"{cfg['seed']}; threshold {md['threshold']:.4f} chosen on its own validation split "
                        f"(AUC {md['validation_metrics']['roc_auc']:.4f})"),
        "trained_on": trained, "model_sha256": md["model_sha256"], "by_source": external,
    }


def rethreshold(artifact_dir, metadata, threshold_sources):
    """Recompute threshold and metrics from the artifact's own scored rows (no model call)."""
    import csv

    import numpy as np

    from trainer import evaluation, plots
    with open(os.path.join(artifact_dir, artifact.PREDICTIONS_FILE)) as f:
        rows = list(csv.DictReader(f))
    cfg = metadata["training_config"]
    m = evaluation.operating_metrics(rows, metadata["threshold_target_sensitivity"], threshold_sources,
                                     cfg.get("bootstrap", 1000))
    metadata["validation_metrics"] = m
    if m["threshold"] != metadata["threshold"]:  # measured at the old threshold: stale (trainer.tumor_free_probe, ...)
        for key in artifact.THRESHOLD_BOUND_FIGURES:
            metadata.pop(key, None)
    metadata["threshold"] = m["threshold"]
    cfg["threshold_sources"] = threshold_sources
    val = [r for r in rows if r["split"] == "validation"]
    plots.write_plots(np.array([int(r["label"]) for r in val]), np.array([float(r["score"]) for r in val]),
                      m["threshold"], artifact_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("artifact", help="version directory whose card gets the checks")
    parser.add_argument("--check", action="append", default=[], help="artifact of a check run; repeatable")
    parser.add_argument("--notes", default=None,
                        help="markdown file: what was tried and measured for this model (shown in the card)")
    parser.add_argument("--threshold-sources", default=None,
                        help="choose the threshold again from validation_predictions.csv on these sources "
                             "(the trainer's --threshold-sources, applied after the fact; same function)")
    args = parser.parse_args(argv)
    artifact.read_metadata(args.artifact)  # refuses a folder that is no artifact, or of another format

    def add_checks(metadata):
        if args.threshold_sources is not None:
            rethreshold(args.artifact, metadata, args.threshold_sources)
        if args.check:
            metadata["generalisation"] = [check_entry(d) for d in args.check]
        if args.notes:
            with open(args.notes) as f:
                metadata["development_notes"] = f.read()
        loc = os.path.join(args.artifact, "localisation.json")
        if os.path.exists(loc):
            with open(loc) as f:
                metadata["localisation"] = json.load(f)
        if "lesion" in metadata:  # a lesion-first model: its targets include the checks just attached
            from trainer import targets
            metadata["targets"] = targets.entry(metadata, targets.measure(args.artifact, metadata))
    metadata = artifact.update_metadata(args.artifact, add_checks)
    with open(os.path.join(args.artifact, "eda", "eda.json")) as f:
        eda = json.load(f)
    with open(os.path.join(args.artifact, artifact.MODEL_CARD_FILE), "w") as f:
        f.write(model_card.render(metadata, eda))
    print(f"Updated {os.path.join(args.artifact, artifact.METADATA_FILE)} and {artifact.MODEL_CARD_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

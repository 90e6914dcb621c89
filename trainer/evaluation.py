"""Score an artifact on labelled collections and report metrics per source.

  python -m trainer.evaluation models/brain-tumor-cnn/2 --data-dir ../shared/data/lgg \
      --group-pattern '^((?:TCGA_|.*brats).+)_\\d+\\.\\w+$' --out v2_on_lgg.json

A pooled AUC hides a model that learned the MRI sequence or the collection
instead of the tumor, so every figure is given per collection and sequence,
at the artifact's own threshold, with bootstrap intervals over patient or
near-duplicate groups. The trainer uses the same functions for its
validation, held-out-site and external sets.
"""
import argparse
import json
import sys

import numpy as np

from screening_core import metrics
from trainer import HelpFormatter


def source_key(example):
    """'collection/sequence' (or just the collection): the unit of per-source metrics."""
    return f"{example.collection}/{example.sequence}" if example.sequence else example.collection


def per_source(keys, labels, groups, scores, threshold, bootstrap=1000, pooled=True):
    """{source: metrics at `threshold`} (+ "all" when several sources and `pooled`)."""
    labels, groups, scores = np.asarray(labels), np.asarray(groups), np.asarray(scores)
    keys = np.asarray(keys)
    out = {k: metrics.evaluate_at(labels[keys == k], scores[keys == k], threshold,
                                  groups=groups[keys == k], bootstrap=bootstrap)
           for k in sorted(set(keys.tolist()))}
    if pooled and len(out) > 1:
        out["all"] = metrics.evaluate_at(labels, scores, threshold, groups=groups, bootstrap=bootstrap)
    return out


def threshold_rows(sources, labels, threshold_sources):
    """Mask of the validation rows the threshold is chosen on (`threshold_sources` regex; all when empty).

    Why a check of its own: a regex that matches no source, or sources of one class only (BraTS-PEDs'
    validation FLAIR is all tumor slices), leaves no threshold to choose; the trainers call this on the split
    before fitting, so the mistake costs seconds, not a whole training run."""
    import re
    sources, labels = np.asarray(sources), np.asarray(labels)
    rx = re.compile(threshold_sources) if threshold_sources else None
    mask = np.array([rx is None or bool(rx.search(s)) for s in sources], bool)
    if not mask.any():
        raise ValueError(f"--threshold-sources {threshold_sources!r} matches no validation source "
                         f"({sorted(set(sources.tolist()))})")
    n_tumor = int(labels[mask].sum())
    if n_tumor in (0, int(mask.sum())):
        raise ValueError(f"--threshold-sources {threshold_sources!r} matches validation slices of one class only "
                         f"({n_tumor} tumor, {int(mask.sum()) - n_tumor} tumor-free, sources "
                         f"{sorted(set(sources[mask].tolist()))}): a threshold needs both; match more sources")
    return mask


def operating_metrics(rows, target_sensitivity, threshold_sources="", bootstrap=1000):
    """Threshold and every metric of an artifact from its scored rows.

    `rows`: dicts with split (validation / held_out_site / external), source,
    label, group, score and class_name, as in validation_predictions.csv.
    The threshold is chosen on the validation rows whose source matches the
    `threshold_sources` regex (all when empty): sources with noisy labels
    (LGG's T1 "tumor" slices, many with no visible lesion) would otherwise
    drag a 98%-sensitivity threshold to almost zero. The top-level figures
    describe that set; `by_source` gives every split and source at the same
    threshold.
    """
    val = [r for r in rows if r["split"] == "validation"]
    chosen = [val[i] for i in np.flatnonzero(threshold_rows([r["source"] for r in val], [int(r["label"]) for r in val],
                                                            threshold_sources))]
    lab = np.array([int(r["label"]) for r in chosen])
    sc = np.array([float(r["score"]) for r in chosen])
    cls = np.array([r["class_name"] for r in chosen])
    m = metrics.evaluate(lab, sc, target_sensitivity, groups=np.array([r["group"] for r in chosen]),
                         bootstrap=bootstrap)
    m["threshold_sources"] = threshold_sources or "all"
    m["sensitivity_by_class"] = {c: [float((sc[cls == c] >= m["threshold"]).mean()), int((cls == c).sum())]
                                 for c in sorted(set(cls[lab == 1]))}
    m["specificity_by_class"] = {c: [float((sc[cls == c] < m["threshold"]).mean()), int((cls == c).sum())]
                                 for c in sorted(set(cls[lab == 0]))}
    m["by_source"] = {}
    for split in ("validation", "held_out_site", "external"):
        part = [r for r in rows if r["split"] == split]
        if part:
            m["by_source"][split] = per_source(
                [r["source"] for r in part], [int(r["label"]) for r in part], [r["group"] for r in part],
                [float(r["score"]) for r in part], m["threshold"], bootstrap, pooled=split != "validation")
    return m


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("artifact", help="model version directory (model.keras + metadata.json)")
    parser.add_argument("--data-dir", action="append", required=True,
                        help="labelled collection (any layout the trainer accepts); repeatable")
    parser.add_argument("--group-pattern", default="", help="regex whose first group is a patient key")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs")
    parser.add_argument("--batch-size", type=int, default=64, help="images per predict batch")
    parser.add_argument("--out", default="", help="write the metrics JSON here as well")
    args = parser.parse_args(argv)
    from screening_core import artifact, preprocessing
    from trainer import input_pipeline, loading
    from trainer.config import TrainConfig
    model, md = artifact.load(args.artifact)
    spec = preprocessing.InputSpec.from_dict(md["input_spec"])
    cfg = TrainConfig(data_dir=args.data_dir, group_pattern=args.group_pattern)
    from trainer import discovery
    examples, _, _, skipped, _, groups, _ = loading.load_collections(args.data_dir, cfg, discovery.DEFAULT_CLASS_MAP)
    if not examples:
        print("error: no labelled images found", file=sys.stderr)
        return 2
    labels = np.array([e.label for e in examples])
    ds = input_pipeline.make_dataset([e.path for e in examples], labels, spec, args.batch_size, training=False)
    scores = model.predict(ds, verbose=0)[:, 0].astype(np.float64)
    result = {"artifact": args.artifact, "model_sha256": md["model_sha256"], "threshold": md["threshold"],
              "skipped": len(skipped),
              "by_source": per_source([source_key(e) for e in examples], labels, groups, scores, md["threshold"],
                                args.bootstrap)}
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    for k, m in result["by_source"].items():
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        print(f"{k:28s} n={m['n']:5d} AUC {auc}  sens {m['sensitivity'] or 0:.3f}  "
              f"spec {m['specificity'] or 0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

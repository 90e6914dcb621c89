"""Exploratory report on the training data, written beside the model.

It makes the data's shape and its hazards visible to whoever reviews the
model: class balance per source, image sizes and modes, near-duplicate
groups, and whether any group crosses the train/validation split (it must not).
"""
import collections
import json
import os

import numpy as np


def build_report(examples, sizes, modes, group_ids, is_val, skipped, class_map_used, is_holdout=None):
    counts = collections.Counter((e.class_name, e.source) for e in examples)
    is_holdout = np.zeros(len(examples), bool) if is_holdout is None else np.asarray(is_holdout)
    side = np.where(is_holdout, 2, np.where(is_val, 1, 0))
    per_source = collections.Counter(
        (e.collection + (f"/{e.sequence}" if e.sequence else ""), e.label, int(s))
        for e, s in zip(examples, side, strict=True))
    per_class = collections.Counter(e.class_name for e in examples)
    labels = np.array([e.label for e in examples])
    group_ids = np.asarray(group_ids)
    crossing = sum(1 for g in np.unique(group_ids) if len(set(side[group_ids == g].tolist())) > 1)
    group_sizes = np.bincount(group_ids) if len(group_ids) else np.array([0])
    return {
        "n_images": len(examples),
        "class_map": class_map_used,
        "counts_per_class": dict(per_class),
        "counts_per_class_and_source": [{"class": c, "source": s, "count": n}
                                        for (c, s), n in sorted(counts.items())],
        "binary_balance": {"tumor": int(labels.sum()), "no_tumor": int(len(labels) - labels.sum()),
                           "tumor_fraction": float(labels.mean()) if len(labels) else 0.0},
        "image_sizes": {f"{w}x{h}": n for (w, h), n in collections.Counter(sizes).most_common(20)},
        "image_modes": dict(collections.Counter(modes)),
        "near_duplicate_groups": int(len(group_sizes)),
        "groups_with_more_than_one_image": int((group_sizes > 1).sum()),
        "largest_group": int(group_sizes.max()),
        "groups_crossing_split": int(crossing),
        "counts_per_source": [{"source": src, "label": lab, "split": ("train", "validation", "held_out_site")[s],
                               "count": n} for (src, lab, s), n in sorted(per_source.items())],
        "split": {"train": int((side == 0).sum()), "validation": int(is_val.sum()),
                  "held_out_site": int(is_holdout.sum()),
                  "validation_tumor_fraction": float(labels[is_val].mean()) if is_val.any() else 0.0},
        "skipped_files": skipped,
    }


def write_report(report, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eda.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    classes = sorted(report["counts_per_class"])
    axes[0].bar(classes, [report["counts_per_class"][c] for c in classes], color="#4c72b0")
    axes[0].set_title(f"Images per class (n={report['n_images']})")
    axes[0].tick_params(axis="x", rotation=30)
    b = report["binary_balance"]
    axes[1].bar(["tumor", "no tumor"], [b["tumor"], b["no_tumor"]], color=["#c44e52", "#55a868"])
    axes[1].set_title(f"Binary balance; {report['near_duplicate_groups']} dup groups, "
                      f"{report['groups_crossing_split']} crossing")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "eda.png"), dpi=100)
    plt.close(fig)

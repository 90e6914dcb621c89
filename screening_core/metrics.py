"""Screening metrics computed from validation labels and scores.

Plain numpy, so the numbers in an artifact's metadata can be recomputed by
anyone from `validation_predictions.csv` without TensorFlow.
"""
import numpy as np


def roc_auc(labels, scores):
    """Area under the ROC curve via the rank-sum (ties count one half)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(labels, scores):
    """(fpr, tpr, thresholds) with thresholds descending; predict positive if score >= t."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(s)[::-1]
    tpr = np.array([(s[y] >= t).mean() for t in thresholds]) if y.any() else np.zeros(len(thresholds))
    fpr = np.array([(s[~y] >= t).mean() for t in thresholds]) if (~y).any() else np.zeros(len(thresholds))
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thresholds]


def confusion(labels, scores, threshold):
    y = np.asarray(labels).astype(bool)
    p = np.asarray(scores) >= threshold
    return {"tp": int((p & y).sum()), "fp": int((p & ~y).sum()),
            "tn": int((~p & ~y).sum()), "fn": int((~p & y).sum())}


def rates(labels, scores, threshold):
    c = confusion(labels, scores, threshold)
    pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    return {
        "sensitivity": c["tp"] / pos if pos else float("nan"),
        "specificity": c["tn"] / neg if neg else float("nan"),
        "accuracy": (c["tp"] + c["tn"]) / max(pos + neg, 1),
        "confusion_matrix": c,
    }


def choose_threshold(labels, scores, target_sensitivity):
    """Highest threshold whose sensitivity reaches the target.

    Raising the threshold can only lower sensitivity and raise specificity, so
    the highest threshold that still meets the target has the best specificity.
    """
    y = np.asarray(labels).astype(bool)
    pos_scores = np.sort(np.asarray(scores, dtype=np.float64)[y])[::-1]
    if len(pos_scores) == 0:
        raise ValueError("no positive examples to choose a threshold on")
    needed = int(np.ceil(target_sensitivity * len(pos_scores) - 1e-9))
    needed = min(max(needed, 1), len(pos_scores))
    return float(pos_scores[needed - 1])


def specificity_at_sensitivity(labels, scores, min_sensitivity):
    """Best specificity of any threshold whose sensitivity reaches `min_sensitivity` (a point of the ROC curve,
    whatever threshold the model ships with)."""
    t = choose_threshold(labels, scores, min_sensitivity)
    return rates(labels, scores, t)["specificity"]


def sensitivity_at_specificity(labels, scores, min_specificity):
    """Best sensitivity of any threshold whose specificity reaches `min_specificity`: the threshold sits just
    above the highest tumor-free score it may not flag."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    neg = np.sort(s[~y])[::-1]
    if len(neg) == 0 or not y.any():
        return float("nan")
    allowed = int(np.floor((1.0 - min_specificity) * len(neg) + 1e-9))  # tumor-free slices it may flag
    if allowed >= len(neg):
        return 1.0
    return float((s[y] > neg[allowed]).mean())


def expected_calibration_error(labels, scores, bins=10):
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(s[m].mean() - y[m].mean())
    return float(ece)


def calibration_curve(labels, scores, bins=10):
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    idx = np.clip(np.digitize(s, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    return [(float(s[idx == b].mean()), float(y[idx == b].mean()), int((idx == b).sum()))
            for b in range(bins) if (idx == b).any()]


def group_resamples(labels, groups=None, n=1000, seed=0):
    """Index arrays of `n` bootstrap draws of whole groups (every row its own group if None); a draw holding one
    class only is skipped, so fewer may come back."""
    y = np.asarray(labels).astype(bool)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        if y[idx].all() or not y[idx].any():
            continue
        yield idx


def bootstrap_ci(labels, scores, threshold, n=1000, seed=0, groups=None):
    """95% percentile intervals for AUC, sensitivity and specificity.

    With `groups`, whole near-duplicate groups are resampled, which respects
    the correlation between near-copies.
    """
    y = np.asarray(labels)
    s = np.asarray(scores)
    stats = {"auc": [], "sensitivity": [], "specificity": []}
    for idx in group_resamples(y, groups, n, seed):
        yy, ss = y[idx], s[idx]
        r = rates(yy, ss, threshold)
        stats["auc"].append(roc_auc(yy, ss))
        stats["sensitivity"].append(r["sensitivity"])
        stats["specificity"].append(r["specificity"])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in stats.items()}


def evaluate(labels, scores, target_sensitivity, groups=None, bootstrap=1000):
    """Everything the artifact records about validation performance."""
    threshold = choose_threshold(labels, scores, target_sensitivity)
    r = rates(labels, scores, threshold)
    return {
        "n": int(len(labels)),
        "n_positive": int(np.sum(labels)),
        "roc_auc": roc_auc(labels, scores),
        "threshold": threshold,
        "target_sensitivity": target_sensitivity,
        **r,
        "accuracy_at_0.5": rates(labels, scores, 0.5)["accuracy"],
        "expected_calibration_error": expected_calibration_error(labels, scores),
        "ci95": bootstrap_ci(labels, scores, threshold, n=bootstrap, groups=groups) if bootstrap else {},
    }


def evaluate_at(labels, scores, threshold, groups=None, bootstrap=1000):
    """AUC, sensitivity and specificity of one subset at a threshold chosen elsewhere.

    Per-source and held-out-site figures use the artifact's threshold: a new
    site does not get to pick its own.
    """
    labels = np.asarray(labels)
    r = rates(labels, scores, threshold)
    mixed = 0 < labels.sum() < len(labels)
    out = {"n": int(len(labels)), "n_positive": int(labels.sum()),
           "roc_auc": roc_auc(labels, scores) if mixed else None,
           **{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}}
    if groups is not None:
        out["n_groups"] = int(len(np.unique(groups)))
    if bootstrap and mixed:
        out["ci95"] = bootstrap_ci(labels, scores, threshold, n=bootstrap, groups=groups)
    return out

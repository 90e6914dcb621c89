"""ROC and calibration plots for the artifact (matplotlib, no display)."""
import os

from screening_core import metrics


def write_plots(labels, scores, threshold, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    r = metrics.rates(labels, scores, threshold)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC {metrics.roc_auc(labels, scores):.4f}")
    ax.scatter([1 - r["specificity"]], [r["sensitivity"]], color="red", zorder=3,
               label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("Validation ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "roc.png"), dpi=100)
    plt.close(fig)
    curve = metrics.calibration_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.plot([c[0] for c in curve], [c[1] for c in curve], "o-")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction with tumor")
    ax.set_title(f"Calibration (ECE {metrics.expected_calibration_error(labels, scores):.3f})")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "calibration.png"), dpi=100)
    plt.close(fig)

"""The paper's figures for our runs: ROC curves (Fig. 6) and normal-vs-abnormal score distributions (Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import auroc_ap, roc_points  # noqa: E402


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> None:
    """One ROC curve per entry of ``curves`` (name -> (labels, scores))."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, (labels, scores) in curves.items():
        fpr, tpr = roc_points(labels, scores)
        axes.plot(fpr, tpr, label=f"{name} (AUROC {auroc_ap(labels, scores)['auroc']:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_score_distributions(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> None:
    """Histograms of normal and abnormal slice scores, one panel per entry (scores scaled to [0, 1] per method)."""
    figure, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), dpi=120, squeeze=False)
    for axis, (name, (labels, scores)) in zip(axes[0], curves.items()):
        labels = np.asarray(labels, dtype=bool)
        span = scores.max() - scores.min()
        scaled = (scores - scores.min()) / (span if span > 0 else 1.0)
        bins = np.linspace(0, 1, 41)
        axis.hist(scaled[~labels], bins=bins, alpha=0.6, density=True, label=f"normal ({(~labels).sum()})")
        axis.hist(scaled[labels], bins=bins, alpha=0.6, density=True, label=f"abnormal ({labels.sum()})")
        axis.set(title=name, xlabel="slice score (min-max scaled)", ylabel="density")
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)

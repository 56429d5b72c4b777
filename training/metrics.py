"""Detection and segmentation metrics: slice AUROC/AP, voxel AUROC/AP, best-threshold Dice and Dice at a threshold."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def auroc_ap(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """AUROC and average precision; None where one class is absent."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return {"auroc": None, "ap": None}
    return {"auroc": float(roc_auc_score(labels, scores)), "ap": float(average_precision_score(labels, scores))}


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(np.asarray(labels, dtype=bool), scores)
    return fpr, tpr


def dice_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    denominator = predicted.sum() + labels.sum()
    return float(2.0 * (predicted & labels).sum() / denominator) if denominator else 1.0


def best_dice(labels: np.ndarray, scores: np.ndarray, candidates: int = 2000) -> tuple[float, float]:
    """⌈Dice⌉: the best Dice over one threshold for all voxels given, and that threshold.

    Candidate thresholds are quantiles of the scores above the (1 - 20 * lesion share) quantile, so the search spends
    its candidates where a useful threshold can lie; counts come from one sort of the scores.
    """
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return 0.0, float("inf")
    order = np.argsort(scores)
    sorted_scores = scores[order]
    positives_above = np.cumsum(labels[order][::-1])[::-1]  # lesion voxels with score >= sorted_scores[i]
    share = labels.mean()
    low = np.quantile(scores, max(0.0, 1.0 - 20.0 * share))
    thresholds = np.unique(np.quantile(scores[scores >= low], np.linspace(0, 1, candidates)))
    index = np.searchsorted(sorted_scores, thresholds, side="left")
    predicted = len(scores) - index
    true_positive = positives_above[np.minimum(index, len(scores) - 1)] * (index < len(scores))
    dice = 2.0 * true_positive / (predicted + labels.sum())
    best = int(np.argmax(dice))
    return float(dice[best]), float(thresholds[best])

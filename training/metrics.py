"""Detection and segmentation metrics: slice AUROC/AP, voxel AUROC/AP, best-threshold Dice, Dice at a threshold and
AU-PRO (per-region overlap)."""

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


def dice(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Dice of a boolean prediction against boolean labels (1 when both are empty)."""
    labels, predicted = np.asarray(labels, dtype=bool), np.asarray(predicted, dtype=bool)
    denominator = predicted.sum() + labels.sum()
    return float(2.0 * (predicted & labels).sum() / denominator) if denominator else 1.0


def dice_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Dice of the voxels scoring at least ``threshold``."""
    return dice(labels, np.asarray(scores) >= threshold)


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


def pro_auc(regions: list[np.ndarray], scores: list[np.ndarray], max_fpr: float = 0.3, points: int = 300) -> float | None:
    """AU-PRO (MVTec AD): the mean overlap of each lesion region with the voxels flagged at a threshold, integrated
    over the false-positive rate of healthy voxels from 0 to ``max_fpr`` and divided by ``max_fpr``. ``regions`` are
    per-case labels aligned with ``scores`` (0: healthy, k > 0: connected lesion region k of that case); every
    region counts once whatever its size. None without regions."""
    healthy = np.sort(np.concatenate([s[r == 0] for r, s in zip(regions, scores)]))
    per_region = [np.sort(s[r == k]) for r, s in zip(regions, scores) for k in np.unique(r[r > 0])]
    if not per_region or not len(healthy):
        return None
    thresholds = np.append(np.quantile(healthy, 1.0 - np.linspace(0.0, max_fpr, points)), -np.inf)
    fpr = 1.0 - np.searchsorted(healthy, thresholds, side="left") / len(healthy)
    overlap = np.mean([1.0 - np.searchsorted(region, thresholds, side="left") / len(region)
                       for region in per_region], axis=0)
    # Tied scores make the FPR jump past max_fpr: the curve is closed at max_fpr by linear interpolation (MVTec AD).
    x = np.append(fpr[fpr < max_fpr], max_fpr)
    y = np.append(overlap[fpr < max_fpr], np.interp(max_fpr, fpr, overlap))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0) / max_fpr)

"""Slice and volume scores from anomaly maps: the patch-ranking score of the Patch-GAN paper (Eq. 5), and the
per-volume peak z that model cards may choose instead (``SLICE_SCORES``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .preprocessing import robust_sd

from .serialise import DictSerialisable


@dataclass(frozen=True)
class PatchRanking(DictSerialisable):
    """How a slice's error map becomes one score.

    Patches of ``patch`` x ``patch`` pixels (stride ``stride``) that are at least ``min_coverage`` brain get a loss
    L_i = mean squared error over their brain pixels. With ranking on, patches are sorted by L_i and the score is
    Eq. 5, sum over all N patches of lambda_i L_i, with lambda = ``weights`` for the top ranks and ``rest_weight`` for
    every other rank: the paper's 1.1 for the most anomalous patch and 1.0 for the others by default. The reading
    that keeps only the listed ranks (``weights`` (1.1, 1.0), ``rest_weight`` 0: a top-2 score) is the ablation
    "top-2 ranking". With ranking off (the Table 2 ablation) every patch weighs 1: the plain sum.
    ``diffuse_normalisation`` divides by the slice's median patch loss plus ``floor`` (the diffuse error), which
    removes the slice-position confound of reconstruction error (slice position alone scores slice AUROC 0.73-0.85 on
    our test sets: the position-only rows of the README's comparison).
    """

    patch: int = 32
    stride: int = 16
    weights: tuple[float, ...] = (1.1,)
    rest_weight: float = 1.0
    ranking: bool = True
    min_coverage: float = 0.5
    diffuse_normalisation: bool = False
    floor: float = 1e-3


def patch_losses(error: torch.Tensor, mask: torch.Tensor, patch: int, stride: int,
                 min_coverage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean squared error over brain pixels, (B, P), and which patches are covered enough, (B, P)."""
    squared = (error.float() ** 2 * mask).unsqueeze(1)
    coverage = F.avg_pool2d(mask.float().unsqueeze(1), patch, stride).flatten(1)
    summed = F.avg_pool2d(squared, patch, stride).flatten(1)
    losses = summed / coverage.clamp_min(1e-6)
    return losses, coverage >= min_coverage


def slice_scores(error: torch.Tensor, mask: torch.Tensor, ranking: PatchRanking) -> torch.Tensor:
    """Score each slice of a (B, H, W) error map inside its (B, H, W) mask; slices without a valid patch score 0."""
    losses, valid = patch_losses(error, mask, ranking.patch, ranking.stride, ranking.min_coverage)
    losses = torch.where(valid, losses, torch.zeros_like(losses))
    count = valid.sum(dim=1)
    if ranking.ranking:
        ranked = torch.sort(losses, dim=1, descending=True).values  # invalid patches hold 0: they add nothing
        weights = torch.full((ranked.shape[1],), ranking.rest_weight, dtype=ranked.dtype, device=ranked.device)
        k = min(len(ranking.weights), ranked.shape[1])
        weights[:k] = torch.tensor(ranking.weights[:k], dtype=ranked.dtype, device=ranked.device)
        score = (ranked * weights).sum(dim=1)
    else:
        score = losses.sum(dim=1)
    if ranking.diffuse_normalisation:
        masked = torch.where(valid, losses, torch.full_like(losses, float("nan")))
        diffuse = torch.nanmedian(masked, dim=1).values.nan_to_num(0.0)
        score = score / (diffuse + ranking.floor)
    return torch.where(count > 0, score, torch.zeros_like(score))


# A slice counts towards the volume score (and slice-level metrics) when its brain area is at least this share of the
# volume's largest brain cross-section: the extreme ends of the brain, a few cm^2 of tissue that is hard to in-paint,
# would otherwise decide the volume score of healthy volumes.
MIN_BRAIN_SHARE = 0.2
# Training (and few-shot references) also take the smaller brain cross-sections, down to this share, so that a model
# learns them as normal.
TRAIN_MIN_BRAIN_SHARE = 0.05
# The operating points every calibrated threshold is made for: the share of healthy brain voxels a pixel threshold
# flags, chosen on the validation splits by docs/analysis/operating_points.py, and the share of healthy slices a
# slice threshold flags (training calibrate and the few-shot fit in Slicer).
PIXEL_FPR, SLICE_FPR = 0.01, 0.05


SLICE_SCORES = ("method", "peak-z")  # a card's slice score: the method's own (e.g. Eq. 5), or peak_z_scores
PEAK_BOX = 5  # px: the box a slice's peak is read through


def peak_z_scores(evidence: np.ndarray, mask: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """A slice score that carries image evidence rather than the slice's position: per slice, the peak of the
    ``evidence`` map box-smoothed over ``PEAK_BOX`` px inside its brain, in robust SDs above the volume's own
    typical positive evidence, (peak - med+) / (1.4826 MAD+), with med+ and MAD+ over the positive evidence inside
    the brain of the ``eligible`` slices (maps that are positive parts are exactly 0 over much of the brain, which
    would make a plain median and MAD 0). Chosen on the validation splits (docs/analysis/slice_scores.md)."""
    brain = mask & eligible[:, None, None]
    values = evidence[brain]
    positive = values[values > 0]
    if positive.size == 0:
        return np.zeros(len(evidence), dtype=np.float32)
    median = float(np.median(positive))
    spread = max(robust_sd(positive, median), 1e-6)
    tensor_mask = torch.from_numpy(mask).float()
    smoothed = F.avg_pool2d(torch.from_numpy(evidence).float().unsqueeze(1), PEAK_BOX, stride=1,
                            padding=PEAK_BOX // 2, count_include_pad=False).squeeze(1) * tensor_mask
    peak = smoothed.flatten(1).max(dim=1).values.numpy()
    return np.where(mask.any(axis=(1, 2)), (peak - median) / spread, 0.0).astype(np.float32)


def eligible_slices(brain_area: np.ndarray, min_share: float = MIN_BRAIN_SHARE) -> np.ndarray:
    """Boolean (N,): slices whose brain area is at least ``min_share`` of the largest one."""
    brain_area = np.asarray(brain_area)
    return brain_area >= min_share * max(1, brain_area.max(initial=0))


def volume_score(scores: np.ndarray, eligible: np.ndarray) -> float:
    """A volume's score: the score of its most anomalous eligible slice (0 without any)."""
    return float(np.max(scores[eligible])) if eligible.any() else 0.0


def normalise_maps(maps: np.ndarray, region: np.ndarray, kind: str, brain: np.ndarray) -> np.ndarray:
    """A model card's map normalisation of one volume's (N, H, W) maps: "none" leaves them; "volume" expresses them in
    robust standard deviations above the volume's own typical brain value, (m - median) / (1.4826 MAD) with the
    statistics taken over the ``region`` pixels (its brain), so that a threshold means the same in volumes whose
    maps sit at different levels (e.g. from other scanners). The result is 0 outside ``brain``."""
    values = maps[region]
    if kind == "none" or values.size == 0:
        return maps
    median = float(np.median(values))
    return ((maps - median) / max(robust_sd(values, median), 1e-6) * brain).astype(np.float32)

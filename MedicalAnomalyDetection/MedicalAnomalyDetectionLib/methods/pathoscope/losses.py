"""PathoSCOPE's losses: nearest-anchor distances (Eqs. 1, 4), the Tritanh contrastive loss (Eq. 2), focal loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_anchor_distance(embeddings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(..., C) embeddings -> (...) Euclidean distance to the closest row of (A, C) ``anchors``."""
    flat = embeddings.reshape(-1, embeddings.shape[-1])
    return torch.cdist(flat, anchors).min(dim=1).values.view(embeddings.shape[:-1])


def local_distance(embeddings: torch.Tensor, cells: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Eq. 1: per image, the mean nearest-anchor distance of (B, h, w, C) ``embeddings`` over its ``cells``
    (B, h, w, bool), computed at those cells only; 0 for an image without cells."""
    where = cells.flatten(1).nonzero()
    rows = embeddings.flatten(1, 2)[where[:, 0], where[:, 1]]
    distance = nearest_anchor_distance(rows, anchors)
    total = torch.zeros(cells.shape[0], dtype=distance.dtype).index_add(0, where[:, 0], distance)
    return total / cells.flatten(1).sum(dim=1).clamp_min(1)


def tritanh(d_pull: torch.Tensor, d_push: torch.Tensor, lambda_pull: float, lambda_push: float,
            epsilon: float) -> torch.Tensor:
    """Eq. 2, (e^(l0 d_pull) - e^(l1 d_push) + eps) / (e^(l0 d_pull) + e^(l1 d_push) + eps), computed without
    overflow (numerator and denominator divided by the larger exponential)."""
    a, b = lambda_pull * d_pull, lambda_push * d_push
    top = torch.maximum(a, b).detach()
    ea, eb, e = torch.exp(a - top), torch.exp(b - top), epsilon * torch.exp(-top)
    return (ea - eb + e) / (ea + eb + e)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, gamma: float) -> torch.Tensor:
    """Binary focal loss (Lin et al.), averaged with ``weights`` (e.g. the brain's feature cells)."""
    probability = torch.sigmoid(logits)
    p_true = probability * target + (1 - probability) * (1 - target)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (1 - p_true) ** gamma
    return (loss * weights).sum() / weights.sum().clamp_min(1.0)

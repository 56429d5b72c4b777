"""Greedy coreset (k-centre) sampling of embeddings, as in PatchCore, for PathoSCOPE's prototypical anchor bank."""

from __future__ import annotations

import torch


def greedy_coreset(features: torch.Tensor, count: int, generator: torch.Generator,
                   projection_dim: int = 128) -> torch.Tensor:
    """Indices of ``count`` rows of (N, C) ``features`` chosen greedily so that every row is close to a chosen one
    (distances on a random projection to ``projection_dim`` dims, PatchCore's speed-up)."""
    count = min(count, features.shape[0])
    projected = features.float()
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator) / projection_dim ** 0.5
        projected = projected @ projection.to(features.device)
    chosen = [int(torch.randint(features.shape[0], (), generator=generator))]
    nearest = torch.linalg.vector_norm(projected - projected[chosen[0]], dim=1)
    for _ in range(count - 1):
        index = int(torch.argmax(nearest))
        chosen.append(index)
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(projected - projected[index], dim=1))
    return torch.tensor(chosen, dtype=torch.long)

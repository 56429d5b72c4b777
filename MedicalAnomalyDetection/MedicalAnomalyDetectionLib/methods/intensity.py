"""The intensity-threshold baseline: the robust z-score of the raw intensity is the anomaly map.

It needs no weights. Its bundle's card asks for ``zscore`` normalisation, so the preprocessed slices already are
robust z-scores (median and MAD of the volume's brain voxels); FLAIR lesions are bright, so the map keeps the
positive part (``sign: "positive"``), T1 lesions dark (``"negative"``), or both (``"absolute"``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..bundle import Bundle
from ..scoring import PatchRanking, slice_scores
from .base import SliceResult
from .registry import register


def signed_residual(residual: torch.Tensor, sign: str) -> torch.Tensor:
    """Keep the part of ``residual`` that the modality's lesions show: positive, negative or absolute."""
    if sign == "positive":
        return residual.clamp_min(0)
    if sign == "negative":
        return (-residual).clamp_min(0)
    return residual.abs()


@register
class IntensityBaseline:
    """Robust z-score of the intensity inside the brain."""

    name: ClassVar[str] = "intensity"
    weights: ClassVar[tuple[str, ...]] = ()

    def __init__(self, sign: str, ranking: PatchRanking) -> None:
        self.sign = sign
        self.ranking = ranking

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "IntensityBaseline":
        hp = bundle.card.hyperparameters
        return cls(sign=hp.get("sign", "positive"), ranking=PatchRanking.from_dict(hp.get("ranking", {})))

    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        maps = signed_residual(slices.float(), self.sign) * mask
        return SliceResult(maps=maps.cpu(), scores=slice_scores(maps, mask, self.ranking).cpu())

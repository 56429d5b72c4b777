"""The intensity-threshold baseline: the robust z-score of the raw intensity is the anomaly map.

It needs no weights. Its bundle's card asks for ``zscore`` normalisation, so the preprocessed slices already are
robust z-scores (median and MAD of the volume's brain voxels); FLAIR lesions are bright, so the map keeps the
positive part (``sign: "positive"``), T1 lesions dark (``"negative"``), or both (``"absolute"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..bundle import Bundle
from ..scoring import PatchRanking, slice_scores
from ..serialise import DictSerialisable
from .base import AnomalyMethod, SliceResult
from .common import signed_residual
from .registry import register


@dataclass(frozen=True)
class IntensityConfig(DictSerialisable):
    """Which sign of the z-score is abnormal, and how slices are scored."""

    sign: str = "positive"
    ranking: PatchRanking = PatchRanking()


@register
class IntensityBaseline(AnomalyMethod):
    """Robust z-score of the intensity inside the brain."""

    name: ClassVar[str] = "intensity"
    Config = IntensityConfig

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "IntensityBaseline":
        return cls(cls.configure(bundle.card.hyperparameters))

    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        maps = signed_residual(slices.float(), self.config.sign) * mask
        return SliceResult(maps=maps.cpu(), scores=slice_scores(maps, mask, self.config.ranking).cpu())

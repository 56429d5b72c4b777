"""The method plug-in interface: build from a bundle, score a batch of slices into maps and slice scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from ..bundle import Bundle


@dataclass
class SliceResult:
    """Per-pixel anomaly maps (B, H, W) and per-slice scores (B,), both float32 on the CPU; ``evidence`` (B, H, W):
    the map the slice scores are read from, where it is not ``maps`` (e.g. a learned map before a prior)."""

    maps: torch.Tensor
    scores: torch.Tensor
    evidence: torch.Tensor | None = None


class AnomalyMethod(Protocol):
    """What every method (Patch-GAN, baselines, ...) provides to the inference path.

    ``weights`` names the modules whose ``state_dict`` a bundle stores, as ``<module>.<parameter>`` keys: the one
    place that says which trained modules a method needs (training checkpoints every module, export keeps these).
    ``ablations`` maps the name of a variant (e.g. "ranking off") to card hyper-parameters it overrides, for the
    ablation rows of ``training compare`` and ``training evaluate --ablation``. ``map_normalisation`` (optional,
    "none" by default) is what the cards of its new bundles say about their maps (``scoring.normalise_maps``).
    """

    name: ClassVar[str]
    weights: ClassVar[tuple[str, ...]]
    ablations: ClassVar[dict[str, dict]]

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "AnomalyMethod":
        """Build the method from a verified bundle, ready to score on ``device``."""
        ...

    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        """Score (B, H, W) normalised slices; ``mask`` (B, H, W, bool) is where the brain is."""
        ...

"""The method plug-in interface: build from a bundle, score a batch of slices into maps and slice scores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import torch

from ..bundle import Bundle
from ..errors import InputError
from ..progress import CancelCallback, ProgressCallback
from ..serialise import DictSerialisable


@dataclass
class SliceResult:
    """Per-pixel anomaly maps (B, H, W) and per-slice scores (B,), both float32 on the CPU; ``evidence`` (B, H, W):
    the map the slice scores are read from, where it is not ``maps`` (e.g. a learned map before a prior)."""

    maps: torch.Tensor
    scores: torch.Tensor
    evidence: torch.Tensor | None = None


@dataclass
class ReferenceFit:
    """What a method's fit to a user's healthy reference slices gives (``AnomalyMethod.fit_references``)."""

    state_dict: dict[str, torch.Tensor]  # the weights, as the bundle stores them
    hyperparameters: dict  # the card's
    settings: dict  # the fit's, for the run record
    seed: int
    steps: int
    record: dict  # what the fit did: "seconds", "slices", "final_losses", ...
    per_scan_k: float  # the k of the per-scan operating point of the new model's label maps


class AnomalyMethod:
    """Base class of every method plug-in (Patch-GAN, baselines, ...): all that the inference path, training and
    the registry use of a method is declared here.

    ``Config`` is the method's configuration dataclass, read from the card's hyper-parameters by :meth:`configure`
    (defaults filled in) and written back by its ``to_dict``; two settings that give equal configurations make the same
    method. ``weights`` names the modules whose ``state_dict`` a bundle stores, as ``<module>.<parameter>`` keys: the
    one place that says which trained modules a method needs (training checkpoints every module, export keeps these).
    ``ablations`` maps the name of a variant (e.g. "ranking off") to the card hyper-parameters it overrides, for the
    ablation rows of ``training compare`` and ``training evaluate --ablation``. ``map_normalisation`` is what the
    cards of its new bundles say about their maps (``scoring.normalise_maps``). A method that learns normal from a
    few healthy reference volumes (``references.fit_references``, the panel's "Learn normal from references") sets
    ``min_references`` and implements :meth:`fit_references`.
    """

    name: ClassVar[str]
    Config: ClassVar[type[DictSerialisable]]
    weights: ClassVar[tuple[str, ...]] = ()
    ablations: ClassVar[Mapping[str, dict]] = MappingProxyType({})
    map_normalisation: ClassVar[str] = "none"
    min_references: ClassVar[int] = 0  # 0: the method does not learn from reference volumes

    def __init__(self, config: DictSerialisable, device: torch.device = torch.device("cpu")) -> None:
        self.config = config
        self.device = device

    @classmethod
    def configure(cls, hyperparameters: dict) -> DictSerialisable:
        """The configuration that card ``hyperparameters`` give (TypeError/ValueError/InputError when they cannot)."""
        return cls.Config.from_dict(hyperparameters)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "AnomalyMethod":
        """Build the method from a verified bundle, ready to score on ``device``."""
        raise NotImplementedError

    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        """Score (B, H, W) normalised slices; ``mask`` (B, H, W, bool) is where the brain is."""
        raise NotImplementedError

    @classmethod
    def check_reference_options(cls, **options) -> None:
        """Refuse ``options`` of :meth:`fit_references` (files, settings) before any reference is read."""

    @classmethod
    def fit_references(cls, slices: torch.Tensor, masks: torch.Tensor, reference_ids: list[str],
                       progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
                       **options) -> ReferenceFit:
        """Fit to (N, H, W) normalised healthy reference ``slices`` with brain ``masks`` (model grid);
        ``reference_ids`` names the reference volume of each slice."""
        raise InputError(f"method {cls.name} does not learn from reference volumes")

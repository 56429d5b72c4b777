"""One-class SVM baseline (the paper's "OCSVM"): RBF one-class SVMs on compact intensity features.

Features (one definition, used by training and inference): a slice is average-pooled by ``slice_pool`` (a 128 x 128
slice becomes 16 x 16 = 256 numbers); a patch of ``patch`` px (stride ``patch // 2``) is average-pooled to
``patch_grid`` x ``patch_grid`` numbers. Slice score = minus the slice SVM's decision value. Map = minus the patch
SVM's decision value, spread over each patch's own footprint and averaged where patches overlap; only patches that
are at least half brain count (the patch SVM was fitted on such patches only), and the map is kept inside the brain.

The SVMs are fitted with scikit-learn at training time; the bundle stores only their support vectors, dual
coefficients, intercept and RBF gamma as tensors, and the decision function is evaluated here in torch (no pickled
estimator is ever loaded, and inference needs no scikit-learn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..bundle import Bundle
from ..errors import InputError
from ..serialise import DictSerialisable
from .base import AnomalyMethod, SliceResult
from .registry import register


# A patch takes part in fitting and in the map when at least this share of it is brain.
MIN_PATCH_BRAIN = 0.5


@dataclass(frozen=True)
class OCSVMConfig(DictSerialisable):
    """Feature and SVM settings; stored in the model card."""

    slice_pool: int = 8
    patch: int = 32
    patch_grid: int = 8
    nu: float = 0.05

    def __post_init__(self) -> None:
        if self.patch % self.patch_grid or self.patch % 2:
            raise InputError(f"OCSVM patch of {self.patch} px must be even and divisible by its grid of "
                             f"{self.patch_grid} cells")


def slice_features(x: torch.Tensor, config: OCSVMConfig) -> torch.Tensor:
    """(B, H, W) slices -> (B, F) pooled intensities."""
    return F.avg_pool2d(x.unsqueeze(1).float(), config.slice_pool).flatten(1)


def patch_features(x: torch.Tensor, config: OCSVMConfig) -> torch.Tensor:
    """(B, H, W) slices -> (B, P, F): each ``patch`` px patch (stride ``patch // 2``, row-major) pooled to F numbers;
    the same patches as :func:`patches_to_map` spreads values back over."""
    pool = config.patch // config.patch_grid
    pooled = F.unfold(x.unsqueeze(1).float(), config.patch, stride=config.patch // 2)  # (B, patch^2, P)
    pooled = pooled.transpose(1, 2).reshape(x.shape[0], -1, config.patch_grid, pool, config.patch_grid, pool)
    return pooled.mean(dim=(3, 5)).flatten(2)


def patches_to_map(values: torch.Tensor, weights: torch.Tensor, size: tuple[int, int],
                   config: OCSVMConfig) -> torch.Tensor:
    """(B, P) patch values -> (B, H, W): each pixel gets the weighted mean of the patches covering it (0 if none)."""
    spread = lambda v: F.fold(v.unsqueeze(1).expand(-1, config.patch ** 2, -1), size, config.patch,  # noqa: E731
                              stride=config.patch // 2).squeeze(1)
    total = spread(weights)
    return spread(values * weights) / total.clamp_min(1e-6) * (total > 0)


class RBFDecision:
    """sum_i alpha_i exp(-gamma |s_i - x|^2) + intercept: a fitted one-class SVM's decision function."""

    def __init__(self, support: torch.Tensor, alpha: torch.Tensor, intercept: torch.Tensor,
                 gamma: torch.Tensor) -> None:
        self.support, self.alpha, self.intercept, self.gamma = support, alpha, intercept, gamma

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        distance = torch.cdist(features.double(), self.support.double()) ** 2
        return (torch.exp(-self.gamma.double() * distance) @ self.alpha.double() + self.intercept.double()).float()

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.support": self.support, f"{prefix}.alpha": self.alpha,
                f"{prefix}.intercept": self.intercept, f"{prefix}.gamma": self.gamma}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], prefix: str, features: int) -> "RBFDecision":
        try:
            support = state[f"{prefix}.support"]
            decision = cls(support, state[f"{prefix}.alpha"], state[f"{prefix}.intercept"], state[f"{prefix}.gamma"])
        except KeyError as missing:
            raise InputError(f"OCSVM weights lack {missing}") from None
        if support.ndim != 2 or support.shape[1] != features or decision.alpha.shape != (support.shape[0],):
            raise InputError(f"OCSVM weights ({prefix}) do not match the card's feature size {features}")
        return decision


@register
class OneClassSVMMethod(AnomalyMethod):
    """Slice and patch one-class SVMs behind the method interface."""

    name: ClassVar[str] = "ocsvm"
    Config = OCSVMConfig
    weights: ClassVar[tuple[str, ...]] = ("slice_svm", "patch_svm")

    def __init__(self, config: OCSVMConfig, slice_svm: RBFDecision, patch_svm: RBFDecision,
                 device: torch.device) -> None:
        super().__init__(config, device)
        self.slice_svm, self.patch_svm = slice_svm, patch_svm

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "OneClassSVMMethod":
        config = cls.configure(bundle.card.hyperparameters)
        height, width = bundle.card.preprocessing.size
        state = bundle.state_dict or {}
        features = (height // config.slice_pool) * (width // config.slice_pool)
        slice_svm = RBFDecision.from_state(state, "slice_svm", features)
        patch_svm = RBFDecision.from_state(state, "patch_svm", config.patch_grid ** 2)
        return cls(config, slice_svm, patch_svm, device)

    @torch.no_grad()
    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        x = slices.float().cpu()
        mask = mask.float().cpu()
        scores = -self.slice_svm(slice_features(x, self.config))
        features = patch_features(x, self.config)
        per_patch = -self.patch_svm(features.flatten(0, 1)).view(features.shape[:2])
        brain = (patch_features(mask, self.config).mean(dim=2) >= MIN_PATCH_BRAIN).float()
        maps = patches_to_map(per_patch, brain, tuple(x.shape[-2:]), self.config) * mask
        return SliceResult(maps=maps, scores=scores)

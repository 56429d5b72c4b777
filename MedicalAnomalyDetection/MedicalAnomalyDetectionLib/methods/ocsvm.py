"""One-class SVM baseline (the paper's "OCSVM"): RBF one-class SVMs on compact intensity features.

Features (one definition, used by training and inference): a slice is average-pooled by ``slice_pool`` (a 128 x 128
slice becomes 16 x 16 = 256 numbers); a patch of ``patch`` px (stride ``patch // 2``) is average-pooled to
``patch_grid`` x ``patch_grid`` numbers. Slice score = minus the slice SVM's decision value; map = minus the patch
SVM's decision value of each patch, bilinearly upsampled to the slice, inside the brain.

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
from .base import SliceResult


@dataclass(frozen=True)
class OCSVMConfig:
    slice_pool: int = 8
    patch: int = 32
    patch_grid: int = 8
    nu: float = 0.05

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> "OCSVMConfig":
        return cls(**data)


def slice_features(x: torch.Tensor, config: OCSVMConfig) -> torch.Tensor:
    """(B, H, W) slices -> (B, F) pooled intensities."""
    return F.avg_pool2d(x.unsqueeze(1).float(), config.slice_pool).flatten(1)


def patch_features(x: torch.Tensor, config: OCSVMConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W) slices -> (B * P, F) pooled patches (row-major patch grid) and the grid shape."""
    pooled = F.avg_pool2d(x.unsqueeze(1).float(), config.patch // config.patch_grid)
    size = config.patch_grid
    patches = pooled.unfold(2, size, size // 2).unfold(3, size, size // 2)  # (B, 1, gy, gx, size, size)
    grid = (patches.shape[2], patches.shape[3])
    return patches.reshape(-1, size * size), grid


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


class OneClassSVMMethod:
    """Slice and patch one-class SVMs behind the method interface."""

    name: ClassVar[str] = "ocsvm"

    def __init__(self, config: OCSVMConfig, slice_svm: RBFDecision, patch_svm: RBFDecision,
                 device: torch.device) -> None:
        self.config, self.slice_svm, self.patch_svm, self.device = config, slice_svm, patch_svm, device

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "OneClassSVMMethod":
        config = OCSVMConfig.from_dict(bundle.card.hyperparameters)
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
        features, grid = patch_features(x, self.config)
        per_patch = -self.patch_svm(features).view(x.shape[0], 1, *grid)
        maps = F.interpolate(per_patch, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1) * mask
        return SliceResult(maps=maps, scores=scores)

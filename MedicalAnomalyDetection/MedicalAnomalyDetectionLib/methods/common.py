"""Small pieces the method plug-ins share: loading a network from a bundle, smoothing maps, per-slice means."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..bundle import Bundle
from ..errors import InputError


def load_module(module: nn.Module, bundle: Bundle, prefix: str) -> nn.Module:
    """Load ``prefix.*`` weights of the bundle into ``module`` (strict), or say that card and weights disagree."""
    state = {k.removeprefix(prefix + "."): v for k, v in (bundle.state_dict or {}).items()
             if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(f"weights of {bundle.card.name} do not match its model card's network: "
                         f"{str(error).splitlines()[0][:200]}") from None
    return module


def smooth(values: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """Box-smooth (B, H, W) ``values`` over ``size`` px and keep them inside ``mask``."""
    if size <= 1:
        return values * mask
    smoothed = F.avg_pool2d(values.unsqueeze(1), size, stride=1, padding=size // 2, count_include_pad=False)
    return smoothed.squeeze(1) * mask


def mean_in_mask(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) mean of (B, H, W) ``values`` over each slice's mask (0 for an empty mask)."""
    return (values * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp_min(1)


def median_filter(values: torch.Tensor, size: int) -> torch.Tensor:
    """Median of each ``size`` x ``size`` neighbourhood of (B, H, W) ``values`` (replicate padding)."""
    if size <= 1:
        return values
    padded = F.pad(values.unsqueeze(1), (size // 2,) * 4, mode="replicate")
    patches = F.unfold(padded, size)  # (B, size^2, H * W)
    return patches.median(dim=1).values.view_as(values)


def erode(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """(B, H, W) ``mask`` shrunk by ``pixels`` (a pixel stays when its whole (2p+1)^2 neighbourhood is in the mask)."""
    if pixels <= 0:
        return mask
    size = 2 * pixels + 1
    kept = F.avg_pool2d(mask.float().unsqueeze(1), size, stride=1, padding=pixels, count_include_pad=True)
    return (kept.squeeze(1) > 1.0 - 1e-6).to(mask.dtype)


def signed_residual(residual: torch.Tensor, sign: str) -> torch.Tensor:
    """Keep the part of ``residual`` that the modality's lesions show: positive, negative or absolute."""
    if sign == "positive":
        return residual.clamp_min(0)
    if sign == "negative":
        return (-residual).clamp_min(0)
    return residual.abs()

"""Augmentation of healthy training slices, shared by the training loop and the few-shot fit."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator,
            elastic_px: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-right flip, rotation (+-10 deg), scaling (0.9-1.1) and intensity scaling (0.9-1.1) of (B, 1, H, W)
    slices and their masks; with ``elastic_px`` > 0 also a smooth elastic deformation whose displacement has a
    standard deviation of about that many pixels (a random field on a 4 x 4 grid, upsampled bicubically)."""
    batch = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator, device=generator.device) * (high - low) + low

    angle = uniform(-math.pi / 18, math.pi / 18)
    scale = uniform(0.9, 1.1)
    flip = torch.where(torch.rand(batch, generator=generator, device=generator.device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.cos(angle) / scale * flip
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * flip
    theta[:, 1, 1] = torch.cos(angle) / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if elastic_px > 0:
        coarse = torch.randn(batch, 2, 4, 4, generator=generator, device=generator.device).to(x.device)
        field = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=False)
        size = torch.tensor([x.shape[-1], x.shape[-2]], device=x.device, dtype=x.dtype)
        grid = grid + (field.permute(0, 2, 3, 1) * elastic_px * 2.0 / size)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x * uniform(0.9, 1.1).view(-1, 1, 1, 1) * mask, mask

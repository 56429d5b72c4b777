"""The PatchGAN discriminator of the Patch-GAN and ALOCC: one real/fake logit per image patch."""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """PatchGAN: input channels (here: image and hole indicator; ALOCC: image alone) -> one real/fake logit per
    ~32 x 32 patch (receptive field 38 px with three stride-2 layers)."""

    def __init__(self, widths: tuple[int, ...], in_channels: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            channels = width
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, *channels: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat(channels, dim=1))

"""The U-Net reconstructor of the Patch-GAN (masked-image in-painting) and of the denoising autoencoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(channels_out, channels_out, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))


class Reconstructor(nn.Module):
    """Encoder-decoder with skip connections (a U-Net): its input channels, e.g. (masked slice, hole indicator) for
    the Patch-GAN or the slice alone for the denoising autoencoder, -> reconstructed slice (channel 0) and, with
    ``uncertainty``, the log-variance of its error (channel 1)."""

    def __init__(self, widths: tuple[int, ...], uncertainty: bool = False, in_channels: int = 2) -> None:
        super().__init__()
        self.stem = _conv_block(in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True), _conv_block(b, b))
            for a, b in zip(widths[:-1], widths[1:]))
        self.up = nn.ModuleList(nn.Conv2d(b, a, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(_conv_block(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], 2 if uncertainty else 1, 1)

    def forward(self, *channels: torch.Tensor) -> torch.Tensor:
        x = self.stem(torch.cat(channels, dim=1))
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            skip = skips.pop()
            x = F.leaky_relu(up(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)), 0.2)
            x = merge(torch.cat([x, skip], dim=1))
        return self.head(x)

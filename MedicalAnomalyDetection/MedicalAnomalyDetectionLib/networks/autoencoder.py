"""The convolutional autoencoder (no skip connections) of the AE baseline and of ALOCC's reconstructor, and its
configuration: network and map settings shared by both cards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import InputError
from ..serialise import DictSerialisable


@dataclass(frozen=True)
class AutoencoderConfig(DictSerialisable):
    """Network and map settings shared by the AE and ALOCC cards."""

    required_keys: ClassVar[tuple[str, ...]] = ("widths", "latent_channels", "sign", "map_smoothing")

    widths: tuple[int, ...] = (16, 32, 64, 128)
    latent_channels: int = 16
    sign: str = "positive"
    map_smoothing: int = 7

    def __post_init__(self) -> None:
        if self.map_smoothing < 1 or self.map_smoothing % 2 == 0:
            raise InputError(f"map smoothing must be an odd number of pixels, not {self.map_smoothing}")

    def check_size(self, size: tuple[int, int]) -> None:
        """The network halves the slice len(widths) times and doubles it back: sizes must divide evenly."""
        factor = 2 ** len(self.widths)
        if any(n % factor for n in size):
            raise InputError(f"slice size {tuple(size)} is not divisible by {factor}, which this "
                             f"{len(self.widths)}-level autoencoder needs")


def _down(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True),
                         nn.Conv2d(channels_out, channels_out, 3, padding=1), nn.LeakyReLU(0.2, True))


def _up(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(channels_in, channels_out, 4, stride=2, padding=1),
                         nn.LeakyReLU(0.2, True), nn.Conv2d(channels_out, channels_out, 3, padding=1),
                         nn.LeakyReLU(0.2, True))


class ConvAutoencoder(nn.Module):
    """(B, 1, H, W) -> (B, 1, H, W) through a (B, latent_channels, H / 2^n, W / 2^n) code."""

    def __init__(self, widths: tuple[int, ...], latent_channels: int) -> None:
        super().__init__()
        chain = (1, *widths)
        self.encoder = nn.Sequential(*(_down(a, b) for a, b in zip(chain[:-1], chain[1:])),
                                     nn.Conv2d(widths[-1], latent_channels, 1))
        back = (*widths[::-1], widths[0])
        self.decoder = nn.Sequential(nn.Conv2d(latent_channels, widths[-1], 1), nn.LeakyReLU(0.2, True),
                                     *(_up(a, b) for a, b in zip(back[:-1], back[1:])),
                                     nn.Conv2d(widths[0], 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

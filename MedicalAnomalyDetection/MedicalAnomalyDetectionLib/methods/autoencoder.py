"""Convolutional autoencoder baseline (the paper's "AE"): trained with L2 reconstruction of healthy slices.

Map = the modality's signed residual x - AE(x), box-smoothed like the Patch-GAN's map; slice score = the mean of the
map over the slice's brain pixels. The encoder halves the resolution ``len(widths)`` times down to a
``latent_channels``-channel code (8 x 8 x 16 = 1,024 numbers for a 128 x 128 slice with the defaults), with no skip
connections, so the code is a real bottleneck. The same network is ALOCC's reconstructor.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..bundle import Bundle
from ..networks.autoencoder import AutoencoderConfig, ConvAutoencoder
from .base import AnomalyMethod, SliceResult
from .common import load_module, mean_in_mask, signed_residual, smooth
from .registry import register
from .runtime import autocast_for


@register
class Autoencoder(AnomalyMethod):
    """The AE baseline behind the method interface."""

    name: ClassVar[str] = "ae"
    Config = AutoencoderConfig
    weights: ClassVar[tuple[str, ...]] = ("autoencoder",)

    def __init__(self, config: AutoencoderConfig, network: ConvAutoencoder, device: torch.device) -> None:
        super().__init__(config, device)
        self.network = network.to(device).eval()

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "Autoencoder":
        config = cls.configure(bundle.card.hyperparameters)
        config.check_size(bundle.card.preprocessing.size)
        network = load_module(ConvAutoencoder(config.widths, config.latent_channels), bundle, "autoencoder")
        return cls(config, network, device)

    @torch.no_grad()
    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        x = slices.to(self.device, torch.float32)
        mask = mask.to(self.device, torch.float32)
        with autocast_for(self.device):
            reconstruction = self.network(x.unsqueeze(1)).float().squeeze(1)
        maps = smooth(signed_residual(x - reconstruction, self.config.sign) * mask, mask, self.config.map_smoothing)
        return SliceResult(maps=maps.cpu(), scores=mean_in_mask(maps, mask).cpu())

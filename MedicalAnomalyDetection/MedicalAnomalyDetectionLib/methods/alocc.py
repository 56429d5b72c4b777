"""ALOCC (Sabokrou et al., CVPR 2018) as a baseline: a denoising reconstructor R and a discriminator D trained
adversarially on healthy slices only.

R is the AE's :class:`ConvAutoencoder`, trained to map x + N(0, 0.155^2) back to x (reconstruction weight 0.2
beside the adversarial term, as the issue asks). D is the Patch-GAN's :class:`PatchDiscriminator` on the image alone,
so it judges ~32 x 32 patches. Score as in the paper, D(R(x)): the map is 1 - sigmoid(D(R(x))) per patch, upsampled
bilinearly to the slice and kept inside the brain, and a slice's score is that map's mean over its brain pixels.
(The reconstructor's ``sign`` and ``map_smoothing`` play no part here: ALOCC scores with D, not with residuals.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..bundle import Bundle
from ..networks.autoencoder import AutoencoderConfig, ConvAutoencoder
from ..networks.patch_discriminator import PatchDiscriminator
from ..serialise import DictSerialisable
from .base import AnomalyMethod, SliceResult
from .common import load_module, mean_in_mask
from .registry import register
from .runtime import autocast_for


@dataclass(frozen=True)
class ALOCCConfig(DictSerialisable):
    """Reconstructor (an AE config), discriminator widths and training noise; stored in the card."""

    required_keys: ClassVar[tuple[str, ...]] = ("reconstructor", "disc_widths", "noise_sigma")

    reconstructor: AutoencoderConfig = AutoencoderConfig()
    disc_widths: tuple[int, ...] = (32, 64, 128)
    noise_sigma: float = 0.155


@register
class ALOCC(AnomalyMethod):
    """D(R(x)) scoring behind the method interface."""

    name: ClassVar[str] = "alocc"
    Config = ALOCCConfig
    weights: ClassVar[tuple[str, ...]] = ("reconstructor", "discriminator")

    def __init__(self, config: ALOCCConfig, reconstructor: ConvAutoencoder, discriminator: PatchDiscriminator,
                 device: torch.device) -> None:
        super().__init__(config, device)
        self.reconstructor = reconstructor.to(device).eval()
        self.discriminator = discriminator.to(device).eval()

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "ALOCC":
        config = cls.configure(bundle.card.hyperparameters)
        r = config.reconstructor
        r.check_size(bundle.card.preprocessing.size)
        reconstructor = load_module(ConvAutoencoder(r.widths, r.latent_channels), bundle, "reconstructor")
        discriminator = load_module(PatchDiscriminator(config.disc_widths, in_channels=1), bundle, "discriminator")
        return cls(config, reconstructor, discriminator, device)

    @torch.no_grad()
    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        x = slices.to(self.device, torch.float32).unsqueeze(1)
        mask = mask.to(self.device, torch.float32)
        with autocast_for(self.device):
            logits = self.discriminator(self.reconstructor(x)).float()
        abnormal = 1.0 - torch.sigmoid(logits)
        maps = F.interpolate(abnormal, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1) * mask
        return SliceResult(maps=maps.cpu(), scores=mean_in_mask(maps, mask).cpu())

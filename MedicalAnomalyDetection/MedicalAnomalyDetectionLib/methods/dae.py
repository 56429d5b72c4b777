"""Denoising autoencoder with coarse noise (Kascenas, Pugeault and O'Neil, MIDL 2022), the field's strongest simple
peer: a U-Net learns to remove smooth, blob-like noise from healthy slices, so at test time it "repairs" a lesion
towards healthy tissue and the residual shows it.

- Training (``training/recipes/dae.py``): Gaussian noise drawn on a ``noise_resolution`` x ``noise_resolution`` grid,
  upsampled bilinearly to the slice, shifted by a random roll, added inside the brain only; L2 loss against the
  clean slice inside the brain. Kascenas et al. use noise std 0.2 on volumes standardised to unit brain std; our
  slices use the percentile normalisation (brain std about 0.16 on lgg_flair train), so ``noise_std`` 0.03 is the
  same relative strength.
- Map: the modality's signed residual x - DAE(x) on the brain mask eroded by ``erode_px`` (the edges of the brain
  are where a reconstruction errs most), median-filtered over ``median_filter`` px, as in the paper.
- Slice score: the Patch-GAN's patch ranking (Eq. 5) of that map, so slice-level numbers compare like with like.
- The network is the Patch-GAN's U-Net (``patchgan.Reconstructor``) with the slice as its only input channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..bundle import Bundle
from ..networks.unet import Reconstructor
from ..scoring import PatchRanking, slice_scores
from ..serialise import DictSerialisable
from .base import AnomalyMethod, SliceResult
from .common import erode, load_module, median_filter, signed_residual
from .registry import register
from .runtime import autocast_for


@dataclass(frozen=True)
class DAEConfig(DictSerialisable):
    """Network, training noise and map settings; stored in the model card."""

    required_keys: ClassVar[tuple[str, ...]] = ("widths", "noise_std", "noise_resolution", "sign", "median_filter",
                                                 "erode_px", "ranking")

    widths: tuple[int, ...] = (16, 32, 64, 128)
    noise_std: float = 0.03
    noise_resolution: int = 16
    sign: str = "positive"
    median_filter: int = 5
    erode_px: int = 2
    ranking: PatchRanking = PatchRanking()


def coarse_noise(x: torch.Tensor, mask: torch.Tensor, config: DAEConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) noise drawn at ``noise_resolution``^2, upsampled, randomly rolled, zero outside ``mask``."""
    batch, _, height, width = x.shape
    coarse = torch.randn(batch, 1, config.noise_resolution, config.noise_resolution, generator=generator,
                         device=generator.device).to(x.device) * config.noise_std
    noise = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    shift = torch.randint(0, min(height, width), (2,), generator=generator, device=generator.device)
    return torch.roll(noise, shifts=(int(shift[0]), int(shift[1])), dims=(-2, -1)) * mask


@register
class DenoisingAutoencoder(AnomalyMethod):
    """The DAE behind the method interface."""

    name: ClassVar[str] = "dae"
    Config = DAEConfig
    weights: ClassVar[tuple[str, ...]] = ("denoiser",)

    def __init__(self, config: DAEConfig, network: Reconstructor, device: torch.device) -> None:
        super().__init__(config, device)
        self.network = network.to(device).eval()

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "DenoisingAutoencoder":
        config = cls.configure(bundle.card.hyperparameters)
        network = load_module(Reconstructor(config.widths, in_channels=1), bundle, "denoiser")
        return cls(config, network, device)

    @torch.no_grad()
    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        x = slices.to(self.device, torch.float32)
        mask = mask.to(self.device, torch.float32)
        with autocast_for(self.device):
            clean = self.network(x.unsqueeze(1)).float()[:, 0]
        inside = erode(mask, self.config.erode_px)
        residual = signed_residual(x - clean, self.config.sign) * inside
        maps = median_filter(residual, self.config.median_filter) * inside
        return SliceResult(maps=maps.cpu(), scores=slice_scores(maps, mask, self.config.ranking).cpu())

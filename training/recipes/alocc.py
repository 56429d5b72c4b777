"""ALOCC's recipe (Sabokrou et al.): D tells x from R(x + noise); R denoises, fools D and keeps an L2 term."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from MedicalAnomalyDetectionLib.methods.alocc import ALOCC, ALOCCConfig
from MedicalAnomalyDetectionLib.networks.autoencoder import AutoencoderConfig, ConvAutoencoder
from MedicalAnomalyDetectionLib.networks.patch_discriminator import PatchDiscriminator
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for

from ..loop import FitSettings, LoopRecipe, Trainee, adversarial_trainee, descend
from ..slice_set import SliceSet
from . import register
from .settings import option, sign_option


@dataclass(frozen=True, kw_only=True)
class ALOCCSettings(FitSettings):
    """ALOCC's fit: its reconstructor (an autoencoder) and the weight of R's L2 term."""

    widths: tuple[int, ...] = option(AutoencoderConfig.widths, "encoder widths of the reconstructor")
    sign: str = sign_option(AutoencoderConfig.sign)
    recon_weight: float = option(0.2, "weight of R's L2 reconstruction term beside its adversarial one")


def alocc_trainee(config: ALOCCConfig, settings: ALOCCSettings, device: torch.device,
                  size: tuple[int, int]) -> Trainee:
    """ALOCC: D tells x from R(x + noise); R denoises, fools D, and keeps settings.recon_weight * L2."""
    config.reconstructor.check_size(size)
    torch.manual_seed(settings.seed)
    r = config.reconstructor
    reconstructor = ConvAutoencoder(r.widths, r.latent_channels).to(device)
    discriminator = PatchDiscriminator(config.disc_widths, in_channels=1).to(device)

    def step(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, opt_r: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer) -> dict[str, float]:
        noisy = x + config.noise_sigma * torch.randn(x.shape, generator=generator, device=x.device)
        with autocast_for(device, training=True):
            restored = reconstructor(noisy).float()
            d_real = discriminator(x).float()
            d_fake = discriminator(restored.detach()).float()
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        descend(opt_d, loss_d)
        with autocast_for(device, training=True):
            d_gen = discriminator(restored).float()
        loss_adv = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        loss_r = F.mse_loss(restored, x)
        descend(opt_r, loss_adv + settings.recon_weight * loss_r)
        return {"loss_r": loss_r.item(), "loss_adv": loss_adv.item(), "loss_d": loss_d.item()}

    return adversarial_trainee(ALOCC.name, config.to_dict(), reconstructor, discriminator, settings, step)


@register
class ALOCCRecipe(LoopRecipe):
    name = ALOCC.name
    help = "ALOCC baseline (denoising reconstructor + discriminator)"
    Settings = ALOCCSettings

    @classmethod
    def trainee(cls, settings: ALOCCSettings, data: SliceSet, device: torch.device) -> Trainee:
        config = ALOCCConfig(reconstructor=AutoencoderConfig(widths=settings.widths, sign=settings.sign))
        return alocc_trainee(config, settings, device, data.slices.shape[1:])

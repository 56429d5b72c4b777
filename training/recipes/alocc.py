"""ALOCC's recipe (Sabokrou et al.): D tells x from R(x + noise); R denoises, fools D and keeps an L2 term."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from MedicalAnomalyDetectionLib.methods.alocc import ALOCC, ALOCCConfig
from MedicalAnomalyDetectionLib.networks.autoencoder import AutoencoderConfig, ConvAutoencoder
from MedicalAnomalyDetectionLib.networks.patch_discriminator import PatchDiscriminator
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for
from MedicalAnomalyDetectionLib.run_record import RunRecord

from ..loop import FitSettings, Trainee, adam, train_in_world
from ..slice_set import SliceSet
from . import Recipe, register
from .base import LOOP_RUN_OPTIONS, RunOptions
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
    opt_r, opt_d = adam(reconstructor, settings), adam(discriminator, settings)

    def step(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        noisy = x + config.noise_sigma * torch.randn(x.shape, generator=generator, device=x.device)
        with autocast_for(device, training=True):
            restored = reconstructor(noisy).float()
            d_real = discriminator(x).float()
            d_fake = discriminator(restored.detach()).float()
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with autocast_for(device, training=True):
            d_gen = discriminator(restored).float()
        loss_adv = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        loss_r = F.mse_loss(restored, x)
        opt_r.zero_grad(set_to_none=True)
        (loss_adv + settings.recon_weight * loss_r).backward()
        opt_r.step()
        return {"loss_r": loss_r.item(), "loss_adv": loss_adv.item(), "loss_d": loss_d.item()}

    return Trainee(method=ALOCC.name, config=config.to_dict(),
                   modules={"reconstructor": reconstructor, "discriminator": discriminator},
                   optimisers={"reconstructor": opt_r, "discriminator": opt_d}, step=step)


@register
class ALOCCRecipe(Recipe):
    name = ALOCC.name
    help = "ALOCC baseline (denoising reconstructor + discriminator)"
    Settings = ALOCCSettings
    run_options = LOOP_RUN_OPTIONS

    @classmethod
    def fit(cls, settings: ALOCCSettings, data: SliceSet | None, run_dir: Path, run: RunOptions = RunOptions(),
            command: str = "") -> RunRecord:
        config = ALOCCConfig(reconstructor=AutoencoderConfig(widths=settings.widths, sign=settings.sign))
        return train_in_world(lambda device: alocc_trainee(config, settings, device, data.slices.shape[1:]),
                              settings, data, run_dir, run, command)

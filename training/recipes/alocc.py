"""ALOCC's recipe (Sabokrou et al.): D tells x from R(x + noise); R denoises, fools D and keeps an L2 term."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from MedicalAnomalyDetectionLib.methods.alocc import ALOCC, ALOCCConfig
from MedicalAnomalyDetectionLib.networks.autoencoder import AutoencoderConfig, ConvAutoencoder
from MedicalAnomalyDetectionLib.networks.patch_discriminator import PatchDiscriminator
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for
from MedicalAnomalyDetectionLib.run_record import RunRecord

from ..loop import FitSettings, Trainee, adam, add_loop_arguments, train_from_args
from ..slice_set import SliceSet
from . import Recipe, register
from .ae import add_autoencoder_arguments


def alocc_trainee(config: ALOCCConfig, settings: FitSettings, device: torch.device,
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

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_loop_arguments(parser)
        add_autoencoder_arguments(parser)

    @classmethod
    def fit(cls, args: argparse.Namespace, data: SliceSet | None, run_dir: Path, command: str) -> RunRecord:
        config = ALOCCConfig(reconstructor=AutoencoderConfig(widths=tuple(args.widths), sign=args.sign))
        return train_from_args(lambda s, d: alocc_trainee(config, s, d, data.slices.shape[1:]), args, data,
                               run_dir, command)

"""The Patch-GAN's recipe: adversarial training of the reconstructor and the PatchGAN discriminator on healthy
slices.

The networks, hole masks and loss terms are those of ``MedicalAnomalyDetectionLib.methods.patchgan`` (its docstring
states the choices made where the paper is silent); the loop, checkpoints and resume are :mod:`training.loop`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from MedicalAnomalyDetectionLib.methods.patchgan import LOG_VAR_RANGE, PatchGAN, PatchGANConfig, checkerboard_holes
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for
from MedicalAnomalyDetectionLib.networks.patch_discriminator import PatchDiscriminator
from MedicalAnomalyDetectionLib.networks.unet import Reconstructor
from MedicalAnomalyDetectionLib.run_record import RunRecord
from MedicalAnomalyDetectionLib.scoring import PatchRanking

from ..loop import FitSettings, Trainee, adam, train_in_world
from ..slice_set import SliceSet
from . import Recipe, register
from .base import LOOP_RUN_OPTIONS, RunOptions
from .settings import option, sign_option


@dataclass(frozen=True, kw_only=True)
class PatchGANSettings(FitSettings):
    """The Patch-GAN's fit: its network (the card's hyper-parameters) and the loss weights of Eq. 4."""

    widths: tuple[int, ...] = option(PatchGANConfig.widths, "encoder widths")
    hole: int = option(PatchGANConfig.hole, "in-painting hole (and ranking patch) size in px")
    sign: str = sign_option(PatchGANConfig.sign)
    uncertainty: bool = option(PatchGANConfig.uncertainty, "add the log-variance head (our addition)")
    recon_weight: float = option(0.2, "lambda of Eq. 4: weight of the L2 reconstruction term")
    adv_weight: float = option(0.05, "weight of R's adversarial term (the paper gives none)")
    uncertainty_weight: float = option(0.1, "weight of the log-variance head's Gaussian NLL")

    def network(self) -> PatchGANConfig:
        """The method's configuration these settings train (ranking patches of the hole's size)."""
        return PatchGANConfig(widths=self.widths, hole=self.hole, sign=self.sign, uncertainty=self.uncertainty,
                              ranking=PatchRanking(patch=self.hole, stride=self.hole // 2))


def training_step(x: torch.Tensor, mask: torch.Tensor, reconstructor: Reconstructor,
                  discriminator: PatchDiscriminator, opt_r: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                  config: PatchGANConfig, settings: PatchGANSettings, generator: torch.Generator) -> dict[str, float]:
    """One adversarial step on a batch of (B, 1, H, W) healthy slices; returns the loss terms."""
    batch, _, height, width = x.shape
    device = x.device
    phase = torch.randint(0, 2, (batch,), generator=generator, device=device)
    shift_y = torch.randint(0, config.hole, (batch,), generator=generator, device=device)
    shift_x = torch.randint(0, config.hole, (batch,), generator=generator, device=device)
    holes = checkerboard_holes(height, width, config.hole, phase, shift_y, shift_x)
    with autocast_for(device, training=True):
        out = reconstructor(x * (1 - holes), holes).float()
    x_hat = out[:, :1]
    fake = x * (1 - holes) + x_hat * holes

    with autocast_for(device, training=True):
        d_real = discriminator(x, holes).float()
        d_fake = discriminator(fake.detach(), holes).float()
    loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    loss_r = F.mse_loss(x_hat, x)  # Eq. 1, whole slice
    weight = holes * mask
    loss_patch = ((x_hat - x) ** 2 * weight).sum() / weight.sum().clamp_min(1)  # Eq. 2, in-painted patches
    with autocast_for(device, training=True):
        d_gen = discriminator(fake, holes).float()
    loss_adv = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))  # Eq. 3, R's side
    total = settings.recon_weight * loss_r + loss_patch + settings.adv_weight * loss_adv  # Eq. 4
    losses = {"loss_r": loss_r.item(), "loss_patch": loss_patch.item(), "loss_adv": loss_adv.item(),
              "loss_d": loss_d.item()}
    if config.uncertainty:
        log_var = out[:, 1:2].clamp(*LOG_VAR_RANGE)
        nll = 0.5 * ((x_hat.detach() - x) ** 2 * torch.exp(-log_var) + log_var)
        loss_nll = (nll * weight).sum() / weight.sum().clamp_min(1)
        total = total + settings.uncertainty_weight * loss_nll
        losses["loss_nll"] = loss_nll.item()
    opt_r.zero_grad(set_to_none=True)
    total.backward()
    opt_r.step()
    return losses


def patchgan_trainee(config: PatchGANConfig, settings: PatchGANSettings, device: torch.device) -> Trainee:
    """Reconstructor and discriminator with their Adam optimisers, stepping with :func:`training_step`."""
    torch.manual_seed(settings.seed)
    reconstructor = Reconstructor(config.widths, config.uncertainty).to(device)
    discriminator = PatchDiscriminator(config.disc_widths).to(device)
    opt_r, opt_d = adam(reconstructor, settings), adam(discriminator, settings)

    def step(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        return training_step(x, mask, reconstructor, discriminator, opt_r, opt_d, config, settings, generator)

    return Trainee(method=PatchGAN.name, config=config.to_dict(),
                   modules={"reconstructor": reconstructor, "discriminator": discriminator},
                   optimisers={"reconstructor": opt_r, "discriminator": opt_d}, step=step)


@register
class PatchGANRecipe(Recipe):
    name = PatchGAN.name
    help = "Patch-GAN with targeted patch ranking (masked in-painting + PatchGAN discriminator)"
    Settings = PatchGANSettings
    run_options = LOOP_RUN_OPTIONS

    @classmethod
    def fit(cls, settings: PatchGANSettings, data: SliceSet | None, run_dir: Path, run: RunOptions = RunOptions(),
            command: str = "") -> RunRecord:
        config = settings.network()
        return train_in_world(lambda device: patchgan_trainee(config, settings, device), settings, data, run_dir,
                              run, command)

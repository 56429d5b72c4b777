"""The Patch-GAN's recipe: adversarial training of the reconstructor and the PatchGAN discriminator on healthy
slices.

The networks, hole masks and loss terms are those of ``MedicalAnomalyDetectionLib.methods.patchgan`` (its docstring
states the choices made where the paper is silent); the loop, checkpoints and resume are :mod:`training.loop`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods.common import load_module
from MedicalAnomalyDetectionLib.methods.patchgan import LOG_VAR_RANGE, PatchGAN, PatchGANConfig, checkerboard_holes
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for
from MedicalAnomalyDetectionLib.networks.patch_discriminator import PatchDiscriminator
from MedicalAnomalyDetectionLib.networks.unet import Reconstructor
from MedicalAnomalyDetectionLib.scoring import PatchRanking

from ..loop import FitSettings, LoopRecipe, Trainee, adversarial_trainee, descend
from ..slice_set import SliceSet
from . import register
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
    init: str | None = option(None, "start the reconstructor from this Patch-GAN bundle's weights (a name or a "
                                    "folder) instead of at random, to train a model further; the discriminator "
                                    "starts afresh", metavar="BUNDLE")

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
    descend(opt_d, loss_d)

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
    descend(opt_r, total)
    return losses


def initial_reconstructor(config: PatchGANConfig, settings: PatchGANSettings, data: SliceSet) -> Reconstructor:
    """``settings.init``'s reconstructor, after checking that it is the network ``config`` trains and was trained on
    slices of ``data``'s modality prepared as ``data`` are; an InputError saying what differs."""
    bundle = load_bundle(settings.init)
    card = bundle.card
    if card.method != PatchGAN.name:
        raise InputError(f"--init {settings.init}: a {card.method} model, not a Patch-GAN")
    theirs = PatchGAN.configure(card.hyperparameters)
    if (tuple(theirs.widths), theirs.uncertainty) != (tuple(config.widths), config.uncertainty):
        raise InputError(f"--init {settings.init}: its reconstructor (widths {list(theirs.widths)}, uncertainty "
                         f"{theirs.uncertainty}) is not the one these settings train (widths {list(config.widths)}, "
                         f"uncertainty {config.uncertainty}): give the same --widths and --uncertainty")
    modality = data.source.get("modality")
    if modality is not None and modality != card.modality:
        raise InputError(f"--init {settings.init}: a {card.modality} model, but these are {modality} slices: "
                         f"{data.describe()}")
    prepared = data.source.get("preprocessing")
    if prepared is not None and prepared != card.preprocessing.to_dict():
        raise InputError(f"--init {settings.init}: trained on slices prepared as {card.preprocessing.to_dict()}, "
                         f"but these are prepared as {prepared}")
    return load_module(Reconstructor(config.widths, config.uncertainty), bundle, "reconstructor")


def patchgan_trainee(config: PatchGANConfig, settings: PatchGANSettings, device: torch.device,
                     reconstructor: Reconstructor | None = None) -> Trainee:
    """Reconstructor (``reconstructor``, or a new one) and discriminator with their Adam optimisers, stepping with
    :func:`training_step`."""
    torch.manual_seed(settings.seed)
    if reconstructor is None:
        reconstructor = Reconstructor(config.widths, config.uncertainty)
    reconstructor = reconstructor.to(device)
    discriminator = PatchDiscriminator(config.disc_widths).to(device)

    def step(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, opt_r: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer) -> dict[str, float]:
        return training_step(x, mask, reconstructor, discriminator, opt_r, opt_d, config, settings, generator)

    return adversarial_trainee(PatchGAN.name, config.to_dict(), reconstructor, discriminator, settings, step)


@register
class PatchGANRecipe(LoopRecipe):
    name = PatchGAN.name
    help = "Patch-GAN with targeted patch ranking (masked in-painting + PatchGAN discriminator)"
    Settings = PatchGANSettings

    @classmethod
    def trainee(cls, settings: PatchGANSettings, data: SliceSet, device: torch.device) -> Trainee:
        config = settings.network()
        initial = initial_reconstructor(config, settings, data) if settings.init else None
        return patchgan_trainee(config, settings, device, initial)

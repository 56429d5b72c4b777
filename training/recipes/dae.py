"""The denoising autoencoder's recipe (Kascenas et al., MIDL 2022): remove coarse noise added inside the brain of
healthy slices, L2 against the clean slice inside the brain (see ``methods/dae.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from MedicalAnomalyDetectionLib.methods.dae import DAEConfig, DenoisingAutoencoder, coarse_noise
from MedicalAnomalyDetectionLib.networks.unet import Reconstructor
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for

from ..loop import FitSettings, LoopRecipe, Trainee, descend
from ..slice_set import SliceSet
from . import register
from .settings import option, sign_option


@dataclass(frozen=True, kw_only=True)
class DAESettings(FitSettings):
    """The DAE's fit: its U-Net and its training noise (the card's hyper-parameters)."""

    learning_rate: float = option(1e-3, "initial learning rate (cosine decay)", flag="--lr")
    widths: tuple[int, ...] = option(DAEConfig.widths, "U-Net widths")
    noise_std: float = option(DAEConfig.noise_std, "coarse noise strength, in the slices' normalised units")
    noise_resolution: int = option(DAEConfig.noise_resolution, "noise grid size before upsampling")
    sign: str = sign_option(DAEConfig.sign)


def dae_trainee(config: DAEConfig, settings: DAESettings, device: torch.device) -> Trainee:
    """The U-Net and its Adam optimiser, stepping on noisy -> clean healthy slices."""
    torch.manual_seed(settings.seed)
    network = Reconstructor(config.widths, in_channels=1).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate, amsgrad=True, weight_decay=1e-5)

    def step(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        noisy = x + coarse_noise(x, mask, config, generator)
        with autocast_for(device, training=True):
            restored = network(noisy).float()
        loss = ((restored - x) ** 2 * mask).sum() / mask.sum().clamp_min(1)
        descend(optimiser, loss)
        return {"loss_r": loss.item()}

    return Trainee(method=DenoisingAutoencoder.name, config=config.to_dict(), modules={"denoiser": network},
                   optimisers={"denoiser": optimiser}, step=step)


@register
class DAERecipe(LoopRecipe):
    name = DenoisingAutoencoder.name
    help = "denoising autoencoder with coarse noise (Kascenas et al. 2022)"
    Settings = DAESettings

    @classmethod
    def trainee(cls, settings: DAESettings, data: SliceSet, device: torch.device) -> Trainee:
        config = DAEConfig(widths=settings.widths, noise_std=settings.noise_std,
                           noise_resolution=settings.noise_resolution, sign=settings.sign)
        return dae_trainee(config, settings, device)

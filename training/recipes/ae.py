"""The autoencoder baseline's recipe (the paper's "AE"): plain L2 reconstruction of augmented healthy slices."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from MedicalAnomalyDetectionLib.methods.autoencoder import Autoencoder, AutoencoderConfig, ConvAutoencoder
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for

from ..loop import FitSettings, LoopRecipe, Trainee, adam, descend
from ..slice_set import SliceSet
from . import register
from .settings import option, sign_option


@dataclass(frozen=True, kw_only=True)
class AutoencoderSettings(FitSettings):
    """The AE's fit: its network (the card's hyper-parameters)."""

    widths: tuple[int, ...] = option(AutoencoderConfig.widths, "encoder widths")
    sign: str = sign_option(AutoencoderConfig.sign)


def autoencoder_trainee(config: AutoencoderConfig, settings: FitSettings, device: torch.device,
                        size: tuple[int, int]) -> Trainee:
    """The AE with plain L2 reconstruction of the augmented healthy (size) slice."""
    config.check_size(size)
    torch.manual_seed(settings.seed)
    network = ConvAutoencoder(config.widths, config.latent_channels).to(device)
    optimiser = adam(network, settings)

    def step(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        with autocast_for(device, training=True):
            reconstruction = network(x).float()
        loss = F.mse_loss(reconstruction, x)
        descend(optimiser, loss)
        return {"loss_r": loss.item()}

    return Trainee(method=Autoencoder.name, config=config.to_dict(), modules={"autoencoder": network},
                   optimisers={"autoencoder": optimiser}, step=step)


@register
class AutoencoderRecipe(LoopRecipe):
    name = Autoencoder.name
    help = "convolutional autoencoder baseline (L2)"
    Settings = AutoencoderSettings

    @classmethod
    def trainee(cls, settings: AutoencoderSettings, data: SliceSet, device: torch.device) -> Trainee:
        config = AutoencoderConfig(widths=settings.widths, sign=settings.sign)
        return autoencoder_trainee(config, settings, device, data.slices.shape[1:])

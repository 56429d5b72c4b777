"""The autoencoder baseline's recipe (the paper's "AE"): plain L2 reconstruction of augmented healthy slices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from MedicalAnomalyDetectionLib.methods.autoencoder import Autoencoder, AutoencoderConfig, ConvAutoencoder
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for
from MedicalAnomalyDetectionLib.run_record import RunRecord

from ..loop import FitSettings, Trainee, adam, train_in_world
from ..slice_set import SliceSet
from . import Recipe, register
from .base import LOOP_RUN_OPTIONS, RunOptions
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
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"loss_r": loss.item()}

    return Trainee(method=Autoencoder.name, config=config.to_dict(), modules={"autoencoder": network},
                   optimisers={"autoencoder": optimiser}, step=step)


@register
class AutoencoderRecipe(Recipe):
    name = Autoencoder.name
    help = "convolutional autoencoder baseline (L2)"
    Settings = AutoencoderSettings
    run_options = LOOP_RUN_OPTIONS

    @classmethod
    def fit(cls, settings: AutoencoderSettings, data: SliceSet | None, run_dir: Path,
            run: RunOptions = RunOptions(), command: str = "") -> RunRecord:
        config = AutoencoderConfig(widths=settings.widths, sign=settings.sign)
        return train_in_world(lambda device: autoencoder_trainee(config, settings, device, data.slices.shape[1:]),
                              settings, data, run_dir, run, command)

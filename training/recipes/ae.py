"""The autoencoder baseline's recipe (the paper's "AE"): plain L2 reconstruction of augmented healthy slices."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from MedicalAnomalyDetectionLib.methods.autoencoder import Autoencoder, AutoencoderConfig, ConvAutoencoder
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for
from MedicalAnomalyDetectionLib.run_record import RunRecord

from ..loop import FitSettings, Trainee, adam, add_loop_arguments, train_from_args
from ..slice_set import SliceSet
from . import Recipe, register
from .base import add_sign_argument


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


def add_autoencoder_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the autoencoder network (shared with ALOCC's reconstructor)."""
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128], help="encoder widths")
    add_sign_argument(parser)


@register
class AutoencoderRecipe(Recipe):
    name = Autoencoder.name
    help = "convolutional autoencoder baseline (L2)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_loop_arguments(parser)
        add_autoencoder_arguments(parser)

    @classmethod
    def fit(cls, args: argparse.Namespace, data: SliceSet | None, run_dir: Path, command: str) -> RunRecord:
        config = AutoencoderConfig(widths=tuple(args.widths), sign=args.sign)
        return train_from_args(lambda s, d: autoencoder_trainee(config, s, d, data.slices.shape[1:]), args, data,
                               run_dir, command)

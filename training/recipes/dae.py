"""The denoising autoencoder's recipe (Kascenas et al., MIDL 2022): remove coarse noise added inside the brain of
healthy slices, L2 against the clean slice inside the brain (see ``methods/dae.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from MedicalAnomalyDetectionLib.methods.dae import DAEConfig, DenoisingAutoencoder, coarse_noise
from MedicalAnomalyDetectionLib.networks.unet import Reconstructor
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for
from MedicalAnomalyDetectionLib.run_record import RunRecord

from ..loop import FitSettings, Trainee, add_loop_arguments, train_from_args
from ..slice_set import SliceSet
from . import Recipe, register
from .base import add_sign_argument


def dae_trainee(config: DAEConfig, settings: FitSettings, device: torch.device) -> Trainee:
    """The U-Net and its Adam optimiser, stepping on noisy -> clean healthy slices."""
    torch.manual_seed(settings.seed)
    network = Reconstructor(config.widths, in_channels=1).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate, amsgrad=True, weight_decay=1e-5)

    def step(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        noisy = x + coarse_noise(x, mask, config, generator)
        with autocast_for(device, training=True):
            restored = network(noisy).float()
        loss = ((restored - x) ** 2 * mask).sum() / mask.sum().clamp_min(1)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"loss_r": loss.item()}

    return Trainee(method=DenoisingAutoencoder.name, config=config.to_dict(), modules={"denoiser": network},
                   optimisers={"denoiser": optimiser}, step=step)


@register
class DAERecipe(Recipe):
    name = DenoisingAutoencoder.name
    help = "denoising autoencoder with coarse noise (Kascenas et al. 2022)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_loop_arguments(parser, learning_rate=1e-3)
        parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128], help="U-Net widths")
        parser.add_argument("--noise-std", type=float, default=DAEConfig.noise_std,
                            help="coarse noise strength, in the slices' normalised units")
        parser.add_argument("--noise-resolution", type=int, default=DAEConfig.noise_resolution,
                            help="noise grid size before upsampling")
        add_sign_argument(parser)

    @classmethod
    def fit(cls, args: argparse.Namespace, data: SliceSet | None, run_dir: Path, command: str) -> RunRecord:
        config = DAEConfig(widths=tuple(args.widths), noise_std=args.noise_std,
                           noise_resolution=args.noise_resolution, sign=args.sign)
        return train_from_args(lambda settings, device: dae_trainee(config, settings, device), args, data, run_dir,
                               command)

"""The networks SCRPS (Wei et al., MICCAI 2025) inverts with and measures by: the feature trunk of the StyleGAN2
discriminator, torchvision's VGG16 features (from a user's state dict), and the latent encoder (image -> W+ codes)
with its trunk. Each returns its feature taps, finest first."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..bundle import load_state_file
from ..errors import InputError
from .stylegan2 import DiscriminatorBlock, EqualConv2d, StyleGAN2Config


class DiscriminatorFeatures(nn.Module):
    """The StyleGAN2 discriminator's feature trunk (from-grey and the residual blocks, the same parameter names as
    :class:`~.stylegan2.Discriminator`, so its state dict loads as is). Taps: the from-grey output at full
    resolution, then each block's output (1/2, 1/4, ...)."""

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        ch = config.channels
        self.from_grey = EqualConv2d(1, ch[-1], 1)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(ch[level], ch[level - 1])
                                      for level in range(config.levels - 1, 0, -1)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = [self.from_grey(x)]
        for block in self.blocks:
            taps.append(block(taps[-1]))
        return taps


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's numbering
VGG16_CLASSIFIER = {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                    "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` (same module indices, so its state dict keys ``features.N.*`` load), up to
    relu5_3. A grey slice (our units: background 0, brain median 0.5) is divided by 1.5, copied to three channels
    and normalised with the ImageNet mean and standard deviation."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x / 1.5).expand(-1, 3, -1, -1) - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_TAPS:
                taps.append(x)
        return taps


def load_vgg16_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision VGG16 ``state_dict`` file (the whole model's, or its features
    alone), read without unpickling objects; an InputError names any missing, unexpected or misshapen key."""
    state = load_state_file(Path(path))
    expected = {k: tuple(v.shape) for k, v in VGG16Features().state_dict().items()}
    allowed = {**expected, **VGG16_CLASSIFIER}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(allowed))
    if missing or unexpected:
        raise InputError(f"{path} is not a torchvision VGG16 state_dict: "
                         + "; ".join(part for part in (
                             f"missing keys {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
                             if missing else "",
                             f"unexpected keys {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}"
                             if unexpected else "") if part))
    wrong = [f"{k} is {tuple(v.shape)}, VGG16 has {allowed[k]}" for k, v in state.items()
             if tuple(v.shape) != tuple(allowed[k])]
    if wrong:
        raise InputError(f"{path} is not a torchvision VGG16 state_dict: {'; '.join(wrong[:3])}")
    bad = [k for k in expected if not torch.isfinite(state[k].float()).all()]
    if bad:
        raise InputError(f"{path}: VGG16 weights {', '.join(bad[:3])} hold NaN or infinite values")
    return {k: state[k].float() for k in expected}


def stage_taps(stages: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every stage, each stage fed the one before's."""
    taps = []
    for stage in stages:
        x = stage(x)
        taps.append(x)
    return taps


class LatentEncoder(nn.Module):
    """Amortised inversion: slice (B, 1, H, W) -> W+ codes (B, L, w_dim) = ``w_mean`` + a predicted offset per code.
    A plain convolutional trunk (one level per generator level, stride-2 between levels) down to the generator's
    start size, then two fully connected layers; the last starts at zero, so an untrained encoder gives the mean w."""

    def __init__(self, config: StyleGAN2Config, widths: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        if len(widths) != config.levels:
            raise InputError(f"the encoder needs {config.levels} widths, not {len(widths)}")
        self.num_ws, self.w_dim = config.num_ws, config.w_dim
        stages = [nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1), nn.LeakyReLU(0.2),
                                nn.Conv2d(widths[0], widths[0], 3, padding=1), nn.LeakyReLU(0.2))]
        for level in range(1, config.levels):
            stages.append(nn.Sequential(nn.Conv2d(widths[level - 1], widths[level], 3, stride=2, padding=1),
                                        nn.LeakyReLU(0.2), nn.Conv2d(widths[level], widths[level], 3, padding=1),
                                        nn.LeakyReLU(0.2)))
        self.stages = nn.ModuleList(stages)
        start = config.start_size
        self.head = nn.Sequential(nn.Linear(widths[-1] * start[0] * start[1], hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, self.num_ws * self.w_dim))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("w_mean", torch.zeros(self.num_ws, self.w_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offsets = self.head(stage_taps(self.stages, x)[-1].flatten(1).float()).view(-1, self.num_ws, self.w_dim)
        return self.w_mean + offsets


class EncoderFeatures(nn.Module):
    """The encoder's trunk as a perceptual network (``kind: encoder``); taps at full, 1/2, 1/4, ... resolution."""

    def __init__(self, config: StyleGAN2Config, widths: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.stages = LatentEncoder(config, widths, hidden).stages

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return stage_taps(self.stages, x)

"""StyleGAN2 (Karras et al., CVPR 2020) in plain PyTorch, for SCRPS (Wei et al., "StyleGAN-based Brain MRI Anomaly
Detection via Latent Code Retrieval and Partial Swap", MICCAI 2025): the one definition of the networks, used by
training and by inference (GAN inversion into W+).

What follows StyleGAN2 and what we chose:

* **Mapping** z -> w: pixel norm of z, ``mapping_layers`` equalised fully connected layers with leaky ReLU and a
  learning-rate multiplier of 0.01; a running mean of w (``w_avg``) for truncation.
* **Synthesis** from a W+ latent (B, num_ws, w_dim): a learned constant at the start resolution (size / 2^(levels-1),
  e.g. 5 x 4 for 80 x 64), then per level a bilinear 2x upsampling and two modulated/demodulated 3x3 convolutions
  and a 1x1 ToRGB (one grey channel) whose outputs are summed over the levels (skip architecture). Style ``j`` drives
  convolution ``j`` and ToRGB ``l`` takes style ``2 l + 1`` (the next level's first convolution shares it), so
  ``num_ws = 2 * levels``: 10 at 80 x 64, 12 at 160 x 128 (the paper's L).
* **Modulation** is written in its non-fused form, conv(x * s, w) * d, which equals conv(x, w * s) * d with
  d = 1 / sqrt(sum (w s)^2) and runs as one ordinary (channels_last, bf16-friendly) convolution for the batch.
* **Noise**: each convolution takes an optional noise image scaled by a learned strength; SCRPS fixes the noise
  b = 0, which is the default (``noise=None``) and the only behaviour training uses.
* **Discriminator**: residual architecture (from-grey 1x1, per level two 3x3 convolutions with a 2x average-pool
  downsampling and a 1x1 skip, both scaled by sqrt(1/2)), minibatch standard deviation, 3x3 conv and two fully
  connected layers to one logit.
* Leaky ReLU (0.2) with gain sqrt(2) and equalised learning rate everywhere. Images are in the units of the core
  preprocessing (background 0, brain median about 0.5); no custom CUDA ops, the same code runs on CPU and GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..serialise import DictSerialisable

ACTIVATION_GAIN = math.sqrt(2.0)


@dataclass(frozen=True)
class StyleGAN2Config(DictSerialisable):
    """Shape of the networks; stored in the model card (``to_dict``/``from_dict``)."""

    required_keys: ClassVar[tuple[str, ...]] = ("size",)

    size: tuple[int, int] = (160, 128)  # rows (H), columns (W) of the generated slice
    levels: int = 6  # resolutions from size / 2^(levels-1) up to size
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr: float = 0.01  # learning-rate multiplier of the mapping network
    channel_base: int = 4096  # channels at level l: min(channel_max, channel_base >> l)
    channel_max: int = 512
    mbstd_group: int = 4  # minibatch-stddev group size of the discriminator

    def __post_init__(self) -> None:
        if self.levels < 1 or len(self.size) != 2:
            raise ValueError(f"need at least one level and a (H, W) size, not {self.levels}, {self.size}")
        if any(s % 2 ** (self.levels - 1) for s in self.size):
            raise ValueError(f"size {self.size} is not divisible by 2^{self.levels - 1}")

    @property
    def start_size(self) -> tuple[int, int]:
        return self.size[0] >> (self.levels - 1), self.size[1] >> (self.levels - 1)

    @property
    def channels(self) -> tuple[int, ...]:
        """Feature channels per level, lowest resolution first."""
        return tuple(max(1, min(self.channel_max, self.channel_base >> level)) for level in range(self.levels))

    @property
    def num_ws(self) -> int:
        """Number of style inputs of the synthesis network (the paper's L)."""
        return 2 * self.levels


PAPER = StyleGAN2Config()  # 160 x 128, 12 x 512 codes
REDUCED = StyleGAN2Config(size=(80, 64), levels=5, z_dim=256, w_dim=256, channel_base=512, channel_max=128)
TINY = StyleGAN2Config(size=(20, 16), levels=3, z_dim=16, w_dim=16, mapping_layers=2, channel_base=16,
                       channel_max=16, mbstd_group=2)
CONFIGS = {"paper": PAPER, "reduced": REDUCED, "tiny": TINY}


def leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * ACTIVATION_GAIN


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate (weights N(0, 1) scaled at run time)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_mul))
        self.weight_gain, self.lr_mul, self.activation = lr_mul / math.sqrt(in_features), lr_mul, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return leaky(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate; ``down`` average-pools 2x before convolving; output times ``gain``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, activation: bool = True,
                 down: bool = False, gain: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.activation, self.down, self.gain = activation, down, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        x = leaky(x) if self.activation else x
        return x * self.gain if self.gain != 1.0 else x


class ModulatedConv2d(nn.Module):
    """A StyleGAN2 synthesis layer: style-modulated (and demodulated) convolution, optional 2x bilinear upsampling
    before it, optional noise, bias and leaky ReLU. ToRGB is the same layer with a 1x1 kernel, no demodulation,
    no noise and no activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel: int = 3, up: bool = False,
                 demodulate: bool = True, activation: bool = True) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([])) if activation else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.up, self.demodulate, self.activation = up, demodulate, activation

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        styles = self.affine(w.float())  # (B, in)
        weight = self.weight * self.weight_gain
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.conv2d(x * styles.to(x.dtype)[:, :, None, None], weight, padding=weight.shape[-1] // 2)
        if self.demodulate:
            demod = torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8)  # (B, out)
            x = x * demod.to(x.dtype)[:, :, None, None]
        if noise is not None and self.noise_strength is not None:
            x = x + (noise * self.noise_strength).to(x.dtype)
        x = x + self.bias.to(x.dtype)[None, :, None, None]
        return leaky(x) if self.activation else x


class MappingNetwork(nn.Module):
    """z -> w: pixel norm, then ``mapping_layers`` equalised FC layers (lr multiplier ``mapping_lr``)."""

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        dims = [config.z_dim] + [config.w_dim] * config.mapping_layers
        self.layers = nn.Sequential(*(EqualLinear(a, b, lr_mul=config.mapping_lr, activation=True)
                                      for a, b in zip(dims[:-1], dims[1:])))
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.layers(z)


class SynthesisNetwork(nn.Module):
    """W+ latent (B, num_ws, w_dim) -> (B, 1, H, W) image."""

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        ch, w_dim = config.channels, config.w_dim
        self.num_ws = config.num_ws
        self.const = nn.Parameter(torch.randn(ch[0], *config.start_size))
        convs = [ModulatedConv2d(ch[0], ch[0], w_dim)]
        torgbs = [ModulatedConv2d(ch[0], 1, w_dim, kernel=1, demodulate=False, activation=False)]
        for level in range(1, config.levels):
            convs += [ModulatedConv2d(ch[level - 1], ch[level], w_dim, up=True),
                      ModulatedConv2d(ch[level], ch[level], w_dim)]
            torgbs.append(ModulatedConv2d(ch[level], 1, w_dim, kernel=1, demodulate=False, activation=False))
        self.convs, self.torgbs = nn.ModuleList(convs), nn.ModuleList(torgbs)

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``noise``: one (B or 1, 1, h, w) image per convolution, or None for the paper's b = 0."""
        if ws.shape[1] != self.num_ws:
            raise ValueError(f"expected {self.num_ws} style codes, got {ws.shape[1]}")
        noise = noise if noise is not None else [None] * len(self.convs)
        x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1).contiguous(memory_format=torch.channels_last)
        x = self.convs[0](x, ws[:, 0], noise[0])
        image = self.torgbs[0](x, ws[:, 1]).float()
        for level in range(1, len(self.torgbs)):
            for j in (2 * level - 1, 2 * level):
                x = self.convs[j](x, ws[:, j], noise[j])
            image = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
            image = image + self.torgbs[level](x, ws[:, 2 * level + 1]).float()
        return image


class Generator(nn.Module):
    """Mapping + synthesis; images in the units of the core preprocessing (background 0, brain median ~0.5)."""

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        self.config = config
        self.mapping_network = MappingNetwork(config)
        self.synthesis_network = SynthesisNetwork(config)

    @property
    def num_ws(self) -> int:
        return self.config.num_ws

    def mapping(self, z: torch.Tensor, truncation_psi: float = 1.0, w_avg_beta: float | None = None
                ) -> torch.Tensor:
        """(B, z_dim) -> W+ (B, num_ws, w_dim), w pulled toward ``w_avg`` by ``truncation_psi`` < 1.
        ``w_avg_beta`` (training only) moves the running mean of w toward this batch's mean."""
        w = self.mapping_network(z)
        if w_avg_beta is not None:
            with torch.no_grad():
                self.mapping_network.w_avg.copy_(w.detach().mean(dim=0).lerp(self.mapping_network.w_avg,
                                                                              w_avg_beta))
        if truncation_psi != 1.0:
            w = self.mapping_network.w_avg.lerp(w, truncation_psi)
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)

    def synthesis(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.synthesis_network(ws, noise)

    @torch.no_grad()
    def mean_w(self, n: int = 10000, seed: int = 0) -> torch.Tensor:
        """(num_ws, w_dim): the mean w over ``n`` random z (drawn from ``seed``), the usual start of an inversion."""
        device = self.mapping_network.w_avg.device
        z = torch.randn(n, self.config.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
        return self.mapping_network(z).mean(dim=0).unsqueeze(0).repeat(self.num_ws, 1)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi))


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3x3 convolutions (the second halves the resolution) plus a 1x1 skip, summed * sqrt(1/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        gain = math.sqrt(0.5)
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True, gain=gain)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False, down=True, gain=gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv1(self.conv0(x))


class Discriminator(nn.Module):
    """(B, 1, H, W) image -> (B,) realness logit."""

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__()
        ch = config.channels
        self.size = config.size
        self.from_grey = EqualConv2d(1, ch[-1], 1)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(ch[level], ch[level - 1])
                                      for level in range(config.levels - 1, 0, -1)))
        self.mbstd_group = config.mbstd_group
        self.conv = EqualConv2d(ch[0] + 1, ch[0], 3)
        self.fc = EqualLinear(ch[0] * config.start_size[0] * config.start_size[1], ch[0], activation=True)
        self.out = EqualLinear(ch[0], 1)

    def minibatch_stddev(self, x: torch.Tensor) -> torch.Tensor:
        """Append one channel: the standard deviation over groups of samples, averaged over features and pixels."""
        batch, channels, height, width = x.shape
        group = math.gcd(batch, self.mbstd_group)
        y = x.float().reshape(group, -1, channels, height, width)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B / group,)
        y = y.repeat(group).reshape(batch, 1, 1, 1).expand(-1, 1, height, width)
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) != tuple(self.size):
            raise ValueError(f"discriminator expects {self.size} images, got {tuple(image.shape[-2:])}")
        x = self.blocks(self.from_grey(image.contiguous(memory_format=torch.channels_last)))
        x = self.conv(self.minibatch_stddev(x))
        return self.out(self.fc(x.flatten(1).float())).squeeze(1)

"""PathoSCOPE (Chin et al.): few-shot pathology detection from a frozen feature extractor, a trainable feature adapter
and a discriminator giving a pathology score per feature location (paper Sections 2.1-2.4).

Inference (this module): slice -> frozen ResNet18 trunk (layer2 + layer3, aggregated, ``backbone.aggregate``) ->
standardised embedding -> adapter -> discriminator -> sigmoid pathology map on the feature grid, upsampled to the
model grid, Gaussian-smoothed, kept inside the brain. Slice score = maximum of the map inside the brain (paper 2.1).
Its fit (the anchor bank, synthetic pathologies, Tritanh losses and PiEG) is in ``fit.py`` beside this file.

Choices the paper leaves open, made here:
- Backbone: ImageNet weights cannot be downloaded here, so a user's torchvision ResNet18 state dict is loaded when
  given (``backbone.load_resnet18_state``), and the default is the trunk with torchvision's random initialisation
  (seeded; stored in the bundle like every other weight). On lgg_flair val it beat a ResNet18 pretrained here with
  SimCLR on healthy lgg_flair + ixi_t1 training slices (voxel AUROC 0.92 against 0.40 at K = 2,
  docs/analysis/pathoscope_choices.md). A plausible reason: random convolutions keep local intensity and texture,
  which is what tells a FLAIR lesion apart, while contrastive pretraining teaches invariance to intensity changes.
- The model-grid slice (128 x 128) is resized to ``backbone_size`` (256) for the backbone, so layer2 gives a 32 x 32
  feature grid, and repeated to 3 channels after ``(x - input_mean) / input_std``.
- Each feature channel is standardised with the reference shots' statistics and the vector divided by sqrt(384) (the
  few-shot fit then rescales it, see ``fit``).
- Adapter: one linear layer 384 -> 384 initialised to the identity (so adapted embeddings start in the anchor bank's
  space). Discriminator: linear 384 -> ``hidden``, LeakyReLU(0.2), linear -> 1, without batch normalisation (PiEG
  runs it many times per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...bundle import Bundle
from ...errors import InputError
from ...serialise import DictSerialisable
from ...networks.resnet18 import FEATURE_CHANNELS, ResNet18Trunk, aggregate
from ...progress import CancelCallback, ProgressCallback
from ..base import AnomalyMethod, ReferenceFit, SliceResult
from ..registry import register
from ..common import load_module
from ..runtime import autocast_for


MIN_REFERENCES = 2  # distinct healthy reference volumes a fit needs


@dataclass(frozen=True)
class PathoSCOPEConfig(DictSerialisable):
    """Network and map settings; stored in the model card (the fit's settings sit beside them under ``fit``)."""

    backbone_size: int = 256
    input_mean: float = 0.45
    input_std: float = 0.25
    neighbourhood: int = 3
    hidden: int = 384
    map_sigma_px: float = 2.0  # Gaussian smoothing of the upsampled map, in model-grid pixels
    backbone: str = "random"  # provenance of the trunk's weights, e.g. "random (seed 0)" or a file name

    ignored_keys: ClassVar[tuple[str, ...]] = ("fit",)


class Embedder(nn.Module):
    """Frozen trunk + aggregation + per-channel standardisation: (B, H, W) slices -> (B, h, w, 384) embeddings."""

    def __init__(self, config: PathoSCOPEConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = ResNet18Trunk()
        self.register_buffer("feature_mean", torch.zeros(FEATURE_CHANNELS))
        self.register_buffer("feature_std", torch.ones(FEATURE_CHANNELS))
        self.requires_grad_(False)
        self.eval()

    def raw(self, slices: torch.Tensor) -> torch.Tensor:
        """Aggregated trunk features (B, h, w, 384) before standardisation (float32)."""
        size = self.config.backbone_size
        x = F.interpolate(slices.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False)
        x = ((x - self.config.input_mean) / self.config.input_std).expand(-1, 3, -1, -1)
        device = slices.device
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device):
            features = aggregate(*self.trunk(x), self.config.neighbourhood)
        return features.float().permute(0, 2, 3, 1).contiguous()

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std / math.sqrt(FEATURE_CHANNELS)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.raw(slices))


class Adapter(nn.Module):
    """The trainable feature adapter f: one linear map of each embedding, starting as the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURE_CHANNELS, FEATURE_CHANNELS)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(FEATURE_CHANNELS))
            self.linear.bias.zero_()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)


class Discriminator(nn.Module):
    """D: an embedding (..., 384) -> pathology logit (...)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURE_CHANNELS, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings).squeeze(-1)


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, H, W) maps (reflect padding)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(round(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def pathology_map(logits: torch.Tensor, size: tuple[int, int], mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, h, w) discriminator logits -> (B, H, W) sigmoid map on the model grid, smoothed, inside ``mask``."""
    upsampled = F.interpolate(torch.sigmoid(logits.float()).unsqueeze(1), size=size, mode="bilinear",
                              align_corners=False).squeeze(1)
    return gaussian_smooth(upsampled, sigma) * mask


@register
class PathoSCOPE(AnomalyMethod):
    """The few-shot method behind the plug-in interface."""

    name: ClassVar[str] = "pathoscope"
    Config = PathoSCOPEConfig
    weights: ClassVar[tuple[str, ...]] = ("embedder", "adapter", "discriminator")
    # Its sigmoid maps sit at a level that moves from volume to volume and scanner to scanner: thresholds only
    # transfer in units of the volume's own spread (docs/analysis/operating_points.md).
    map_normalisation: ClassVar[str] = "volume"
    min_references: ClassVar[int] = MIN_REFERENCES

    def __init__(self, config: PathoSCOPEConfig, embedder: Embedder, adapter: Adapter, discriminator: Discriminator,
                 device: torch.device) -> None:
        super().__init__(config, device)
        self.embedder = embedder.to(device).eval()
        self.adapter = adapter.to(device).eval()
        self.discriminator = discriminator.to(device).eval()
        if device.type == "cpu":
            self.embedder.trunk.to(memory_format=torch.channels_last)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "PathoSCOPE":
        config = cls.configure(bundle.card.hyperparameters)
        if config.backbone_size % 32:
            raise InputError(f"PathoSCOPE backbone size {config.backbone_size} is not a multiple of 32")
        return cls(config, load_module(Embedder(config), bundle, "embedder"), load_module(Adapter(), bundle, "adapter"),
                   load_module(Discriminator(config.hidden), bundle, "discriminator"), device)

    @torch.no_grad()
    def logits(self, slices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) slices -> (B, h, w) pathology logits on the feature grid."""
        embeddings = self.embedder(slices.to(self.device, torch.float32))
        return self.discriminator(self.adapter(embeddings)).float()

    @classmethod
    def check_reference_options(cls, **options) -> None:
        from .fit import check_fit_options  # the fit builds on this module

        check_fit_options(**options)

    @classmethod
    def fit_references(cls, slices: torch.Tensor, masks: torch.Tensor, reference_ids: list[str],
                       progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
                       **options) -> ReferenceFit:
        """Options: ``settings`` (``fit.FewShotSettings``), ``config`` (:class:`PathoSCOPEConfig`), ``backbone``
        (a torchvision ResNet18 state dict file) and ``texture_dir`` (extra textures for synthetic lesions)."""
        from .fit import fit_to_references

        return fit_to_references(slices, masks, reference_ids, progress, cancel, **options)

    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        mask = mask.to(self.device, torch.float32)
        maps = pathology_map(self.logits(slices), tuple(slices.shape[-2:]), mask, self.config.map_sigma_px)
        scores = maps.flatten(1).max(dim=1).values
        return SliceResult(maps=maps.cpu(), scores=scores.cpu())

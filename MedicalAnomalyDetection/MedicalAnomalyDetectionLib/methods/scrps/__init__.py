"""SCRPS (Wei et al., "StyleGAN-based Brain MRI Anomaly Detection via Latent Code Retrieval and Partial Swap", MICCAI
2025): StyleGAN latent-code retrieval and partial swap. A test slice is inverted into W+ (Eq. 1), its codes are matched against a repository of
healthy codes (coarse on the first L1 codes, fine on the rest, Eqs. 3-4), the retrieved codes are combined with
similarity weights, the codes from layer L2 on are swapped for that combination (Eq. 5), and the generator's image of
the swapped codes is compared with the slice by a normalised perceptual score.

What follows the paper, and what we chose where it is silent or where training on a CPU forced a choice:

* **Inversion** (Eq. 1): Adam on the W+ codes, loss = perceptual (Eq. 2: sum over feature taps of the squared
  feature difference over the tap's pixel count, with the features of the paper's reference [31], LPIPS:
  unit-normalised over channels) + ``lambda_mse`` (10) x mean squared pixel error, noise fixed at zero. The
  paper starts at the mean w and runs 2,000 steps (lr 0.01). We start from a trained **encoder** (amortised
  inversion, image -> W+, :class:`LatentEncoder`) and refine for ``refine_steps`` steps; ``init: mean`` gives the
  paper's start. Slices are inverted all at once: the loss is a sum over slices and Adam works per
  coordinate, so a batch gives the codes each slice would get alone (up to floating-point rounding). Constant
  learning rate, so a run of S steps passes through the codes of every shorter run (the steps-versus-quality study
  records snapshots). Inversion runs under the training autocast (bf16 or fp32, never fp16 without loss scaling).
* **Repository**: codes of healthy training slices, inverted from the encoder's codes like test slices, with the
  recipe's ``--repository-steps`` Eq. 1 steps (the bundled one: 10; its test slices get ``refine_steps`` = 0, chosen
  on validation data after the repository was built). Stored in the bundle as ``repository.codes`` (K, L, w_dim).
* **Retrieval** (Eqs. 3-4): cosine similarity of the flattened first ``l1`` codes -> top ``k1`` candidates; cosine
  similarity of the remaining codes among those -> top ``k2``; weights = those fine similarities divided by their
  sum (the equation after Eq. 4; similarities below 0 count as 0). ``retrieval: one-stage`` is the Fig. 3a ablation
  (top ``k2`` by the similarity of the whole code); ``retrieval: none`` reconstructs the slice from its own codes
  (plain inversion, the "no retrieval" ablation). K1 and K2 are capped at the repository size.
* **Swap** (Eq. 5): codes ``0 .. l2-1`` from the test slice, ``l2 .. L-1`` from the combination. ``l2 = 0`` is "no
  swap" (the paper's Fig. 3b L2 = 0: the image of the combination alone), ``l2 = L`` keeps the test codes (plain
  inversion, no retrieval). Defaults scaled to the configured L: ``l1 = round(L / 2)``, ``l2 = L - 3`` (the codes
  of the finest resolution, as codes 9-11 of 12 are in the paper's 160 x 128 network): 6 and 9 for L = 12, 5 and 7
  for L = 10.
* **Map**: the normalised perceptual score of Zhang et al. (LPIPS without learned weights): each tap's features
  unit-normalised over channels, squared differences summed over channels, upsampled bilinearly to the slice,
  averaged over the ``map_layers`` taps; inside the brain mask (the reconstruction is masked by the slice's brain
  mask first, so the brain outline itself is not a difference).
* **Slice score**: the repository's shared patch ranking (``scoring.slice_scores``, Eq. 5 of the Patch-GAN paper)
  of the map, i.e. 1.1 x the mean map value of the most anomalous brain patch + 1.0 x that of the next one, with
  ``ranking.patch`` pixels per patch; the volume score is, as for every method, the highest eligible slice score.
* **Perceptual network**: ImageNet VGG16 cannot be downloaded here. ``kind: vgg16`` takes a user's torchvision
  VGG16 ``state_dict`` (checked key by key and shape by shape, read with ``weights_only=True``); the shipped default
  ``kind: discriminator`` uses the feature trunk of the StyleGAN2 discriminator trained on the same healthy slices
  (why: docs/scrps/choices.md, made by docs/scrps/scrps_choices.py). ``kind: encoder`` uses the encoder's trunk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ...bundle import Bundle
from ...errors import InputError
from ...networks.perceptual import VGG16_TAPS, DiscriminatorFeatures, EncoderFeatures, LatentEncoder, VGG16Features
from ...networks.stylegan2 import Generator, StyleGAN2Config
from ...scoring import PatchRanking, slice_scores
from ...serialise import DictSerialisable
from ..base import AnomalyMethod, SliceResult
from ..common import load_module, smooth
from ..registry import register
from ..runtime import autocast_for
from .inversion import Retrieved, invert, perceptual_map, retrieve, swap

PERCEPTUAL_KINDS = ("discriminator", "vgg16", "encoder")
RETRIEVALS = ("coarse-to-fine", "one-stage", "none")
INITS = ("encoder", "mean")


def scaled_layers(num_ws: int) -> tuple[int, int]:
    """The paper's L1 = 6 and L2 = 9 of L = 12, scaled to ``num_ws`` codes: (round(L / 2), L - 3)."""
    return max(1, round(num_ws / 2)), max(0, num_ws - 3)


def default_map_layers(kind: str, levels: int) -> tuple[int, ...]:
    """Feature taps of the map: for the paper's VGG16 its last three blocks; for our trunks (one tap per generator
    level: full, 1/2, 1/4, 1/8, 1/16 of an 80 x 64 slice at 2.4 mm) the taps whose cells are as large in millimetres
    as the paper's (1/4, 1/8 and 1/16 of a 160 x 128 slice at about 1.2 mm): 1/2, 1/4 and 1/8 (those that exist)."""
    return (2, 3, 4) if kind == "vgg16" else tuple(tap for tap in (1, 2, 3) if tap < levels) or (0,)


def tap_count(config: "SCRPSConfig") -> int:
    return len(VGG16_TAPS) if config.perceptual == "vgg16" else config.gan.levels


@dataclass(frozen=True)
class SCRPSConfig(DictSerialisable):
    """Everything SCRPS needs besides its weights; stored in the model card."""

    required_keys: ClassVar[tuple[str, ...]] = ("gan", "ranking", "encoder_widths")

    gan: StyleGAN2Config = field(default_factory=StyleGAN2Config)
    perceptual: str = "discriminator"  # PERCEPTUAL_KINDS
    map_layers: tuple[int, ...] | None = None  # None: default_map_layers(perceptual)
    encoder_widths: tuple[int, ...] = (32, 64, 128, 128, 128)  # one per generator level
    encoder_hidden: int = 512
    lambda_mse: float = 10.0
    init: str = "encoder"  # INITS
    refine_steps: int = 20  # Eq. 1 steps after the encoder at test time
    refine_lr: float = 0.01
    k1: int = 100
    k2: int = 20
    l1: int | None = None  # None: scaled_layers(L)[0]
    l2: int | None = None  # None: scaled_layers(L)[1]; 0: no swap
    retrieval: str = "coarse-to-fine"  # RETRIEVALS
    map_smoothing: int = 1  # box filter (px) of the map; 1: none
    ranking: PatchRanking = PatchRanking(patch=16, stride=8)

    def __post_init__(self) -> None:
        L = self.gan.num_ws
        if self.perceptual not in PERCEPTUAL_KINDS:
            raise InputError(f"perceptual network must be one of {PERCEPTUAL_KINDS}, not {self.perceptual!r}")
        if self.retrieval not in RETRIEVALS:
            raise InputError(f"retrieval must be one of {RETRIEVALS}, not {self.retrieval!r}")
        if self.init not in INITS:
            raise InputError(f"init must be one of {INITS}, not {self.init!r}")
        if not 1 <= self.layer1 < L:
            raise InputError(f"L1 = {self.layer1} must lie in 1 .. {L - 1} for a generator with L = {L} codes")
        if not 0 <= self.layer2 <= L:
            raise InputError(f"L2 = {self.layer2} must lie in 0 .. {L} for a generator with L = {L} codes")
        if self.k1 < 1 or self.k2 < 1 or self.k2 > self.k1:
            raise InputError(f"need 1 <= K2 <= K1, not K1 = {self.k1}, K2 = {self.k2}")
        if self.refine_steps < 0 or not self.refine_lr > 0 or not self.lambda_mse >= 0:
            raise InputError("refine_steps must be >= 0, refine_lr > 0 and lambda_mse >= 0")
        if not self.taps_for_map or not all(0 <= tap < tap_count(self) for tap in self.taps_for_map):
            raise InputError(f"map layers {list(self.taps_for_map)} must be taps 0 .. {tap_count(self) - 1} of the "
                             f"{self.perceptual} network")
        if len(self.encoder_widths) != self.gan.levels:
            raise InputError(f"the encoder needs one width per generator level ({self.gan.levels}), "
                             f"not {len(self.encoder_widths)}")

    @property
    def layer1(self) -> int:
        return scaled_layers(self.gan.num_ws)[0] if self.l1 is None else self.l1

    @property
    def layer2(self) -> int:
        return scaled_layers(self.gan.num_ws)[1] if self.l2 is None else self.l2

    @property
    def taps_for_map(self) -> tuple[int, ...]:
        return default_map_layers(self.perceptual, self.gan.levels) if self.map_layers is None \
            else tuple(self.map_layers)

    @property
    def inversion_key(self) -> str:
        """What the codes of an inverted slice depend on (besides the weights): the inversion cache's key."""
        return f"{self.perceptual}|{self.init}|{self.refine_lr}|{self.lambda_mse}"

    def to_dict(self) -> dict:
        """The settings with the layers that default from the generator's size written out."""
        return {**super().to_dict(), "map_layers": list(self.taps_for_map), "l1": self.layer1, "l2": self.layer2}


def perceptual_network(config: SCRPSConfig) -> nn.Module:
    if config.perceptual == "vgg16":
        return VGG16Features()
    if config.perceptual == "encoder":
        return EncoderFeatures(config.gan, config.encoder_widths, config.encoder_hidden)
    return DiscriminatorFeatures(config.gan)


# ------------------------------------------------------------------------------------------------------- the method

class InversionCache:
    """Codes of slices already inverted, by (slice content, inversion settings, steps): lets the ablations and the
    steps study re-use one inversion per slice (``method.inversion_cache = InversionCache()``). Each inversion also
    keeps the codes at ``snapshots`` steps on the way (exact, as the learning rate is constant)."""

    def __init__(self, snapshots: tuple[int, ...] = (0, 5, 10, 20, 50, 100)) -> None:
        self.snapshots = snapshots
        self.codes: dict[tuple[str, str, int], torch.Tensor] = {}

    @staticmethod
    def key(slice_: torch.Tensor) -> str:
        return hashlib.sha1(slice_.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


@register
class SCRPS(AnomalyMethod):
    """SCRPS behind the method interface (see the module docstring)."""

    name: ClassVar[str] = "scrps"
    Config = SCRPSConfig
    weights: ClassVar[tuple[str, ...]] = ("generator", "encoder", "perceptual", "repository")
    # The paper's Fig. 3 ablations (valid for any generator with L >= 6 codes); K1 = 5 K2 when K2 varies, as in the
    # paper. Refinement steps are our own study (docs/scrps/choices.md).
    ablations: ClassVar[dict[str, dict]] = {
        "K2=5 (K1=25)": {"k1": 25, "k2": 5}, "K2=10 (K1=50)": {"k1": 50, "k2": 10},
        "one-stage retrieval": {"retrieval": "one-stage"}, "L2=0 (swap off)": {"l2": 0}, "L2=3": {"l2": 3},
        "L2=5": {"l2": 5}, "no retrieval (plain inversion)": {"retrieval": "none"},
        "0 steps": {"refine_steps": 0}, "5 steps": {"refine_steps": 5}, "50 steps": {"refine_steps": 50},
    }

    def __init__(self, config: SCRPSConfig, generator: Generator, encoder: LatentEncoder, features: nn.Module,
                 repository: torch.Tensor, device: torch.device) -> None:
        super().__init__(config, device)
        self.G = generator.to(device).eval().requires_grad_(False)
        self.encoder = encoder.to(device).eval().requires_grad_(False)
        self.features = features.to(device).eval().requires_grad_(False)
        self.repository = check_repository(repository, config.gan).to(device)
        self.inversion_cache: InversionCache | None = None
        # The network the map is made with, when a study compares others than the inversion's (docs/scrps).
        self.map_features: nn.Module | None = None
        self._mean_w: torch.Tensor | None = None

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "SCRPS":
        config = cls.configure(bundle.card.hyperparameters)
        generator = load_module(Generator(config.gan), bundle, "generator")
        encoder = load_module(LatentEncoder(config.gan, config.encoder_widths, config.encoder_hidden), bundle,
                              "encoder")
        features = load_module(perceptual_network(config), bundle, "perceptual")
        repository = (bundle.state_dict or {}).get("repository.codes")
        if repository is None:
            raise InputError(f"model {bundle.card.name} has no latent repository (repository.codes) in its weights")
        return cls(config, generator, encoder, features, repository, device)

    def autocast(self):
        return autocast_for(self.device)

    def start_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Where the inversion starts: the encoder's codes, or the mean w (the paper)."""
        if self.config.init == "encoder":
            with torch.no_grad(), self.autocast():
                return self.encoder(x).float()
        if self._mean_w is None:
            self._mean_w = self.G.mean_w().float()
        return self._mean_w.unsqueeze(0).expand(x.shape[0], -1, -1)

    def invert(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """W+ codes (B, L, D) of the (B, 1, H, W) slices, through the inversion cache when one is set."""
        steps = self.config.refine_steps if steps is None else steps
        cache = self.inversion_cache
        if cache is None:
            return self._invert(x, steps, ())[steps]
        keys = [(InversionCache.key(s), self.config.inversion_key, steps) for s in x]
        todo = [i for i, key in enumerate(keys) if key not in cache.codes]
        if todo:
            kept = self._invert(x[todo], steps, tuple(s for s in cache.snapshots if s < steps))
            for j, i in enumerate(todo):
                for step, codes in kept.items():
                    cache.codes[(keys[i][0], keys[i][1], step)] = codes[j].cpu()
        return torch.stack([cache.codes[key] for key in keys]).to(self.device)

    def _invert(self, x: torch.Tensor, steps: int, snapshots: tuple[int, ...]) -> dict[int, torch.Tensor]:
        return invert(self.G, self.features, x, self.start_codes(x), steps, self.config.refine_lr,
                      self.config.lambda_mse, snapshots, lambda: autocast_for(self.device, training=True))

    def reconstruct(self, codes: torch.Tensor) -> tuple[torch.Tensor, Retrieved | None]:
        """The pseudo-healthy image G(swapped codes), (B, 1, H, W), and what was retrieved (None without
        retrieval: the image of the slice's own codes)."""
        cfg = self.config
        found = None if cfg.retrieval == "none" else retrieve(codes, self.repository, cfg.k1, cfg.k2, cfg.layer1,
                                                               cfg.retrieval)
        with torch.no_grad(), self.autocast():
            image = self.G.synthesis(codes if found is None else swap(codes, found.codes, cfg.layer2)).float()
        return image, found

    def anomaly_map(self, x: torch.Tensor, image: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """(B, H, W) perceptual map of slices ``x`` against their pseudo-healthy ``image``, inside ``brain``."""
        features = self.map_features if self.map_features is not None else self.features
        with torch.no_grad(), self.autocast():
            taps_x, taps_r = features(x), features(image)
        maps = perceptual_map(taps_x, taps_r, self.config.taps_for_map, tuple(x.shape[-2:]))
        return smooth(maps * brain, brain, self.config.map_smoothing)

    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        x = slices.to(self.device, torch.float32).unsqueeze(1)
        if not torch.isfinite(x).all():
            raise InputError("SCRPS: the slices hold NaN or infinite values")
        brain = mask.to(self.device, torch.float32)
        image, _ = self.reconstruct(self.invert(x))
        maps = self.anomaly_map(x, image * brain.unsqueeze(1), brain)
        if not torch.isfinite(maps).all():
            raise InputError("SCRPS: the anomaly map is not finite (the reconstruction diverged); nothing was written")
        scores = slice_scores(maps.clamp_min(0).sqrt(), brain, self.config.ranking)
        return SliceResult(maps=maps.cpu(), scores=scores.cpu())


def check_repository(codes: torch.Tensor, gan: StyleGAN2Config) -> torch.Tensor:
    """The repository as float32 (K, L, w_dim), or an InputError saying how it does not match the generator."""
    if not isinstance(codes, torch.Tensor) or codes.ndim != 3:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise InputError(f"latent repository must be a (K, L, w_dim) tensor, not {shape}")
    if codes.shape[0] < 1:
        raise InputError("latent repository is empty")
    if tuple(codes.shape[1:]) != (gan.num_ws, gan.w_dim):
        raise InputError(f"latent repository holds {codes.shape[1]} x {codes.shape[2]} codes, but the generator "
                         f"takes L = {gan.num_ws} codes of w_dim = {gan.w_dim}: it belongs to another generator")
    if not torch.isfinite(codes.float()).all():
        raise InputError("latent repository holds NaN or infinite codes")
    return codes.float()


__all__ = ["SCRPS", "SCRPSConfig", "DiscriminatorFeatures", "VGG16Features", "LatentEncoder", "EncoderFeatures",
           "InversionCache", "Retrieved", "check_repository", "cosine", "invert", "inversion_loss",
           "load_vgg16_state", "perceptual_loss", "perceptual_map", "perceptual_network", "retrieve",
           "scaled_layers", "swap"]

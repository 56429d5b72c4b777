"""Patch-GAN with targeted patch ranking (Chen, Yang et al., "Unsupervised Patch-GAN with Targeted Patch Ranking for
Fine-Grained Novelty Detection in Medical Imaging", AAAI 2025).

What the paper fixes, and what we chose where it is silent (the model card repeats the chosen values):

* **Masked-image reconstructor R** (Eq. 1): a small U-Net-style encoder-decoder. Its input is the slice with square
  holes zeroed plus the hole indicator (2 channels); it outputs the whole slice. Holes are a checkerboard of
  ``hole`` x ``hole`` blocks (32 px at 128^2, larger than most lesions so a lesion cannot be in-painted from itself)
  with a random phase and a random shift in training.
* **Inference sees every pixel reconstructed from context**: the hole family is evaluated for both checkerboard
  phases and for each shift in ``inference_shifts``; every pixel is a hole in exactly ``len(inference_shifts)`` of
  those passes and its reconstruction is the mean of R's output over them. The residual is x - x_hat; the map keeps
  the modality's sign (FLAIR lesions are bright: positive part) and is box-smoothed by ``map_smoothing`` px (7 by
  default: on lgg_flair val, voxel AUROC rose with the box from 1 to 9 px; 7 px = 13 mm is our compromise with the
  few-mm lesions of MS).
* **PatchGAN discriminator D** (Eq. 2-3): four convolutions whose receptive field is ~38 px, i.e. one logit per
  ~32 x 32 patch; it sees an image and the hole indicator and tells real patches from in-painted ones (the fake is
  x outside the holes, R(z) inside, so only in-painted content can give it away). Trained with the standard GAN loss
  (Eq. 3, non-saturating form for R).
* **Total loss for R** (Eq. 4): lambda * L_R + L_D with lambda = 0.2, where L_R is the mean squared error over the
  whole slice (Eq. 1) and L_D the patch-wise squared discrepancy (Eq. 2) taken over the holes, plus
  ``adv_weight`` times R's adversarial term (the paper gives no weight for it; 0.05 keeps training stable).
* **Score** (Eq. 5): see :class:`..scoring.PatchRanking` (32 x 32 patches, stride 16, weights 1.1, 1.0).
* **Optional uncertainty head** (``uncertainty``, our addition, off in the paper's setting): R also predicts a
  per-pixel log-variance s of its in-painting error, trained with the Gaussian negative log-likelihood of the
  detached residual (weight ``uncertainty_weight``), so R's mean follows the paper's losses. The map is then the
  residual divided by sigma (the root of the mean predicted variance over the passes): roughly a z-score, which
  discounts what healthy anatomy makes hard to in-paint (cortex, ventricle borders, the ends of the brain) -- the
  learned form of dividing focal by diffuse error.
* **Optional intensity prior** (``intensity_prior``, our addition): the map becomes the geometric mean of the learned
  map and the intensity's own signed deviation from the brain median (0.5 after percentile normalisation) divided by
  ``intensity_prior`` (the training slices' robust brain spread). A voxel must both look unlike what the context
  predicts and be abnormally bright (FLAIR) to score high: the in-painting residual alone also lights up dark CSF
  and cortex, and the intensity alone lights up every bright normal structure. Chosen on the validation splits
  (docs/analysis/patchgan_choices.md); the ablation "no intensity prior" measures what it buys. Slice scores stay
  those of the learned map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..bundle import Bundle
from ..errors import InputError
from ..scoring import PatchRanking, slice_scores
from ..networks.unet import Reconstructor
from ..serialise import DictSerialisable
from .base import AnomalyMethod, SliceResult
from .common import load_module, signed_residual, smooth
from .registry import register
from .runtime import autocast_for


@dataclass(frozen=True)
class PatchGANConfig(DictSerialisable):
    """Hyper-parameters of the networks and of inference; stored in the model card."""

    required_keys: ClassVar[tuple[str, ...]] = ("widths", "disc_widths", "hole", "inference_shifts", "sign",
                                                 "map_smoothing", "ranking")

    widths: tuple[int, ...] = (16, 32, 64, 128)
    disc_widths: tuple[int, ...] = (32, 64, 128)
    hole: int = 32
    inference_shifts: tuple[int, ...] = (0, 16)
    sign: str = "positive"
    map_smoothing: int = 7
    ranking: PatchRanking = PatchRanking()
    uncertainty: bool = False
    intensity_prior: float = 0.0  # > 0: combine the map with the intensity prior, this being the brain's spread

    def __post_init__(self) -> None:
        if self.map_smoothing < 1 or self.map_smoothing % 2 == 0:
            raise ValueError(f"map smoothing must be an odd number of pixels, not {self.map_smoothing}")


# Where the percentile normalisation puts the brain's median intensity (card.Preprocessing: p1 -> 0, median -> 0.5).
BRAIN_MEDIAN = 0.5
# Bounds of the predicted log-variance: sigma between 0.01 and 7.4 in normalised intensity units.
LOG_VAR_RANGE = (-9.2, 4.0)


def checkerboard_holes(height: int, width: int, hole: int, phase: torch.Tensor, shift_y: torch.Tensor,
                       shift_x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float hole indicators: blocks of ``hole`` px in a checkerboard, per-sample phase and shift."""
    device = phase.device
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    block_y = torch.div(rows + shift_y.view(-1, 1, 1), hole, rounding_mode="floor")
    block_x = torch.div(cols + shift_x.view(-1, 1, 1), hole, rounding_mode="floor")
    return ((block_y + block_x + phase.view(-1, 1, 1)) % 2).unsqueeze(1).float()


def inference_holes(height: int, width: int, config: PatchGANConfig, device: torch.device) -> torch.Tensor:
    """The (M, 1, H, W) hole set used at inference: both phases for each shift; every pixel is a hole len(shifts)x."""
    phases, shifts = [], []
    for shift in config.inference_shifts:
        for phase in (0, 1):
            phases.append(phase)
            shifts.append(shift)
    phase_t = torch.tensor(phases, device=device)
    shift_t = torch.tensor(shifts, device=device)
    return checkerboard_holes(height, width, config.hole, phase_t, shift_t, shift_t)


@register
class PatchGAN(AnomalyMethod):
    """The flagship method: masked reconstruction residuals scored with targeted patch ranking."""

    name: ClassVar[str] = "patchgan"
    Config = PatchGANConfig
    weights: ClassVar[tuple[str, ...]] = ("reconstructor",)
    ablations: ClassVar[dict[str, dict]] = {"ranking off": {"ranking": {"ranking": False}},
                                            "top-2 ranking": {"ranking": {"weights": [1.1, 1.0], "rest_weight": 0.0}},
                                            "no intensity prior": {"intensity_prior": 0.0}}

    def __init__(self, config: PatchGANConfig, reconstructor: Reconstructor, device: torch.device) -> None:
        super().__init__(config, device)
        self.reconstructor = reconstructor.to(device).eval()
        if device.type == "cpu":
            self.reconstructor = self.reconstructor.to(memory_format=torch.channels_last)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "PatchGAN":
        config = cls.configure(bundle.card.hyperparameters)
        if config.intensity_prior and bundle.card.preprocessing.normalisation != "percentile":
            raise InputError(f"model {bundle.card.name}: the intensity prior assumes the percentile normalisation "
                             f"(brain median at {BRAIN_MEDIAN}), not {bundle.card.preprocessing.normalisation!r}")
        reconstructor = load_module(Reconstructor(config.widths, config.uncertainty), bundle, "reconstructor")
        return cls(config, reconstructor, device)

    @torch.no_grad()
    def reconstruct(self, slices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """In-paint every pixel of (B, H, W) slices from context: (B, H, W) float32 reconstructions and, with the
        uncertainty head, their (B, H, W) standard deviations (else None)."""
        batch, height, width = slices.shape
        holes = inference_holes(height, width, self.config, self.device)  # (M, 1, H, W)
        count = holes.shape[0]
        x = slices.to(self.device, torch.float32).unsqueeze(1)
        x_rep = x.repeat_interleave(count, dim=0)
        holes_rep = holes.repeat(batch, 1, 1, 1)
        masked, holes_in = x_rep * (1 - holes_rep), holes_rep
        if self.device.type == "cpu":
            masked = masked.contiguous(memory_format=torch.channels_last)
            holes_in = holes_in.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device):
            out = self.reconstructor(masked, holes_in)
        out = out.float().view(batch, count, -1, height, width)
        weights = holes.view(1, count, height, width)
        total = weights.sum(dim=1).clamp_min(1)
        mean = (out[:, :, 0] * weights).sum(dim=1) / total
        if not self.config.uncertainty:
            return mean, None
        variance = (out[:, :, 1].clamp(*LOG_VAR_RANGE).exp() * weights).sum(dim=1) / total
        return mean, variance.sqrt()

    def learned_map(self, slices: torch.Tensor, reconstruction: torch.Tensor, sigma: torch.Tensor | None,
                    mask: torch.Tensor) -> torch.Tensor:
        """Signed residual (divided by sigma with the uncertainty head), smoothed, inside the mask."""
        residual = signed_residual(slices - reconstruction, self.config.sign) * mask
        if sigma is not None:
            residual = residual / sigma
        return smooth(residual, mask, self.config.map_smoothing)

    def with_prior(self, learned: torch.Tensor, slices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The geometric mean of the learned map and the intensity's deviation from the brain median (in units of
        ``intensity_prior``, the training brain's spread); the learned map itself without a prior."""
        if not self.config.intensity_prior:
            return learned
        prior = signed_residual(slices - BRAIN_MEDIAN, self.config.sign) / self.config.intensity_prior * mask
        return torch.sqrt(learned * prior)

    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        """Maps with the intensity prior where the card asks for it; slice scores always from the learned map (the
        prior would add every bright normal structure to the slice-level evidence)."""
        slices = slices.to(self.device, torch.float32)
        mask = mask.to(self.device, torch.float32)
        learned = self.learned_map(slices, *self.reconstruct(slices), mask)
        maps = self.with_prior(learned, slices, mask)
        return SliceResult(maps=maps.cpu(), scores=slice_scores(learned, mask, self.config.ranking).cpu(),
                           evidence=learned.cpu() if maps is not learned else None)

"""Fitting PathoSCOPE to a few healthy reference slices (paper Sections 2.2-2.4), fast enough for a CPU.

1. The frozen embedder sees every reference slice (and its mirror image); its channel statistics standardise the
   embeddings, and a greedy coreset of the brain's embeddings is the prototypical anchor bank Phi_A.
2. A pool of ``pool`` augmented healthy slices (affine + elastic) and their local pathological versions (textures
   under Perlin masks, ``synthesis``) is embedded once: the backbone is frozen, so its features are cached and the
   training steps only run the adapter and the discriminator.
3. Each step draws a batch of pairs from the pool and minimises L_local + L_global (Eqs. 5, 6):
   focal(D(v_p), M_p) + L_LC + BCE(D(v_n), 0) + BCE(D(v_s), 1) + L_GC, with v_s the PiEG embeddings (Eq. 3).

Choices the paper leaves open, made here:
- Anchor bank: ``coreset_ratio`` of the reference slices' brain embeddings, at most ``max_anchors``.
- Embedding scale: the paper's step sizes (eta, noise) assume a feature scale, which depends on the backbone. Here
  they are read in a space where healthy tissue lies PAPER_TYPICAL_DISTANCE = 0.05 from its nearest anchor (median
  over augmented healthy embeddings): PiEG's largest move, T * eta = 0.2, is 4 such distances and the noise (norm
  about 0.29) almost 6, so the synthetic embeddings are clearly off the healthy manifold even after the ascent pulls
  them back. Chosen on lgg_flair val (K = 2, seed 0; voxel AUROC 0.19 at 0.1, 0.92 at 0.05, 0.90 at 0.025, from
  docs/analysis/pathoscope_choices.py): at 0.1 the ascent brings the "pathological" embeddings back to the healthy
  distance and the maps come out inverted (in exploratory runs the discriminator's BCE stayed at 2 log 2). The
  networks see the same space scaled to a typical distance of 1 (step sizes scaled alike): in exploratory runs a
  discriminator fed embeddings at the 0.05 scale barely learnt in a few hundred steps.
- Tritanh scales: lambda_pull = lambda_push = 1 / TYPICAL_DISTANCE unless set, so lambda * d is about 1 for typical
  healthy tissue; epsilon = 1e-6.
- PiEG: rho ~ N(0, noise_std^2 I) with noise_std = 0.015 (the paper writes mu = 0.015, Sigma = I; taken literally
  the noise would dwarf the embeddings, so we follow GLASS's code, which PiEG extends, where 0.015 is the standard
  deviation). The gradient is normalised per location. v_s is the last iterate v_(s,T), rho included (Eq. 3's left
  side; its right side drops rho, which would leave a "pathological" embedding only the ascent's steps away from a
  healthy one, and those steps lead towards the anchors and towards what D calls healthy). PiEG and L_global use
  ``locations`` random brain locations per image (an unbiased sample of Eq. 4's mean), and during the T ascent steps
  each location keeps the anchor nearest to its healthy embedding.
- Feature-grid labels: a cell is pathological when at least half of its pixels are in M_p, and brain when at least
  half are brain. The focal loss is averaged over brain cells, L_LC over the lesion cells (Eq. 1), BCE and L_GC over
  the sampled brain locations. The anchor bank is drawn from the references and their mirror images (at most
  MAX_CORESET_CANDIDATES embeddings, a random subset beyond that).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ...augmentation import augment
from ...errors import InputError
from ...progress import CancelCallback, ProgressCallback, check_cancel
from ...networks.resnet18 import FEATURE_CHANNELS, load_resnet18_state
from . import MIN_REFERENCES, Adapter, Discriminator, Embedder, PathoSCOPEConfig
from ...serialise import DictSerialisable
from ..base import ReferenceFit
from .coreset import greedy_coreset
from .losses import focal_loss, local_distance, nearest_anchor_distance, tritanh
from .synthesis import TextureBank, folder_textures, local_pathology

# Embeddings the coreset is drawn from at most (a random subset beyond that; greedy sampling is O(N * anchors)).
MAX_CORESET_CANDIDATES = 20000
# A model fitted to a user's references makes its label maps per scan with the k chosen for the bundled PathoSCOPE on
# validation data (docs/analysis/per_scan_threshold.md).
REFERENCE_PER_SCAN_K = 2.5
# Median distance of an augmented healthy embedding to its nearest anchor after scaling (see the module docstring).
TYPICAL_DISTANCE = 1.0
# The distance the paper's eta and noise are measured against: they are multiplied by TYPICAL / PAPER_TYPICAL.
PAPER_TYPICAL_DISTANCE = 0.05
# A channel whose spread over the references is below this share of the median channel's (e.g. a ReLU dead on them)
# is standardised with that floor instead, so it cannot blow up on new images.
DEAD_CHANNEL_FLOOR = 0.1


@dataclass(frozen=True)
class FewShotSettings(DictSerialisable):
    """How the few-shot fit runs; stored in the model card under ``hyperparameters.fit``."""

    steps: int = 150
    batch_size: int = 8
    learning_rate: float = 1e-3  # discriminator
    adapter_learning_rate: float = 1e-4
    pool: int = 96
    elastic_px: float = 4.0
    coreset_ratio: float = 0.1
    max_anchors: int = 2048
    lambda_pull: float | None = None
    lambda_push: float | None = None
    epsilon: float = 1e-6
    pieg_steps: int = 20  # T
    eta: float = 0.01  # perturbation strength (the paper's value for brain MRI)
    noise_std: float = 0.015
    focal_gamma: float = 2.0
    locations: int = 128
    local_contrastive: bool = True  # L_LC (Table 3 ablation)
    global_contrastive: bool = True  # L_GC (Table 3 ablation)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.pool < self.batch_size or self.pieg_steps < 1:
            raise InputError("few-shot fit needs steps, batch size and PiEG steps >= 1 and a pool of at least a batch")


@dataclass
class FewShotResult:
    """The fitted networks as one state dict (``embedder.*``, ``adapter.*``, ``discriminator.*``) and what happened."""

    state_dict: dict[str, torch.Tensor]
    record: dict


def feature_cells(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) pixel masks -> (B, h, w) bool: feature cells at least half covered."""
    return F.adaptive_avg_pool2d(masks.float().unsqueeze(1), grid).squeeze(1) >= 0.5


def _embed(embedder: Embedder, slices: torch.Tensor, batch: int = 16) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([embedder.raw(slices[i:i + batch]) for i in range(0, len(slices), batch)])


def pieg(healthy: torch.Tensor, discriminator: Discriminator, anchors: torch.Tensor, settings: FewShotSettings,
         lambdas: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Eq. 3: global pathological embeddings v_s := v_(s,T), v_(s,i+1) = v_(s,i) + eta * grad / |grad| with the
    gradient of L_global taken with respect to v_(s,i), from v_(s,0) = v_n + rho; ``healthy`` (B, S, C) keeps its
    graph, so v_s = v_n + rho + eta * sum_i grad_i / |grad_i| passes gradients on to the adapter."""
    base = healthy.detach()
    nearest = anchors[torch.cdist(base.flatten(0, 1), anchors).argmin(dim=1)].view_as(base)
    d_healthy = torch.linalg.vector_norm(base - nearest, dim=-1).mean(dim=1)
    unit = TYPICAL_DISTANCE / PAPER_TYPICAL_DISTANCE
    eta = settings.eta * unit
    noise = settings.noise_std * unit * torch.randn(base.shape, generator=generator)
    v = base + noise
    direction = torch.zeros_like(base)
    for _ in range(settings.pieg_steps):
        v.requires_grad_(True)
        logits = discriminator(v)
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if settings.global_contrastive:
            d_synthetic = torch.linalg.vector_norm(v - nearest, dim=-1).mean(dim=1)
            loss = loss + tritanh(d_healthy, d_synthetic, *lambdas, settings.epsilon).mean()
        (gradient,) = torch.autograd.grad(loss, v)
        step = gradient / torch.linalg.vector_norm(gradient, dim=-1, keepdim=True).clamp_min(1e-12)
        direction += step
        v = (v + eta * step).detach()
    return healthy + noise + eta * direction


def fit_pathoscope(slices: torch.Tensor, masks: torch.Tensor, reference_ids: list[str], config: PathoSCOPEConfig,
                   settings: FewShotSettings, backbone_state: dict[str, torch.Tensor] | None = None,
                   texture_dir: Path | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelCallback | None = None) -> FewShotResult:
    """Fit PathoSCOPE to (N, H, W) normalised healthy reference ``slices`` (model grid) with brain ``masks``;
    ``reference_ids`` names the reference (volume) of each slice, at least two distinct. Runs on the CPU."""
    report = progress or (lambda fraction, stage: None)
    started = time.perf_counter()
    if slices.ndim != 3 or masks.shape != slices.shape or len(reference_ids) != slices.shape[0]:
        raise InputError("few-shot references must be (N, H, W) slices with masks and one reference id per slice")
    if len(set(reference_ids)) < MIN_REFERENCES:
        raise InputError(f"PathoSCOPE needs at least {MIN_REFERENCES} healthy references; "
                         f"got {len(set(reference_ids))}")
    if not bool(masks.flatten(1).any(dim=1).all()):
        raise InputError("a reference slice holds no brain; pass slices that show the brain")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    embedder = Embedder(config)
    if backbone_state is not None:
        embedder.trunk.load_state_dict(backbone_state)
    adapter, discriminator = Adapter(), Discriminator(config.hidden)
    x, m = slices.float(), masks.float()
    grid = (config.backbone_size // 8,) * 2

    report(0.0, "embedding the references")
    both = torch.cat([x, x.flip(-1)])
    raw = _embed(embedder, both)
    brain = raw[feature_cells(torch.cat([m, m.flip(-1)]), grid)]
    if brain.shape[0] < 2:
        raise InputError("the references hold too little brain to learn from")
    embedder.feature_mean.copy_(brain.mean(dim=0))
    spread = brain.std(dim=0)
    embedder.feature_std.copy_(spread.clamp_min(DEAD_CHANNEL_FLOOR * float(spread.median())))
    candidates = embedder.standardise(brain)
    if candidates.shape[0] > MAX_CORESET_CANDIDATES:
        candidates = candidates[torch.randperm(candidates.shape[0], generator=generator)[:MAX_CORESET_CANDIDATES]]
    count = max(2, min(settings.max_anchors, int(settings.coreset_ratio * brain.shape[0])))
    anchors = candidates[greedy_coreset(candidates, count, generator)]
    check_cancel(cancel)

    report(0.1, "synthesising pathologies")
    textures = TextureBank(x, m, texture_dir)
    healthy, pathological, lesion_cells, brain_cells = [], [], [], []
    for start in range(0, settings.pool, 16):
        chosen = torch.randint(len(x), (min(16, settings.pool - start),), generator=generator)
        xn, mn = augment(x[chosen].unsqueeze(1), m[chosen].unsqueeze(1), generator, settings.elastic_px)
        xn, mn = xn[:, 0], mn[:, 0]
        pairs = [local_pathology(xn[i], mn[i], textures, generator) for i in range(len(chosen))]
        xp, mp = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        healthy.append(embedder.standardise(_embed(embedder, xn)))
        pathological.append(embedder.standardise(_embed(embedder, xp)))
        lesion_cells.append(feature_cells(mp, grid))
        brain_cells.append(feature_cells(mn, grid))
        report(0.1 + 0.2 * min(1.0, (start + 16) / settings.pool), "synthesising pathologies")
        check_cancel(cancel)
    healthy, pathological = torch.cat(healthy), torch.cat(pathological)
    lesion_cells, brain_cells = torch.cat(lesion_cells), torch.cat(brain_cells)

    # Rescale every embedding so that healthy tissue sits TYPICAL_DISTANCE from its nearest anchor.
    typical = float(nearest_anchor_distance(healthy[brain_cells][:8192], anchors).median())
    factor = TYPICAL_DISTANCE / max(typical, 1e-6)
    embedder.feature_std.div_(factor)
    anchors, healthy, pathological = anchors * factor, healthy * factor, pathological * factor
    lambdas = (settings.lambda_pull or 1.0 / TYPICAL_DISTANCE, settings.lambda_push or 1.0 / TYPICAL_DISTANCE)

    optimiser = torch.optim.Adam([{"params": adapter.parameters(), "lr": settings.adapter_learning_rate},
                                  {"params": discriminator.parameters(), "lr": settings.learning_rate}])
    history: list[dict[str, float]] = []
    for step in range(settings.steps):
        check_cancel(cancel)
        batch = torch.randint(settings.pool, (settings.batch_size,), generator=generator)
        lesion, inside = lesion_cells[batch], brain_cells[batch].float()
        v_n, v_p = adapter(healthy[batch]), adapter(pathological[batch])
        losses = {"focal": focal_loss(discriminator(v_p), lesion.float(), inside, settings.focal_gamma)}
        if settings.local_contrastive:
            has_lesion = lesion.flatten(1).any(dim=1)
            if has_lesion.any():
                d_n, d_p = (local_distance(v, lesion, anchors) for v in (v_n, v_p))
                losses["local_contrastive"] = tritanh(d_n[has_lesion], d_p[has_lesion], *lambdas,
                                                      settings.epsilon).mean()
        where = torch.multinomial(inside.flatten(1) + 1e-6, settings.locations, replacement=True,
                                  generator=generator)
        v_sel = torch.gather(v_n.flatten(1, 2), 1, where.unsqueeze(-1).expand(-1, -1, FEATURE_CHANNELS))
        v_s = pieg(v_sel, discriminator, anchors, settings, lambdas, generator)
        logits_n, logits_s = discriminator(v_sel), discriminator(v_s)
        losses["bce"] = (F.binary_cross_entropy_with_logits(logits_n, torch.zeros_like(logits_n))
                         + F.binary_cross_entropy_with_logits(logits_s, torch.ones_like(logits_s)))
        if settings.global_contrastive:
            losses["global_contrastive"] = tritanh(nearest_anchor_distance(v_sel, anchors).mean(dim=1),
                                                   nearest_anchor_distance(v_s, anchors).mean(dim=1),
                                                   *lambdas, settings.epsilon).mean()
        optimiser.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimiser.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
        report(0.3 + 0.7 * (step + 1) / settings.steps, "training adapter and discriminator")

    state = {f"{name}.{key}": value.detach().clone() for name, module in
             (("embedder", embedder), ("adapter", adapter), ("discriminator", discriminator))
             for key, value in module.state_dict().items()}
    tail = history[-max(1, settings.steps // 10):]
    record = {"references": len(set(reference_ids)), "slices": int(slices.shape[0]), "anchors": int(len(anchors)),
              "lambda": [round(v, 4) for v in lambdas], "typical_anchor_distance_before_scaling": round(typical, 4),
              "texture_sources": textures.sources, "seconds": round(time.perf_counter() - started, 1),
              "final_losses": {k: round(sum(h.get(k, 0.0) for h in tail) / len(tail), 4) for k in history[-1]}}
    return FewShotResult(state_dict=state, record=record)


def check_fit_options(backbone: Path | None = None, texture_dir: Path | None = None, **settings) -> None:
    """Refuse a backbone file or texture folder that cannot be used, before any reference is read."""
    if backbone is not None:
        load_resnet18_state(backbone)
    if texture_dir is not None:
        folder_textures(texture_dir)


def fit_to_references(slices: torch.Tensor, masks: torch.Tensor, reference_ids: list[str],
                      progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
                      settings: FewShotSettings = FewShotSettings(), config: PathoSCOPEConfig = PathoSCOPEConfig(),
                      backbone: Path | None = None, texture_dir: Path | None = None) -> ReferenceFit:
    """PathoSCOPE's :meth:`~..base.AnomalyMethod.fit_references`: :func:`fit_pathoscope` with a user's backbone
    file (default: the trunk's random initialisation, seeded) and texture folder."""
    config = replace(config, backbone=Path(backbone).name if backbone else f"random (seed {settings.seed})")
    result = fit_pathoscope(slices, masks, reference_ids, config, settings,
                            backbone_state=load_resnet18_state(backbone) if backbone is not None else None,
                            texture_dir=texture_dir, progress=progress, cancel=cancel)
    return ReferenceFit(state_dict=result.state_dict, hyperparameters={**config.to_dict(), "fit": settings.to_dict()},
                        settings=settings.to_dict(), seed=settings.seed, steps=settings.steps, record=result.record,
                        per_scan_k=REFERENCE_PER_SCAN_K)

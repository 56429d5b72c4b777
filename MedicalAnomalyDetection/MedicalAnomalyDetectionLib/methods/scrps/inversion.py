"""SCRPS inversion, retrieval and map (Wei et al., MICCAI 2025): Eq. 1 (W+ codes by Adam on the perceptual and pixel
losses), Eq. 2 (the perceptual loss), Eqs. 3-4 (coarse-to-fine retrieval from the repository), Eq. 5 (the swap) and
the normalised perceptual map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from ...networks.stylegan2 import Generator


def normalised(tap: torch.Tensor) -> torch.Tensor:
    """Features unit-normalised over channels at each pixel, as in the LPIPS distance of Zhang et al. [31]."""
    return F.normalize(tap.float(), dim=1, eps=1e-8)


def perceptual_loss(taps_a: list[torch.Tensor], taps_b: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 2 per slice, (B,): sum over taps of ||F_j(a) - F_j(b)||^2 / N_j (N_j: the tap's pixel count), with the
    features of [31] (the paper's reference for this loss): unit-normalised over channels. Each term then lies in
    [0, 4] whatever the network, which is what gives lambda_mse = 10 the same meaning for every perceptual network
    (raw discriminator features made the pixel term 1 % of the loss)."""
    total = 0.0
    for a, b in zip(taps_a, taps_b):
        total = total + (normalised(a) - normalised(b)).square().sum(dim=1).mean(dim=(1, 2))
    return total


def inversion_loss(features: nn.Module, target_taps: list[torch.Tensor], x: torch.Tensor, image: torch.Tensor,
                   lambda_mse: float) -> torch.Tensor:
    """Eq. 1 per slice, (B,): perceptual loss + lambda_mse / N x squared pixel error."""
    return (perceptual_loss(features(image), target_taps)
            + lambda_mse * (image.float() - x).square().mean(dim=(1, 2, 3)))


def invert(G: Generator, features: nn.Module, x: torch.Tensor, start: torch.Tensor, steps: int, lr: float,
           lambda_mse: float, snapshots: tuple[int, ...] = (), autocast=None) -> dict[int, torch.Tensor]:
    """Optimise the W+ codes of the (B, 1, H, W) slices ``x`` from ``start`` (B, L, w_dim) for ``steps`` Adam steps
    of Eq. 1 (constant ``lr``), all slices at once. Returns {step: codes} for ``steps`` and every step of
    ``snapshots`` up to it. A non-finite loss or code is an InputError (the inversion diverged)."""
    autocast = autocast or (lambda: torch.autocast("cpu", enabled=False))
    kept: dict[int, torch.Tensor] = {0: start.detach().clone().float()}
    if steps > 0:  # at 0 steps the start is the answer, without a perceptual pass
        kept.update(_adam_steps(G, features, x, kept[0], steps, lr, lambda_mse, snapshots, autocast))
    final = kept[steps]
    if not torch.isfinite(final).all():
        raise InputError("SCRPS inversion diverged: the W+ codes are not finite; nothing was written")
    return kept


def _adam_steps(G: Generator, features: nn.Module, x: torch.Tensor, start: torch.Tensor, steps: int, lr: float,
                lambda_mse: float, snapshots: tuple[int, ...], autocast) -> dict[int, torch.Tensor]:
    """The codes after ``steps`` Adam steps of Eq. 1 from ``start``, and at each step of ``snapshots`` below it."""
    kept: dict[int, torch.Tensor] = {}
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().float()
        ws = start.detach().clone().float().requires_grad_(True)
        with torch.no_grad(), autocast():
            target = [t.float() for t in features(x)]
        optimiser = torch.optim.Adam([ws], lr=lr, betas=(0.9, 0.999))
        for step in range(steps + 1):
            if step in snapshots or step == steps:
                kept[step] = ws.detach().clone()
            if step == steps:
                break
            with autocast():
                loss = inversion_loss(features, target, x, G.synthesis(ws), lambda_mse)
            if not torch.isfinite(loss).all():
                raise InputError(f"SCRPS inversion diverged: the Eq. 1 loss is not finite at step {step} "
                                 f"(learning rate {lr:g}); nothing was written")
            optimiser.zero_grad(set_to_none=True)
            loss.sum().backward()
            try:
                optimiser.step()
            except RuntimeError as error:  # e.g. a step size beyond float range
                raise InputError(f"SCRPS inversion diverged at step {step}: {str(error).splitlines()[0][:120]}; "
                                 "nothing was written") from None
    return kept


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, K) cosine similarities of the rows of (B, n) ``a`` and (K, n) ``b``."""
    return F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).t()


@dataclass
class Retrieved:
    """The retrieved repository items of each slice: indices (B, K2), weights (B, K2), combined codes (B, L, D)."""

    index: torch.Tensor
    weights: torch.Tensor
    codes: torch.Tensor


def retrieve(codes: torch.Tensor, repository: torch.Tensor, k1: int, k2: int, l1: int,
             retrieval: str = "coarse-to-fine") -> Retrieved:
    """Eqs. 3-4 and the weighted combination, batched over (B, L, D) ``codes`` against (K, L, D) ``repository``.

    coarse-to-fine: the top ``k1`` items by the cosine similarity of the first ``l1`` codes, among them the top
    ``k2`` by the similarity of the rest; one-stage: the top ``k2`` by the similarity of all L codes. Weights: the
    (fine) similarities of the chosen items over their sum (negative similarities count as 0; if all are 0, equal
    weights)."""
    count = repository.shape[0]
    k1, k2 = min(k1, count), min(k2, k1, count)
    flat = lambda t, part: t[:, part].flatten(1)  # noqa: E731
    if retrieval == "one-stage":
        similarity = cosine(codes.flatten(1), repository.flatten(1))
        top, index = similarity.topk(k2, dim=1)
    else:
        coarse = cosine(flat(codes, slice(0, l1)), flat(repository, slice(0, l1)))
        candidates = coarse.topk(k1, dim=1).indices  # (B, k1): the set P of Eq. 3
        fine = cosine(flat(codes, slice(l1, None)), flat(repository, slice(l1, None)))
        top, chosen = fine.gather(1, candidates).topk(k2, dim=1)  # Eq. 4 within P
        index = candidates.gather(1, chosen)
    top = top.clamp_min(0)
    total = top.sum(dim=1, keepdim=True)
    weights = torch.where(total > 0, top / total.clamp_min(1e-12), torch.full_like(top, 1.0 / k2))
    combined = (weights[:, :, None, None] * repository[index].float()).sum(dim=1)
    return Retrieved(index=index, weights=weights, codes=combined)


def swap(codes: torch.Tensor, combined: torch.Tensor, l2: int) -> torch.Tensor:
    """Eq. 5: the first ``l2`` codes of the test slice, the rest from the combination."""
    return torch.cat([codes[:, :l2], combined[:, l2:]], dim=1)


def perceptual_map(taps_a: list[torch.Tensor], taps_b: list[torch.Tensor], layers: tuple[int, ...],
                   size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) normalised perceptual score: per tap, features unit-normalised over channels, squared difference
    summed over channels, upsampled (bilinear) to ``size``; the mean over ``layers``."""
    total = 0.0
    for layer in layers:
        distance = (normalised(taps_a[layer]) - normalised(taps_b[layer])).square().sum(dim=1, keepdim=True)
        total = total + F.interpolate(distance, size=size, mode="bilinear", align_corners=False)
    return (total / len(layers))[:, 0]

"""Adversarial training of the Patch-GAN's reconstructor and PatchGAN discriminator on healthy slices.

The networks, hole masks and loss terms are those of ``MedicalAnomalyDetectionLib.methods.patchgan`` (its docstring
states the choices made where the paper is silent). Checkpoints hold both networks, both optimisers and the random
state, so ``--resume`` continues a killed run where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from MedicalAnomalyDetectionLib.methods.patchgan import (LOG_VAR_RANGE, PatchDiscriminator, PatchGANConfig,
                                                         Reconstructor, checkerboard_holes)
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for

from MedicalAnomalyDetectionLib.errors import InputError

from .slice_set import SliceSet

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class FitSettings:
    """Optimisation settings; written to the run's run.json and the model card."""

    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 2e-4  # decayed to 0 along a cosine over the run (calms the late GAN instabilities)
    recon_weight: float = 0.2  # lambda of Eq. 4
    adv_weight: float = 0.05
    uncertainty_weight: float = 0.1  # of the log-variance head's Gaussian NLL (config.uncertainty only)
    seed: int = 0
    checkpoint_every: int = 5  # epochs


def augment(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-right flip, rotation (+-10 deg), scaling (0.9-1.1) and intensity scaling (0.9-1.1)."""
    batch = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator, device=generator.device) * (high - low) + low

    angle = uniform(-math.pi / 18, math.pi / 18)
    scale = uniform(0.9, 1.1)
    flip = torch.where(torch.rand(batch, generator=generator, device=generator.device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.cos(angle) / scale * flip
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * flip
    theta[:, 1, 1] = torch.cos(angle) / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x * uniform(0.9, 1.1).view(-1, 1, 1, 1) * mask, mask


def training_step(x: torch.Tensor, mask: torch.Tensor, reconstructor: Reconstructor,
                  discriminator: PatchDiscriminator, opt_r: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                  config: PatchGANConfig, settings: FitSettings, generator: torch.Generator) -> dict[str, float]:
    """One adversarial step on a batch of (B, 1, H, W) healthy slices; returns the loss terms."""
    batch, _, height, width = x.shape
    device = x.device
    phase = torch.randint(0, 2, (batch,), generator=generator, device=device)
    shift_y = torch.randint(0, config.hole, (batch,), generator=generator, device=device)
    shift_x = torch.randint(0, config.hole, (batch,), generator=generator, device=device)
    holes = checkerboard_holes(height, width, config.hole, phase, shift_y, shift_x)
    with autocast_for(device, training=True):
        out = reconstructor(x * (1 - holes), holes).float()
    x_hat = out[:, :1]
    fake = x * (1 - holes) + x_hat * holes

    with autocast_for(device, training=True):
        d_real = discriminator(x, holes).float()
        d_fake = discriminator(fake.detach(), holes).float()
    loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    loss_r = F.mse_loss(x_hat, x)  # Eq. 1, whole slice
    weight = holes * mask
    loss_patch = ((x_hat - x) ** 2 * weight).sum() / weight.sum().clamp_min(1)  # Eq. 2, in-painted patches
    with autocast_for(device, training=True):
        d_gen = discriminator(fake, holes).float()
    loss_adv = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))  # Eq. 3, R's side
    total = settings.recon_weight * loss_r + loss_patch + settings.adv_weight * loss_adv  # Eq. 4
    losses = {"loss_r": loss_r.item(), "loss_patch": loss_patch.item(), "loss_adv": loss_adv.item(),
              "loss_d": loss_d.item()}
    if config.uncertainty:
        log_var = out[:, 1:2].clamp(*LOG_VAR_RANGE)
        nll = 0.5 * ((x_hat.detach() - x) ** 2 * torch.exp(-log_var) + log_var)
        loss_nll = (nll * weight).sum() / weight.sum().clamp_min(1)
        total = total + settings.uncertainty_weight * loss_nll
        losses["loss_nll"] = loss_nll.item()
    opt_r.zero_grad(set_to_none=True)
    total.backward()
    opt_r.step()
    return losses


def _run_identity(config: PatchGANConfig, settings: FitSettings, data: SliceSet) -> str:
    """What a checkpoint must match to be resumed: network, optimisation settings (but where to stop) and data size."""
    identity = {"config": config.to_dict(), "settings": {k: v for k, v in settings.__dict__.items()
                                                          if k != "checkpoint_every"},
                "slices": int(data.slices.shape[0])}
    return json.dumps(identity, sort_keys=True)


def fit_patchgan(data: SliceSet, config: PatchGANConfig, settings: FitSettings, run_dir: Path,
                 device: torch.device, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train on ``data``; checkpoints and run.json go to ``run_dir``. Returns the run record.

    ``stop_after`` ends this session after that many epochs (checkpointed), for time-limited jobs; ``resume``
    continues the same schedule from the checkpoint, with the same result as an uninterrupted run."""
    steps = data.slices.shape[0] // settings.batch_size
    if steps == 0:
        raise InputError(f"{data.slices.shape[0]} training slices are fewer than one batch of {settings.batch_size}")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    reconstructor = Reconstructor(config.widths, config.uncertainty).to(device)
    discriminator = PatchDiscriminator(config.disc_widths).to(device)
    opt_r = torch.optim.Adam(reconstructor.parameters(), lr=settings.learning_rate, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=settings.learning_rate, betas=(0.5, 0.999))
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps)
                  for opt in (opt_r, opt_d)]
    order_gen = torch.Generator().manual_seed(settings.seed)
    aug_gen = torch.Generator(device=device).manual_seed(settings.seed + 1)
    start_epoch, seconds_before = 0, 0.0
    checkpoint_path = run_dir / CHECKPOINT
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if state["run"] != _run_identity(config, settings, data):
            raise InputError(f"--resume: {checkpoint_path} was made with other settings, network or data; "
                             "use the same command, or a new --run-dir")
        if int(state["epoch"]) >= settings.epochs:
            raise InputError(f"--resume: {run_dir} has already finished its {settings.epochs} epochs")
        reconstructor.load_state_dict(state["reconstructor"])
        discriminator.load_state_dict(state["discriminator"])
        opt_r.load_state_dict(state["opt_r"])
        opt_d.load_state_dict(state["opt_d"])
        for scheduler, key in zip(schedulers, ("sched_r", "sched_d")):
            scheduler.load_state_dict(state[key])
        order_gen.set_state(state["order_gen"].cpu())
        aug_gen.set_state(state["aug_gen"].to("cpu"))
        start_epoch, seconds_before = int(state["epoch"]), float(state["seconds"])
        print(f"resuming {run_dir} at epoch {start_epoch}")

    slices = torch.from_numpy(data.slices).to(device, torch.float32).unsqueeze(1)
    masks = torch.from_numpy(data.masks).to(device, torch.float32).unsqueeze(1)
    count = slices.shape[0]
    started = time.perf_counter()
    history = []
    last_epoch = settings.epochs if stop_after is None else min(settings.epochs, start_epoch + stop_after)
    bar = tqdm(range(start_epoch, last_epoch), initial=start_epoch, total=settings.epochs, unit="epoch")
    for epoch in bar:
        order = torch.randperm(count, generator=order_gen).to(device)
        totals: dict[str, float] = {}
        for step in range(steps):
            chosen = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            x, mask = augment(slices[chosen], masks[chosen], aug_gen)
            for key, value in training_step(x, mask, reconstructor, discriminator, opt_r, opt_d, config, settings,
                                            aug_gen).items():
                totals[key] = totals.get(key, 0.0) + value / steps
            for scheduler in schedulers:
                scheduler.step()
        history.append({"epoch": epoch + 1, **{k: round(v, 6) for k, v in totals.items()}})
        bar.set_postfix(patch=f"{totals['loss_patch']:.4f}", adv=f"{totals['loss_adv']:.3f}")
        if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == last_epoch:
            elapsed = seconds_before + time.perf_counter() - started
            torch.save({"reconstructor": reconstructor.state_dict(), "discriminator": discriminator.state_dict(),
                        "opt_r": opt_r.state_dict(), "opt_d": opt_d.state_dict(),
                        "sched_r": schedulers[0].state_dict(), "sched_d": schedulers[1].state_dict(),
                        "order_gen": order_gen.get_state(), "aug_gen": aug_gen.get_state(),
                        "epoch": epoch + 1, "seconds": elapsed, "run": _run_identity(config, settings, data)},
                       checkpoint_path)
    record = {"method": "patchgan", "config": config.to_dict(), "settings": settings.__dict__,
              "epochs_done": last_epoch,
              "slices": count, "cases": len(set(data.case_ids)), "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "seconds": round(seconds_before + time.perf_counter() - started, 1), "history": history[-5:]}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record

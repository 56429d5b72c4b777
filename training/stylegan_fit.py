"""Train StyleGAN2 on healthy slices for SCRPS (the paper's Fig. 1a): non-saturating logistic loss, lazy R1 on
reals, an EMA copy of G, Adam (lr 0.002, betas (0, 0.99)), style mixing, +-15 degree rotations of the reals.

    python -m training.stylegan_fit --data cache/ixi_t1_train_80x64.npz --run-dir runs/scrps-t1 --config reduced \\
        --iterations 8000 --batch-size 16 --seed 0 --threads 1 [--resume] [--checkpoint-every 500] [--max-minutes 115]

The pieces (:func:`make_trainer`, :func:`train_step`, :func:`save_checkpoint`, :func:`load_checkpoint`,
:func:`fit`) are what a recipe calls; the command line only wires them. Checkpoints hold G, D, G_ema, both
optimisers, the random state, the iteration and the elapsed seconds, and are written atomically, so ``--resume``
continues bit-exactly (on the CPU, same thread count) from the last one.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods.runtime import add_device_argument, autocast_for, choose_device
from MedicalAnomalyDetectionLib.networks.stylegan2 import CONFIGS, Discriminator, Generator, StyleGAN2Config
from MedicalAnomalyDetectionLib.serialise import DictSerialisable

from . import loop
from .slice_set import SliceSet

CHECKPOINT = "checkpoint.pt"
SAMPLE_SEED = 20250101  # the fixed z of the sample grids
SAMPLE_GRID = (4, 8)  # rows, columns
ITERATIONS = {"paper": 12000, "reduced": 8000, "tiny": 20}  # default --iterations of each --config


@dataclass(frozen=True)
class GANSettings(DictSerialisable):
    """Optimisation settings; written to run.json and checked on ``--resume``."""

    required_keys: ClassVar[tuple[str, ...]] = ("betas",)

    batch_size: int = 16
    learning_rate: float = 0.002
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float | None = None  # None: 0.0002 * H * W / batch (StyleGAN2-ADA's heuristic)
    r1_every: int = 16  # lazy regularisation interval (D steps)
    style_mixing: float = 0.9  # probability of mixing two w's at a random layer
    rotation_deg: float = 15.0  # reals are rotated uniformly within +-this (the paper's augmentation)
    ema_kimg: float | None = None  # half-life of the G_ema average in thousands of images; None: batch * 10 / 32
    ema_rampup: float = 0.05  # the half-life is at most this fraction of the images seen so far
    w_avg_beta: float = 0.995  # running mean of w (truncation)
    seed: int = 0
    precision: str = "auto"  # "auto": bf16 autocast where supported (runtime.autocast_for); "fp32"

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32"):
            raise InputError(f"precision must be auto or fp32, not {self.precision!r}")

    def gamma(self, config: StyleGAN2Config) -> float:
        if self.r1_gamma is not None:
            return self.r1_gamma
        return 0.0002 * config.size[0] * config.size[1] / self.batch_size


@dataclass
class Trainer:
    """Everything a training step changes; a checkpoint is exactly this."""

    config: StyleGAN2Config
    settings: GANSettings
    device: torch.device
    G: Generator
    D: Discriminator
    G_ema: Generator
    opt_G: torch.optim.Adam
    opt_D: torch.optim.Adam
    generator: torch.Generator  # the one source of randomness: batches, z, mixing, rotations
    iteration: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # mean losses per logged interval

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.settings.precision == "fp32":
            return contextlib.nullcontext()
        return autocast_for(self.device, training=True)


def make_trainer(config: StyleGAN2Config, settings: GANSettings, device: torch.device | str = "cpu") -> Trainer:
    """Fresh networks (initialised from ``settings.seed``) and optimisers. D's Adam uses the lazy-regularisation
    correction c = k / (k + 1) of StyleGAN2 (lr * c, betas ** c) for k = ``r1_every``."""
    device = torch.device(device)
    torch.manual_seed(settings.seed)
    G = Generator(config).to(device, memory_format=torch.channels_last)
    D = Discriminator(config).to(device, memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    c = settings.r1_every / (settings.r1_every + 1)
    opt_G = torch.optim.Adam(G.parameters(), lr=settings.learning_rate, betas=settings.betas, eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=settings.learning_rate * c,
                             betas=(settings.betas[0] ** c, settings.betas[1] ** c), eps=1e-8)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    return Trainer(config, settings, device, G, D, G_ema, opt_G, opt_D, generator)


def rotate(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, degrees: float) -> torch.Tensor:
    """(B, 1, H, W) slices rotated by a uniform angle in +-``degrees`` about their centre, zero outside the rotated
    brain mask."""
    angle = (torch.rand(x.shape[0], generator=generator, device=generator.device) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(angle).to(x.device), torch.sin(angle).to(x.device)
    height, width = x.shape[-2:]
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    # affine_grid works in normalised coordinates; the aspect ratio keeps the rotation rigid on non-square slices
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * height / width
    theta[:, 1, 0], theta[:, 1, 1] = sin * width / height, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x * mask


def sample_ws(trainer: Trainer, batch: int, update_w_avg: bool = False) -> torch.Tensor:
    """W+ codes of random z, with style mixing: with probability ``style_mixing`` the codes from a random layer on
    come from a second z."""
    G, gen, cfg = trainer.G, trainer.generator, trainer.config
    z = torch.randn(batch, cfg.z_dim, generator=gen, device=gen.device)
    z2 = torch.randn(batch, cfg.z_dim, generator=gen, device=gen.device)
    cutoff = int(torch.randint(1, cfg.num_ws, (), generator=gen, device=gen.device))
    mix = float(torch.rand((), generator=gen, device=gen.device)) < trainer.settings.style_mixing
    ws = G.mapping(z, w_avg_beta=trainer.settings.w_avg_beta if update_w_avg else None)
    if mix:
        ws = torch.cat([ws[:, :cutoff], G.mapping(z2)[:, cutoff:]], dim=1)
    return ws


def r1_penalty(D: Discriminator, real: torch.Tensor) -> torch.Tensor:
    """(B,) squared norm of dD/dx at the reals (computed in fp32)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(real).float().sum(), real, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3))


@torch.no_grad()
def update_ema(trainer: Trainer) -> None:
    """G_ema <- beta G_ema + (1 - beta) G, the half-life ramped up with the images seen (StyleGAN2-ADA)."""
    s = trainer.settings
    ema_images = (s.ema_kimg if s.ema_kimg is not None else s.batch_size * 10 / 32) * 1000
    ema_images = min(ema_images, (trainer.iteration + 1) * s.batch_size * s.ema_rampup)
    beta = 0.5 ** (s.batch_size / max(ema_images, 1e-8))
    for p_ema, p in zip(trainer.G_ema.parameters(), trainer.G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(trainer.G_ema.buffers(), trainer.G.buffers()):
        b_ema.copy_(b)


def train_step(trainer: Trainer, slices: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """One iteration on (N, 1, H, W) ``slices``/``masks`` (on the trainer's device): a G step, a D step, every
    ``r1_every``-th iteration an R1 step on D, then the EMA update. Returns the losses (fp32)."""
    s, gen, G, D = trainer.settings, trainer.generator, trainer.G, trainer.D
    batch = s.batch_size
    index = torch.randint(slices.shape[0], (batch,), generator=gen, device=gen.device).to(slices.device)
    real = rotate(slices[index], masks[index], gen, s.rotation_deg)

    ws = sample_ws(trainer, batch, update_w_avg=True)
    D.requires_grad_(False)
    with trainer.autocast():
        fake_logits = D(G.synthesis(ws))
    loss_G = F.softplus(-fake_logits.float()).mean()
    trainer.opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    trainer.opt_G.step()
    D.requires_grad_(True)

    with torch.no_grad():
        ws = sample_ws(trainer, batch)
        with trainer.autocast():
            fake = G.synthesis(ws)
    with trainer.autocast():
        fake_logits, real_logits = D(fake), D(real)
    loss_D = F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()
    trainer.opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    trainer.opt_D.step()
    losses = {"loss_G": loss_G.item(), "loss_D": loss_D.item(),
              "real_logit": real_logits.float().mean().item(), "fake_logit": fake_logits.float().mean().item()}

    if trainer.iteration % s.r1_every == 0:
        penalty = r1_penalty(D, real).mean()
        trainer.opt_D.zero_grad(set_to_none=True)
        (penalty * (s.gamma(trainer.config) / 2) * s.r1_every).backward()
        trainer.opt_D.step()
        losses["r1"] = penalty.item()

    update_ema(trainer)
    trainer.iteration += 1
    return losses


def _identity(config: StyleGAN2Config, settings: GANSettings) -> dict:
    return {"config": config.to_dict(), "settings": settings.to_dict()}


def save_checkpoint(trainer: Trainer, path: Path) -> None:
    """Write the trainer's state to ``path`` atomically (``loop.save_checkpoint``)."""
    loop.save_checkpoint({**_identity(trainer.config, trainer.settings),
                      "G": trainer.G.state_dict(), "D": trainer.D.state_dict(), "G_ema": trainer.G_ema.state_dict(),
                      "opt_G": trainer.opt_G.state_dict(), "opt_D": trainer.opt_D.state_dict(),
                      "generator": trainer.generator.get_state(), "iteration": trainer.iteration,
                      "seconds": trainer.seconds, "history": json.dumps(trainer.history)}, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu", settings: GANSettings | None = None
                    ) -> Trainer:
    """A trainer in the state saved at ``path``. With ``settings``, they must equal the checkpoint's."""
    state = torch.load(path, map_location=device, weights_only=True)
    config, saved = StyleGAN2Config.from_dict(state["config"]), GANSettings.from_dict(state["settings"])
    if settings is not None and settings != saved:
        raise InputError(f"--resume: {path} was made with other settings ({saved.to_dict()}); use the same "
                         "command, or a new --run-dir")
    trainer = make_trainer(config, saved, device)
    for name in ("G", "D", "G_ema", "opt_G", "opt_D"):
        getattr(trainer, name).load_state_dict(state[name])
    trainer.generator.set_state(state["generator"].cpu())
    trainer.iteration, trainer.seconds = int(state["iteration"]), float(state["seconds"])
    trainer.history = json.loads(state["history"])
    return trainer


@torch.no_grad()
def sample_grid(G: Generator, path: Path, grid: tuple[int, int] = SAMPLE_GRID) -> np.ndarray:
    """Save a PNG of G's images for a fixed set of z (grey, 0..1.5 in preprocessing units); return the grid."""
    import matplotlib.image

    rows, cols = grid
    config = G.config
    z = torch.randn(rows * cols, config.z_dim, generator=torch.Generator().manual_seed(SAMPLE_SEED))
    images = G(z.to(G.mapping_network.w_avg.device)).float().cpu().numpy()[:, 0]
    height, width = config.size
    tiled = images.reshape(rows, cols, height, width).transpose(0, 2, 1, 3).reshape(rows * height, cols * width)
    matplotlib.image.imsave(path, np.clip(tiled, 0.0, 1.5), cmap="gray", vmin=0.0, vmax=1.5)
    return tiled


def as_tensors(data: SliceSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) float32 slices and masks on ``device``."""
    slices = torch.from_numpy(data.slices.astype(np.float32)).unsqueeze(1).to(device)
    masks = torch.from_numpy(data.masks.astype(np.float32)).unsqueeze(1).to(device)
    return slices, masks


def fit(trainer: Trainer, data: SliceSet, run_dir: Path, iterations: int, checkpoint_every: int = 500,
        progress: bool = True, max_seconds: float | None = None) -> Trainer:
    """Train until ``iterations``, or until this call has run ``max_seconds``; checkpoint (and a sample grid
    ``samples_<iteration>.png``) every ``checkpoint_every`` iterations and when it stops."""
    if tuple(data.slices.shape[1:]) != tuple(trainer.config.size):
        raise InputError(f"slices are {data.slices.shape[1:]}, the network makes {trainer.config.size}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    slices, masks = as_tensors(data, trainer.device)
    started, seconds_before = time.perf_counter(), trainer.seconds
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    bar = tqdm(range(trainer.iteration, iterations), initial=trainer.iteration, total=iterations, unit="it",
               mininterval=30, disable=not progress)
    for _ in bar:
        for key, value in train_step(trainer, slices, masks).items():
            totals[key], counts[key] = totals.get(key, 0.0) + value, counts.get(key, 0) + 1
        out_of_time = max_seconds is not None and time.perf_counter() - started >= max_seconds
        if trainer.iteration % checkpoint_every == 0 or trainer.iteration == iterations or out_of_time:
            trainer.seconds = seconds_before + time.perf_counter() - started
            means = {k: round(v / counts[k], 5) for k, v in totals.items()}
            trainer.history.append({"iteration": trainer.iteration, "seconds": round(trainer.seconds, 1), **means})
            totals, counts = {}, {}
            sample_grid(trainer.G_ema, run_dir / f"samples_{trainer.iteration:06d}.png")
            save_checkpoint(trainer, run_dir / CHECKPOINT)
            bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()})
            if progress:
                tqdm.write(json.dumps(trainer.history[-1]))
        if out_of_time:
            break
    return trainer


def run_record(trainer: Trainer, data: SliceSet, data_path: Path, threads: int, command: list[str]) -> dict:
    return {"method": "scrps", "stage": "stylegan2", "config": trainer.config.to_dict(),
            "settings": trainer.settings.to_dict(), "r1_gamma": trainer.settings.gamma(trainer.config),
            "seed": trainer.settings.seed, "device": str(trainer.device),
            "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
            "threads": threads, "seconds": round(trainer.seconds, 1), "iterations": trainer.iteration,
            "images_seen": trainer.iteration * trainer.settings.batch_size,
            "final_losses": trainer.history[-1] if trainer.history else {}, "history": trainer.history,
            "data": {"path": str(data_path), "slices": int(data.slices.shape[0]),
                     "cases": len(set(data.case_ids)), "source": data.source},
            "command": " ".join(command)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.stylegan_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="slice cache (.npz) of training.slice_set")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="reduced")
    parser.add_argument("--iterations", type=int, default=None, help="default: 12000 (paper), 8000 (reduced)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--r1-gamma", type=float, default=None)
    parser.add_argument("--precision", choices=("auto", "fp32"), default="auto")
    add_device_argument(parser, default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="iterations")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (checkpointed, run.json written) after this many minutes of this session")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    iterations = args.iterations or ITERATIONS[args.config]
    try:
        data = SliceSet.load(args.data)
        config = CONFIGS[args.config]
        device = str(choose_device(args.device))
        settings = GANSettings(batch_size=args.batch_size, r1_gamma=args.r1_gamma, seed=args.seed,
                               precision=args.precision)
        checkpoint = args.run_dir / CHECKPOINT
        if args.resume and checkpoint.exists():
            trainer = load_checkpoint(checkpoint, device, settings)
            if trainer.config != config:
                raise InputError(f"--resume: {checkpoint} holds another network than --config {args.config}")
            print(f"resuming {args.run_dir} at iteration {trainer.iteration}", file=sys.stderr)
        else:
            if checkpoint.exists():
                raise InputError(f"{checkpoint} exists: pass --resume, or choose a new --run-dir")
            trainer = make_trainer(config, settings, device)
        if trainer.iteration >= iterations:
            raise InputError(f"{args.run_dir} is already at iteration {trainer.iteration} >= {iterations}")
        fit(trainer, data, args.run_dir, iterations, args.checkpoint_every,
            max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "training.stylegan_fit", *(sys.argv[1:] if argv is None else argv)]
    record = run_record(trainer, data, args.data, torch.get_num_threads(), command)
    (args.run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

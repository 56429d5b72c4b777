"""The training loop every network-trained method shares: data order, augmentation, cosine learning rate,
checkpoints that hold every module, optimiser, schedule and random state, and ``--resume``/``--stop-after``.

Under ``torchrun`` the processes train one model together (data parallel): every process draws the same global batch
and its augmentation, trains on its share (every ``size``-th slice, as ``DistributedSampler`` splits), and the
gradients are averaged over the processes before each optimiser step, so the modules stay identical everywhere. The
main process alone writes checkpoints and the run record."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import nn
from tqdm import tqdm

from MedicalAnomalyDetectionLib.atomic import write_atomically
from MedicalAnomalyDetectionLib.augmentation import augment
from MedicalAnomalyDetectionLib.distributed import (World, average_gradients, broadcast, broadcast_tensors, gather,
                                                    launched_world, process_group)
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods.runtime import choose_device
from MedicalAnomalyDetectionLib.run_record import RunRecord

from .recipes.base import Recipe, RecipeSettings, RunOptions
from .recipes.settings import option
from .slice_set import SliceSet

CHECKPOINT = "checkpoint.pt"
LOOP_RUN_OPTIONS = ("device", "resume", "stop_after")  # the RunOptions train honours


@dataclass(frozen=True, kw_only=True)
class FitSettings(RecipeSettings):
    """Optimisation settings of the methods :func:`train` trains; a recipe's settings extend them with its own (its
    network and its loss weights). Written to the run record and the model card."""

    epochs: int = option(100)
    batch_size: int = option(32)
    # decayed to 0 along a cosine over the run (calms the late GAN instabilities)
    learning_rate: float = option(2e-4, "initial learning rate (cosine decay)", flag="--lr")
    checkpoint_every: int = option(5, "write the checkpoint every this many epochs (and at the end)",
                                   metavar="EPOCHS")

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.checkpoint_every) < 1 or not self.learning_rate > 0:
            raise InputError(f"epochs, batch size and checkpoint interval must be at least 1 and the learning rate "
                             f"positive, not {self.epochs}, {self.batch_size}, {self.checkpoint_every}, "
                             f"{self.learning_rate}")


Step = Callable[[torch.Tensor, torch.Tensor, torch.Generator], dict[str, float]]


@dataclass
class Trainee:
    """What a method hands to :func:`train`: its modules (all checkpointed; the method's ``weights`` among them),
    optimisers, and one training step on an augmented (B, 1, H, W) batch with its brain mask."""

    method: str
    config: dict
    modules: dict[str, nn.Module]
    optimisers: dict[str, torch.optim.Optimizer]
    step: Step


def adam(module: nn.Module, settings: FitSettings) -> torch.optim.Adam:
    """Adam as the GAN-style methods use it (beta1 = 0.5)."""
    return torch.optim.Adam(module.parameters(), lr=settings.learning_rate, betas=(0.5, 0.999))


def descend(optimiser: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step of ``optimiser`` down ``loss``."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


AdversarialStep = Callable[[torch.Tensor, torch.Tensor, torch.Generator, torch.optim.Optimizer,
                            torch.optim.Optimizer], dict[str, float]]


def adversarial_trainee(method: str, config: dict, reconstructor: nn.Module, discriminator: nn.Module,
                        settings: FitSettings, step: AdversarialStep) -> Trainee:
    """A reconstructor and a discriminator (checkpointed as such), each with :func:`adam`, stepping with
    ``step(x, mask, generator, reconstructor's optimiser, discriminator's optimiser)``."""
    opt_r, opt_d = adam(reconstructor, settings), adam(discriminator, settings)
    return Trainee(method=method, config=config,
                   modules={"reconstructor": reconstructor, "discriminator": discriminator},
                   optimisers={"reconstructor": opt_r, "discriminator": opt_d},
                   step=lambda x, mask, generator: step(x, mask, generator, opt_r, opt_d))


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (``atomic.write_atomically``): a killed run or a full disk
    never leaves a truncated checkpoint."""
    write_atomically(path, lambda file: torch.save(state, file))


def _identity(trainee: Trainee, settings: FitSettings, data: SliceSet, world: World) -> str:
    """What a checkpoint must match to be resumed: method, network, settings (but how often to save), data size,
    and the number of processes (each has its own random stream)."""
    return json.dumps({"method": trainee.method, "config": trainee.config,
                       "settings": {k: v for k, v in asdict(settings).items() if k != "checkpoint_every"},
                       "slices": int(data.slices.shape[0]), **({"processes": world.size} if world.size > 1 else {})},
                      sort_keys=True)


def device_name(device: torch.device, world: World = World()) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{world.size} x {name}" if world.size > 1 else name


def _share_work(trainee: Trainee, world: World) -> list:
    """Start every process from the main one's modules, and average gradients before every optimiser step; returns
    the hook handles (to remove when training ends)."""
    broadcast_tensors([t for m in trainee.modules.values() for t in m.state_dict().values()], world)
    return [optimiser.register_step_pre_hook(
        lambda opt, args, kwargs: average_gradients([p for g in opt.param_groups for p in g["params"]], world))
        for optimiser in trainee.optimisers.values()] if world.size > 1 else []


def train(trainee: Trainee, data: SliceSet, settings: FitSettings, run_dir: Path, device: torch.device,
          resume: bool = False, stop_after: int | None = None, command: str = "", world: World = World()) -> RunRecord:
    """Train ``trainee`` on ``data``; checkpoints go to ``run_dir``. Returns the run record (not yet saved).

    ``stop_after`` ends this session after that many epochs (checkpointed), for time-limited jobs; ``resume``
    continues the same schedule from the checkpoint (the same command is required). In a ``world`` of several
    processes (in their process group), ``settings.batch_size`` is the global batch, split between them."""
    steps = data.slices.shape[0] // settings.batch_size
    if steps == 0:
        raise InputError(f"{data.slices.shape[0]} training slices are fewer than one batch of {settings.batch_size}")
    if settings.batch_size % world.size:
        raise InputError(f"a batch of {settings.batch_size} does not split evenly between {world.size} processes")
    run_dir.mkdir(parents=True, exist_ok=True)
    schedulers = {name: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps)
                  for name, opt in trainee.optimisers.items()}
    order_gen = torch.Generator().manual_seed(settings.seed)
    aug_gen = torch.Generator(device=device).manual_seed(settings.seed + 1)
    # the methods' own random draws (holes, noise) for this process's share; in one process, the augmentation's
    step_gen = aug_gen if world.size == 1 else torch.Generator(device=device).manual_seed(
        settings.seed + 1 + 1000 * (world.rank + 1))
    identity = _identity(trainee, settings, data, world)
    start_epoch, seconds_before = 0, 0.0
    checkpoint_path = run_dir / CHECKPOINT
    state = broadcast(torch.load(checkpoint_path, map_location="cpu", weights_only=True)
                      if world.main and resume and checkpoint_path.exists() else None, world)
    if state is not None:
        if state["run"] != identity:
            raise InputError(f"--resume: {checkpoint_path} was made with other settings, network or data; "
                             "use the same command, or a new --run-dir")
        if int(state["epoch"]) >= settings.epochs:
            raise InputError(f"--resume: {run_dir} has already finished its {settings.epochs} epochs")
        for group, items in (("modules", trainee.modules), ("optimisers", trainee.optimisers),
                             ("schedulers", schedulers)):
            for name, item in items.items():
                item.load_state_dict(state[group][name])
        order_gen.set_state(state["order_gen"].cpu())
        aug_gen.set_state(state["aug_gen"].cpu())
        if world.size > 1:
            step_gen.set_state(state["step_gens"][world.rank].cpu())
        start_epoch, seconds_before = int(state["epoch"]), float(state["seconds"])
        if world.main:
            print(f"resuming {run_dir} at epoch {start_epoch}")
    hooks = _share_work(trainee, world)

    slices = torch.from_numpy(data.slices).to(device, torch.float32).unsqueeze(1)
    masks = torch.from_numpy(data.masks).to(device, torch.float32).unsqueeze(1)
    count = slices.shape[0]
    started = time.perf_counter()
    history = []
    last_epoch = settings.epochs if stop_after is None else min(settings.epochs, start_epoch + stop_after)
    bar = tqdm(range(start_epoch, last_epoch), initial=start_epoch, total=settings.epochs, unit="epoch",
               disable=not world.main)
    for epoch in bar:
        order = torch.randperm(count, generator=order_gen).to(device)
        totals: dict[str, float] = {}
        for step in range(steps):
            chosen = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            x, mask = augment(slices[chosen], masks[chosen], aug_gen)
            share = slice(world.rank, None, world.size)
            for key, value in trainee.step(x[share], mask[share], step_gen).items():
                totals[key] = totals.get(key, 0.0) + value / steps
            for scheduler in schedulers.values():
                scheduler.step()
        if world.size > 1:  # the losses of the global batch: the mean of the processes' means
            totals = {k: sum(t[k] for t in gather(totals, world)) / world.size for k in totals}
        history.append({"epoch": epoch + 1, **{k: round(v, 6) for k, v in totals.items()}})
        bar.set_postfix({k: f"{v:.4f}" for k, v in totals.items()})
        if (epoch + 1) % settings.checkpoint_every == 0 or epoch + 1 == last_epoch:
            step_gens = gather(step_gen.get_state(), world) if world.size > 1 else None
            if world.main:
                save_checkpoint({"modules": {n: m.state_dict() for n, m in trainee.modules.items()},
                                 "optimisers": {n: o.state_dict() for n, o in trainee.optimisers.items()},
                                 "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
                                 "order_gen": order_gen.get_state(), "aug_gen": aug_gen.get_state(),
                                 **({"step_gens": step_gens} if step_gens else {}), "epoch": epoch + 1,
                                 "seconds": seconds_before + time.perf_counter() - started, "run": identity},
                                checkpoint_path)
    for hook in hooks:
        hook.remove()
    return RunRecord(method=trainee.method, config=trainee.config, settings=asdict(settings), source=data.source,
                     data=data.describe(), seed=settings.seed, device=device_name(device, world),
                     seconds=round(seconds_before + time.perf_counter() - started, 1), done=last_epoch,
                     planned=settings.epochs, command=command, losses=history[-5:])


class LoopRecipe(Recipe):
    """The recipe of a method :func:`train` trains: it says how to build the trainee from its settings."""

    Settings: ClassVar[type[FitSettings]] = FitSettings
    run_options = LOOP_RUN_OPTIONS

    @classmethod
    def trainee(cls, settings: FitSettings, data: SliceSet, device: torch.device) -> Trainee:
        """The modules, optimisers and training step ``settings`` describe, on ``device``."""
        raise NotImplementedError

    @classmethod
    def fit(cls, settings: FitSettings, data: SliceSet | None, run_dir: Path, run: RunOptions = RunOptions(),
            command: str = "") -> RunRecord:
        return train_in_world(lambda device: cls.trainee(settings, data, device), settings, data, run_dir, run,
                              command)


def train_in_world(trainee_for: Callable[[torch.device], Trainee], settings: FitSettings, data: SliceSet,
                   run_dir: Path, run: RunOptions, command: str) -> RunRecord:
    """Build the trainee on the device ``run`` asks for and :func:`train` it, in the process group torchrun
    started (a world of one without torchrun)."""
    world = launched_world()
    with process_group(world, choose_device(run.device)) as device:
        return train(trainee_for(device), data, settings, run_dir, device, resume=run.resume,
                     stop_after=run.stop_after, command=command, world=world)

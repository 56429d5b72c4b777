"""Processes started together by ``torchrun`` (``torch.distributed.run``): which one this is, the process group they
share while working together, and how work is split between them. A process started alone is a world of one."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from .errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the rank among the processes on this machine: which of its GPUs it uses

    @property
    def main(self) -> bool:
        """The process that writes what is written once (checkpoints, run records, cohort tables)."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every ``size``-th one from its rank on."""
        return list(items[self.rank::self.size])


def launched_world() -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK); a world of one without it."""
    try:
        return World(rank=int(os.environ.get("RANK", 0)), size=int(os.environ.get("WORLD_SIZE", 1)),
                     local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None


@contextlib.contextmanager
def process_group(world: World, device: torch.device, backend: str | None = None,
                  timeout: timedelta = timedelta(minutes=30)) -> Iterator[torch.device]:
    """Join the process group of ``world`` for the duration of the block (nothing to join in a world of one, or when
    this process is in its group already) and yield the device this process works on: its own GPU (``local_rank``)
    when ``device`` is CUDA. The backend is NCCL for CUDA and gloo otherwise, unless ``backend`` says. A process
    joins its group once: leaving and joining again can hang under torchrun."""
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if world.size == 1 or dist.is_initialized():
        yield device
        return
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), rank=world.rank,
                            world_size=world.size, timeout=timeout)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def gather(value: T, world: World) -> list[T]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    if world.size == 1:
        return [value]
    values: list = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def barrier(world: World) -> None:
    """Wait until every process of ``world`` gets here."""
    if world.size > 1:
        dist.barrier()


def broadcast(value: T, world: World) -> T:
    """The main process's ``value`` (picklable), on every process."""
    if world.size == 1:
        return value
    box = [value if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors: Sequence[torch.Tensor], world: World) -> None:
    """Overwrite ``tensors`` in place with the main process's values (as DistributedDataParallel does with a
    model's parameters and buffers when it starts)."""
    if world.size > 1:
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def average_gradients(parameters: Sequence[torch.Tensor], world: World) -> None:
    """Replace each parameter's gradient by its mean over the processes, in one all-reduce of all of them (every
    process must hold gradients for the same parameters)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if world.size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()

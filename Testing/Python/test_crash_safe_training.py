"""Crash-safe training: a tiny ``python -m training fit`` killed with SIGKILL at a random step (after at least one
checkpoint), then resumed with ``--resume``, ends with the same weights as an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from training.loop import CHECKPOINT
from training.slice_set import SliceSet

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 6


def _fit(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training", "fit", "--method", "patchgan", "--data", str(data), "--run-dir",
            str(run_dir), "--epochs", str(EPOCHS), "--batch-size", "8", "--widths", "4", "8", "--hole", "8",
            "--device", "cpu", "--seed", "3", "--checkpoint-every", "1", *extra]


def _epoch(run_dir: Path) -> int:
    """The epoch of the run's checkpoint (0 while there is none); the file is only ever complete, or absent."""
    try:
        return int(torch.load(run_dir / CHECKPOINT, weights_only=True)["epoch"])
    except FileNotFoundError:
        return 0


def _modules(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert state["epoch"] == EPOCHS
    return {f"{name}.{key}": value for name, module in state["modules"].items() for key, value in module.items()}


def test_killed_and_resumed_training_ends_with_the_uninterrupted_weights(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "slices.npz"
    SliceSet(slices=rng.random((32, 32, 32)).astype(np.float16), masks=np.ones((32, 32, 32), bool),
             case_ids=[f"c{i // 8}" for i in range(32)], source={"dataset": "noise"}).save(data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run(_fit(data, tmp_path / "straight"), check=True, capture_output=True, env=env, cwd=REPO, timeout=300)

    seed = random.randrange(2**32)
    chooser = random.Random(seed)
    target = chooser.randint(1, EPOCHS - 2)  # kill once this epoch's checkpoint is written, then a little later
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_fit(data, interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, cwd=REPO)
    try:
        while _epoch(interrupted) < target and process.poll() is None:
            time.sleep(0.005)
        time.sleep(chooser.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL, f"the run ended before it was killed (seed {seed})"
    finally:
        process.kill()
    killed_at = _epoch(interrupted)
    assert 1 <= killed_at < EPOCHS, f"seed {seed}"

    resumed = subprocess.run(_fit(data, interrupted, "--resume"), capture_output=True, encoding="utf-8",
                             errors="replace", env=env, cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {interrupted} at epoch {killed_at}" in resumed.stdout
    straight, after_crash = _modules(tmp_path / "straight"), _modules(interrupted)
    assert straight.keys() == after_crash.keys()
    for key in straight:
        assert torch.equal(straight[key], after_crash[key]), f"{key} (killed after epoch {killed_at}, seed {seed})"

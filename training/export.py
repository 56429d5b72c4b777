"""``export``: a run folder (run record + checkpoint) -> a model bundle (weights + card)."""

from __future__ import annotations

from pathlib import Path

import torch

from MedicalAnomalyDetectionLib.bundle import save_bundle
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods import method_class
from MedicalAnomalyDetectionLib.run_record import RunRecord, card_from_run

from .loop import CHECKPOINT


def export_run(run_dir: Path, name: str, out: Path, command: str = "") -> Path:
    """Write bundle ``name`` into ``out``: the modules the method's ``weights`` name, taken from the run's checkpoint,
    and the card made from its run record."""
    run = RunRecord.load(run_dir)
    weights = method_class(run.method).weights
    state = None
    if weights:
        path = Path(run_dir) / CHECKPOINT
        if not path.is_file():
            raise InputError(f"run {run_dir} has no {CHECKPOINT}")
        modules = torch.load(path, map_location="cpu", weights_only=True)["modules"]
        missing = [module for module in weights if module not in modules]
        if missing:
            raise InputError(f"checkpoint of {run_dir} lacks the module(s) {', '.join(missing)} that a "
                             f"{run.method} bundle needs")
        state = {f"{module}.{key}": value for module in weights for key, value in modules[module].items()}
    return save_bundle(out, card_from_run(run, name, command, has_weights=bool(weights)), state)

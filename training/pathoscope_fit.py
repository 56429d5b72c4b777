"""``fit --method pathoscope``: draw K healthy reference cases from a prepared slice cache (seeded) and fit
PathoSCOPE to them with the core's few-shot fit; the run folder then exports like every other method's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.fewshot.fit import FewShotResult, FewShotSettings, fit_pathoscope
from MedicalAnomalyDetectionLib.methods.backbone import load_resnet18_state
from MedicalAnomalyDetectionLib.methods.pathoscope import PathoSCOPEConfig

from .loop import CHECKPOINT
from .slice_set import SliceSet


def draw_shots(data: SliceSet, shots: int, seed: int, slices_per_shot: int = 0) -> tuple[np.ndarray, list[str]]:
    """Indices into ``data`` of ``shots`` randomly drawn cases (a shot is one reference volume: its healthy slices,
    or ``slices_per_shot`` of them drawn at random, 1 being the paper's protocol), and the drawn case ids."""
    cases = sorted(set(data.case_ids))
    if shots < 2 or shots > len(cases):
        raise InputError(f"--shots must be between 2 and the {len(cases)} cases of the slice cache, not {shots}")
    rng = np.random.default_rng(seed)
    drawn = sorted(rng.choice(cases, size=shots, replace=False).tolist())
    ids = np.array(data.case_ids)
    chosen = []
    for case in drawn:
        index = np.flatnonzero(ids == case)
        if slices_per_shot:
            index = np.sort(rng.choice(index, size=min(slices_per_shot, len(index)), replace=False))
        chosen.append(index)
    return np.concatenate(chosen), drawn


def fit_shots(data: SliceSet, shots: int, config: PathoSCOPEConfig, settings: FewShotSettings,
              slices_per_shot: int = 0, backbone: Path | None = None,
              texture_dir: Path | None = None) -> tuple[FewShotResult, list[str]]:
    """Draw the shots (seed = ``settings.seed``) and fit; returns the fit and the drawn case ids."""
    index, drawn = draw_shots(data, shots, settings.seed, slices_per_shot)
    state = load_resnet18_state(backbone) if backbone else None
    result = fit_pathoscope(torch.from_numpy(data.slices[index].astype(np.float32)),
                            torch.from_numpy(data.masks[index]), [data.case_ids[i] for i in index], config,
                            settings, backbone_state=state, texture_dir=texture_dir)
    return result, drawn


def save_run(result: FewShotResult, drawn: list[str], config: PathoSCOPEConfig, settings: FewShotSettings,
             run_dir: Path) -> dict:
    """checkpoint.pt and run.json in the layout ``export`` reads."""
    run_dir.mkdir(parents=True, exist_ok=True)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in result.state_dict.items():
        name, rest = key.split(".", 1)
        modules.setdefault(name, {})[rest] = value
    torch.save({"modules": modules, "epoch": settings.steps, "seconds": result.record["seconds"]},
               run_dir / CHECKPOINT)
    record = {"method": "pathoscope", "config": {**config.to_dict(), "fit": settings.to_dict()},
              "settings": {"seed": settings.seed, "epochs": settings.steps}, "epochs_done": settings.steps,
              "slices": result.record["slices"], "cases": len(drawn), "shots": drawn, "device": "cpu",
              "device_name": "cpu", "seconds": result.record["seconds"], "history": [result.record]}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record

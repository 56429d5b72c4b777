"""PathoSCOPE's recipe: draw K healthy reference cases from a prepared slice cache (seeded) and fit PathoSCOPE to
them with the core's few-shot fit (on the CPU); also the in-memory fit behind the few-shot tables."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from MedicalAnomalyDetectionLib.bundle import Bundle
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods.pathoscope.fit import FewShotResult, FewShotSettings, fit_pathoscope
from MedicalAnomalyDetectionLib.networks.resnet18 import load_resnet18_state
from MedicalAnomalyDetectionLib.methods.pathoscope import PathoSCOPE, PathoSCOPEConfig
from MedicalAnomalyDetectionLib.run_record import RunRecord, card_from_run

from ..loop import CHECKPOINT, save_checkpoint
from ..slice_set import SliceSet
from . import FewShotRecipe, register
from .base import RecipeSettings, RunOptions
from .settings import option


@dataclass(frozen=True, kw_only=True)
class PathoSCOPEFitSettings(RecipeSettings):
    """PathoSCOPE's fit from a slice cache: which reference cases (drawn with ``seed``) and the few-shot fit."""

    shots: int = option(8, "reference cases drawn from the cache (seed: --seed)")
    slices_per_shot: int = option(0, "healthy slices per drawn case (0: all; 1: the paper's protocol)")
    steps: int = option(FewShotSettings.steps, "training steps of adapter and discriminator")
    eta: float = option(FewShotSettings.eta, "PiEG perturbation strength")
    backbone: Path | None = option(None, "torchvision ResNet18 state dict (default: random init)")
    textures: Path | None = option(None, "folder of extra texture images for synthetic lesions")
    local_contrastive: bool = option(True, "ablation: drop L_LC", flag="--no-local-contrastive")
    global_contrastive: bool = option(True, "ablation: drop L_GC", flag="--no-global-contrastive")

    def few_shot(self) -> FewShotSettings:
        """The core's few-shot fit settings these give."""
        return FewShotSettings(steps=self.steps, seed=self.seed, eta=self.eta,
                               local_contrastive=self.local_contrastive, global_contrastive=self.global_contrastive)


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


def run_record(result: FewShotResult, drawn: list[str], config: PathoSCOPEConfig, settings: FewShotSettings,
               data: SliceSet, command: str) -> RunRecord:
    """The run record of a fit to the ``drawn`` cases of ``data``."""
    return RunRecord(method=PathoSCOPE.name, config={**config.to_dict(), "fit": settings.to_dict()},
                     settings=settings.to_dict(), source=data.source,
                     data=f"{data.source.get('dataset')} {data.source.get('split')} ({len(drawn)} cases, "
                          f"{result.record['slices']} healthy slices); reference cases {', '.join(drawn)}",
                     seed=settings.seed, device="cpu", seconds=result.record["seconds"], done=settings.steps,
                     planned=settings.steps, command=command, losses=[result.record["final_losses"]],
                     references=drawn, notes={"fit": result.record})


def fit_in_memory(data: SliceSet, shots: int, settings: FewShotSettings,
                  backbone: Path | None = None) -> tuple[Bundle, list[str]]:
    """Fit to ``shots`` cases drawn with ``settings.seed`` and wrap the result as an unsaved bundle for scoring;
    also returns the drawn case ids."""
    config = PathoSCOPEConfig(backbone=backbone.name if backbone else f"random (seed {settings.seed})")
    result, drawn = fit_shots(data, shots, config, settings, backbone=backbone)
    card = card_from_run(run_record(result, drawn, config, settings, data, "in-memory fit"),
                         f"pathoscope-k{shots}-seed{settings.seed}")
    return Bundle(card=card, state_dict=result.state_dict, path=Path(".")), drawn


def save_run(result: FewShotResult, run_dir: Path) -> None:
    """checkpoint.pt in the layout ``export`` reads."""
    run_dir.mkdir(parents=True, exist_ok=True)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in result.state_dict.items():
        name, rest = key.split(".", 1)
        modules.setdefault(name, {})[rest] = value
    save_checkpoint({"modules": modules, "seconds": result.record["seconds"]}, run_dir / CHECKPOINT)


@register
class PathoSCOPERecipe(FewShotRecipe):
    name = PathoSCOPE.name
    help = "few-shot PathoSCOPE fitted to K reference cases drawn from the cache (runs on the CPU)"
    label = "PathoSCOPE"
    variants = {"L_LC + L_GC": {}, "L_LC": {"global_contrastive": False}, "L_GC": {"local_contrastive": False}}
    full_variant = "L_LC + L_GC"
    Settings = PathoSCOPEFitSettings

    @classmethod
    def fit(cls, settings: PathoSCOPEFitSettings, data: SliceSet | None, run_dir: Path,
            run: RunOptions = RunOptions(), command: str = "") -> RunRecord:
        backbone = settings.backbone
        config = PathoSCOPEConfig(backbone=backbone.name if backbone else f"random (seed {settings.seed})")
        few_shot = settings.few_shot()
        result, drawn = fit_shots(data, settings.shots, config, few_shot, settings.slices_per_shot, backbone,
                                  settings.textures)
        save_run(result, run_dir)
        return run_record(result, drawn, config, few_shot, data, command)

    @classmethod
    def fit_shots(cls, data: SliceSet, shots: int, seed: int, settings: dict) -> tuple[Bundle, list[str], float]:
        started = time.perf_counter()
        bundle, drawn = fit_in_memory(data, shots, replace(FewShotSettings(**settings), seed=seed))
        return bundle, drawn, time.perf_counter() - started

    @classmethod
    def settings_key(cls, settings: dict) -> dict:
        return {k: v for k, v in FewShotSettings(**settings).to_dict().items()
                if k not in ("seed", "local_contrastive", "global_contrastive")}

"""``fewshot``: the paper's Table 1 and Table 3 on our data. For each number of shots K and each random draw of the
reference cases, PathoSCOPE is fitted (in memory) and scored on the test splits; the Patch-GAN and intensity bundles
are scored on the same splits. Results accumulate in ``results.json`` (a rerun skips what is there) and are
summarised as mean +- std over the draws in ``table.md``."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from MedicalAnomalyDetectionLib.bundle import Bundle, load_bundle
from MedicalAnomalyDetectionLib.card import ModelCard, Preprocessing
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.fewshot.fit import FewShotSettings
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.methods.pathoscope import PathoSCOPEConfig

from .datasets import load_cases
from .evaluation import score_split, summarise
from .pathoscope_fit import fit_shots
from .slice_set import SliceSet

METRICS = (("slice_auroc", "image AUROC"), ("voxel_auroc", "pixel AUROC"), ("pro", "AU-PRO"), ("best_dice", "⌈Dice⌉"))
# Table 3's variants: which contrastive losses are on.
VARIANTS = {"L_LC + L_GC": (True, True), "L_LC": (True, False), "L_GC": (False, True)}
FULL = "L_LC + L_GC"
# Key of results.json that holds the fit settings every entry was made with (a rerun must use the same).
SETTINGS_KEY = "fit settings"


def fit_in_memory(data: SliceSet, shots: int, settings: FewShotSettings,
                  backbone: Path | None = None) -> tuple[Bundle, list[str]]:
    """Fit PathoSCOPE to ``shots`` cases drawn with ``settings.seed`` and wrap it as an (unsaved) bundle for scoring;
    also returns the drawn case ids."""
    config = PathoSCOPEConfig(backbone=backbone.name if backbone else f"random (seed {settings.seed})")
    fitted, drawn = fit_shots(data, shots, config, settings, backbone=backbone)
    card = ModelCard(name=f"pathoscope-k{shots}-seed{settings.seed}", method="pathoscope", version="eval",
                     modality=data.source["modality"],
                     preprocessing=Preprocessing.from_dict(data.source["preprocessing"]),
                     hyperparameters={**config.to_dict(), "fit": settings.to_dict()})
    return Bundle(card=card, state_dict=fitted.state_dict, path=Path(".")), drawn


def _measure(bundle: Bundle, data_root: Path, dataset: str, cache: dict) -> dict:
    cases = load_cases(data_root / dataset, "test", bundle.card.modality)
    scores = score_split(build_method(bundle, torch.device("cpu")), bundle, cases, cache=cache)
    summary = summarise(scores, None)
    return {key: summary.get(key) for key, _ in METRICS}


def run_fewshot_table(data: SliceSet, data_root: Path, datasets: list[str], shots: list[int], draws: int,
                      ablation_draws: int, ablation_dataset: str, baselines: list[str], out: Path,
                      settings: FewShotSettings, command: str) -> dict:
    """Fill ``out/results.json`` (keys "method|K|draw|dataset") and write ``out/table.md``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    fit_settings = {k: v for k, v in settings.to_dict().items()
                    if k not in ("seed", "local_contrastive", "global_contrastive")}
    if results.setdefault(SETTINGS_KEY, fit_settings) != fit_settings:
        raise InputError(f"{path} holds results of other fit settings ({results[SETTINGS_KEY]}); use another --out")
    cache: dict = {}  # each test case read and preprocessed once

    def save() -> None:
        path.write_text(json.dumps(results, indent=2) + "\n")

    save()

    for name in baselines:
        bundle = load_bundle(name)
        for dataset in datasets:
            key = f"{bundle.card.name}|-|-|{dataset}"
            if key not in results:
                results[key] = _measure(bundle, data_root, dataset, cache)
                save()
    for k in shots:
        for draw in range(draws):
            for variant, (local, global_) in VARIANTS.items():
                if variant != FULL and draw >= ablation_draws:
                    continue
                wanted = datasets if variant == FULL else [ablation_dataset]
                keys = {d: f"PathoSCOPE {variant}|{k}|{draw}|{d}" for d in wanted}
                if all(key in results for key in keys.values()):
                    continue
                fit_settings = replace(settings, seed=draw, local_contrastive=local, global_contrastive=global_)
                started = time.perf_counter()
                bundle, drawn = fit_in_memory(data, k, fit_settings)
                seconds = time.perf_counter() - started
                for dataset, key in keys.items():
                    results[key] = {**_measure(bundle, data_root, dataset, cache), "shots": drawn,
                                    "fit_seconds": round(seconds, 1)}
                    print(key, results[key])
                save()
    (out / "table.md").write_text(markdown(results, datasets, shots, ablation_dataset, command) + "\n")
    return results


def _cell(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def markdown(results: dict, datasets: list[str], shots: list[int], ablation_dataset: str, command: str) -> str:
    """Table 1 per dataset (rows: baselines, PathoSCOPE at each K), then Table 3 (variants x K) on the ablation set."""
    rows = [f"Made by `{command}`. Mean ± std over random draws of the reference cases (the number of draws is in "
            "brackets; every draw in results.json counts, also those an earlier run with more --draws made); test "
            "splits, pooled over cases.", ""]
    results = {key: value for key, value in results.items() if key != SETTINGS_KEY}
    methods = sorted({key.split("|")[0] for key in results if key.split("|")[1] == "-"})
    for dataset in datasets:
        rows += [f"### {dataset} test", "", "| method | K | " + " | ".join(t for _, t in METRICS) + " |",
                 "|---|---|" + "---|" * len(METRICS)]
        for method in methods:
            entry = results.get(f"{method}|-|-|{dataset}")
            if entry:
                rows.append(f"| {method} (bundled) | – | "
                            + " | ".join(_cell([entry.get(m)]) for m, _ in METRICS) + " |")
        for k in shots:
            entries = [v for key, v in results.items() if key.startswith(f"PathoSCOPE {FULL}|{k}|")
                       and key.endswith(f"|{dataset}")]
            if entries:
                rows.append(f"| PathoSCOPE ({len(entries)}) | {k} | "
                            + " | ".join(_cell([e.get(m) for e in entries]) for m, _ in METRICS) + " |")
        rows.append("")
    rows += [f"### Ablation of the contrastive losses (Table 3), {ablation_dataset} test: image AUROC / pixel AUROC",
             "", "| losses | " + " | ".join(f"K = {k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    key = lambda variant, k, draw: f"PathoSCOPE {variant}|{k}|{draw}|{ablation_dataset}"  # noqa: E731
    shared = {k: sorted({int(name.split("|")[2]) for name in results if name.startswith(f"PathoSCOPE {FULL}|{k}|")
                         and all(key(v, k, name.split("|")[2]) in results for v in VARIANTS)}) for k in shots}
    for variant in VARIANTS:  # each K over the draws that every variant has, so the rows compare like with like
        cells = []
        for k in shots:
            entries = [results[key(variant, k, draw)] for draw in shared[k]]
            cells.append(f"{_cell([e.get('slice_auroc') for e in entries])} / "
                         f"{_cell([e.get('voxel_auroc') for e in entries])} ({len(entries)})" if entries else "–")
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(rows)

"""``fewshot``: the paper's Table 1 and Table 3 on our data. For each number of shots K and each random draw of the
reference cases, a few-shot method (PathoSCOPE) is fitted in memory and scored on the test splits; bundled models
are scored on the same splits. Results accumulate in ``results.json`` (a rerun skips what is there) and are
summarised as mean +- std over the draws in ``table.md``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from MedicalAnomalyDetectionLib.bundle import Bundle, load_bundle
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods import build_method

from .datasets import load_cases
from .evaluation import score_split, summarise
from .recipes import FewShotRecipe
from .slice_set import SliceSet

METRICS = (("slice_auroc", "image AUROC"), ("voxel_auroc", "pixel AUROC"), ("pro", "AU-PRO"), ("best_dice", "⌈Dice⌉"))
# Key of results.json that holds the fit settings every entry was made with (a rerun must use the same).
SETTINGS_KEY = "fit settings"


def _measure(bundle: Bundle, data_root: Path, dataset: str, cache: dict) -> dict:
    cases = load_cases(data_root / dataset, "test", bundle.card.modality)
    scores = score_split(build_method(bundle, torch.device("cpu")), bundle, cases, cache=cache)
    summary = summarise(scores, None)
    return {key: summary.get(key) for key, _ in METRICS}


def run_fewshot_table(method: type[FewShotRecipe], data: SliceSet, data_root: Path, datasets: list[str],
                      shots: list[int], draws: int, ablation_draws: int, ablation_dataset: str, baselines: list[str],
                      out: Path, settings: dict, command: str) -> dict:
    """Fill ``out/results.json`` (keys "<method> <variant>|K|draw|dataset") and write ``out/table.md``;
    ``settings`` changes the method's default fit settings (e.g. its number of steps)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    fit_settings = method.settings_key(settings)
    if results.setdefault(SETTINGS_KEY, fit_settings) != fit_settings:
        raise InputError(f"{path} holds results of other fit settings ({results[SETTINGS_KEY]}); use another --out")
    cache: dict = {}  # each test case read and preprocessed once
    label = method.label

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
            for variant, change in method.variants.items():
                if variant != method.full_variant and draw >= ablation_draws:
                    continue
                wanted = datasets if variant == method.full_variant else [ablation_dataset]
                keys = {d: f"{label} {variant}|{k}|{draw}|{d}" for d in wanted}
                if all(key in results for key in keys.values()):
                    continue
                bundle, drawn, seconds = method.fit_shots(data, k, draw, {**settings, **change})
                for dataset, key in keys.items():
                    results[key] = {**_measure(bundle, data_root, dataset, cache), "shots": drawn,
                                    "fit_seconds": round(seconds, 1)}
                    print(key, results[key])
                save()
    table = _this_run(method, results, draws, ablation_draws)
    (out / "table.md").write_text(markdown(method, table, datasets, shots, ablation_dataset, command) + "\n")
    return results


def _this_run(method: type[FewShotRecipe], results: dict, draws: int, ablation_draws: int) -> dict:
    """The entries of ``results`` that this run's ``draws`` and ``ablation_draws`` name: an earlier run with more
    draws leaves entries in results.json that must not mix into this run's cells."""
    def wanted(key: str) -> bool:
        name, _, draw, _ = key.split("|")
        if draw == "-":
            return True
        return int(draw) < (draws if name == f"{method.label} {method.full_variant}" else ablation_draws)
    return {key: value for key, value in results.items() if key == SETTINGS_KEY or wanted(key)}


def _cell(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def markdown(method: type[FewShotRecipe], results: dict, datasets: list[str], shots: list[int],
             ablation_dataset: str, command: str) -> str:
    """Table 1 per dataset (rows: baselines, the method at each K), then Table 3 (variants x K) on the ablation
    set."""
    label, full = method.label, method.full_variant
    rows = [f"Made by `{command}`. Mean ± std over random draws of the reference cases (the number of draws is in "
            "brackets: the command's --draws, --ablation-draws for Table 3); test splits, pooled over cases.", ""]
    results = {key: value for key, value in results.items() if key != SETTINGS_KEY}
    baselines = sorted({key.split("|")[0] for key in results if key.split("|")[1] == "-"})
    for dataset in datasets:
        rows += [f"### {dataset} test", "", "| method | K | " + " | ".join(t for _, t in METRICS) + " |",
                 "|---|---|" + "---|" * len(METRICS)]
        for baseline in baselines:
            entry = results.get(f"{baseline}|-|-|{dataset}")
            if entry:
                rows.append(f"| {baseline} (bundled) | – | "
                            + " | ".join(_cell([entry.get(m)]) for m, _ in METRICS) + " |")
        for k in shots:
            entries = [v for key, v in results.items() if key.startswith(f"{label} {full}|{k}|")
                       and key.endswith(f"|{dataset}")]
            if entries:
                rows.append(f"| {label} ({len(entries)}) | {k} | "
                            + " | ".join(_cell([e.get(m) for e in entries]) for m, _ in METRICS) + " |")
        rows.append("")
    rows += [f"### Ablation (Table 3), {ablation_dataset} test: image AUROC / pixel AUROC",
             "", "| variant | " + " | ".join(f"K = {k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    key = lambda variant, k, draw: f"{label} {variant}|{k}|{draw}|{ablation_dataset}"  # noqa: E731
    shared = {k: sorted({int(name.split("|")[2]) for name in results if name.startswith(f"{label} {full}|{k}|")
                         and all(key(v, k, name.split("|")[2]) in results for v in method.variants)})
              for k in shots}
    for variant in method.variants:  # each K over the draws that every variant has, so the rows compare like with like
        cells = []
        for k in shots:
            entries = [results[key(variant, k, draw)] for draw in shared[k]]
            cells.append(f"{_cell([e.get('slice_auroc') for e in entries])} / "
                         f"{_cell([e.get('voxel_auroc') for e in entries])} ({len(entries)})" if entries else "–")
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(rows)

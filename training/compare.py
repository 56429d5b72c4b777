"""``compare``: every method on the same test splits, as the paper's Tables 1 and 2 and Figs. 3 and 6."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from MedicalAnomalyDetectionLib.bundle import Bundle, load_bundle, write_card
from MedicalAnomalyDetectionLib.methods import applicable_ablations, build_method, with_overrides

from .datasets import load_cases
from .evaluation import metrics_key, score_split, summarise, write_report
from .plots import plot_roc, plot_score_distributions

TABLE_METRICS = (("slice_auroc", "slice AUROC"), ("voxel_auroc", "voxel AUROC"), ("best_dice", "⌈Dice⌉"))


def _variants(bundle: Bundle) -> list[tuple[str, str | None, Bundle]]:
    """(row name, ablation, bundle): the bundle as carded, then each ablation of its method that changes it (the
    Patch-GAN's "ranking off" is the paper's Table 2)."""
    return [(bundle.card.name, None, bundle)] + [(f"{bundle.card.name} ({name})", name, with_overrides(bundle, change))
                                                 for name, change in applicable_ablations(bundle).items()]


def compare(models: list[str], data_root: Path, datasets: list[str], out: Path, device: torch.device,
            update_cards: bool = False, command: str = "", reports: Path | None = None) -> dict:
    """Evaluate each model (and its no-ranking variant) on each dataset's test split; write comparison.json,
    comparison.md, and per dataset roc_<dataset>.png and scores_<dataset>.png. With ``update_cards`` each model's
    metrics go into its card, with ``command`` (the command line that made them); with ``reports`` each model's
    per-case report (``evaluate``'s) goes to ``reports/<model>[-<ablation>]/<dataset>``."""
    out.mkdir(parents=True, exist_ok=True)
    bundles = [load_bundle(model) for model in models]
    variants = {bundle.card.name: _variants(bundle) for bundle in bundles}
    results: dict[str, dict[str, dict]] = {}
    for dataset in datasets:
        curves, truths = {}, {}  # truths: each case read and prepared once per preprocessing
        for bundle in bundles:
            cases = load_cases(data_root / dataset, "test", bundle.card.modality)
            for name, ablation, variant in variants[bundle.card.name]:
                scores = score_split(build_method(variant, device), variant, cases, cache=truths)
                summary = summarise(scores, variant.card.thresholds.get("pixel"))
                results.setdefault(name, {})[dataset] = summary
                curves[name] = (np.concatenate(scores.slice_labels), np.concatenate(scores.slice_scores))
                if reports is not None:
                    folder = reports / (bundle.card.name + (f"-{ablation.replace(' ', '-')}" if ablation else ""))
                    write_report(scores, {**summary, "command": command}, f"{name} on {dataset} test",
                                 folder / dataset)
                if update_cards:
                    key = metrics_key(dataset, "test", ablation)
                    bundle.card.metrics[key] = {**summary, "dataset": dataset, "split": "test",
                                                "modality": bundle.card.modality, "command": command}
                print(f"{name} on {dataset}: " + ", ".join(f"{k} {summary.get(k)}" for k, _ in TABLE_METRICS))
        plot_roc(curves, f"slice-level ROC on {dataset} test", out / f"roc_{dataset}.png")
        plot_score_distributions(curves, f"slice scores on {dataset} test", out / f"scores_{dataset}.png")
    if update_cards:
        for bundle in bundles:
            write_card(bundle.path, bundle.card)
    (out / "comparison.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "comparison.md").write_text(markdown(results, datasets) + "\n")
    return results


def markdown(results: dict[str, dict[str, dict]], datasets: list[str]) -> str:
    """Rows: methods; columns: each dataset's slice AUROC, voxel AUROC and ⌈Dice⌉; the best of each column bold."""
    header = "| method | " + " | ".join(f"{d} {title}" for d in datasets for _, title in TABLE_METRICS) + " |"
    rows = [header, "|---|" + "---|" * (len(datasets) * len(TABLE_METRICS))]
    best = {(d, k): max((r[d].get(k) or 0.0) for r in results.values()) for d in datasets for k, _ in TABLE_METRICS}
    for name, per_dataset in results.items():
        cells = []
        for dataset in datasets:
            for key, _ in TABLE_METRICS:
                value = per_dataset[dataset].get(key)
                text = "–" if value is None else f"{value:.3f}"
                cells.append(f"**{text}**" if value is not None and value == best[(dataset, key)] else text)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)

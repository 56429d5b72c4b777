"""``compare``: every method on the same test splits, as the paper's Tables 1 and 2 and Figs. 3 and 6."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from MedicalAnomalyDetectionLib.bundle import Bundle, load_bundle
from MedicalAnomalyDetectionLib.card import ModelCard
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods import applicable_ablations, build_method, with_overrides

from .datasets import load_cases
from .evaluation import add_metrics, metrics_key, score_split, summarise, write_report
from .plots import plot_roc, plot_score_distributions

TABLE_METRICS = (("slice_auroc", "slice AUROC"), ("voxel_auroc", "voxel AUROC"), ("best_dice", "⌈Dice⌉"))
# The "position only" reference rows: slice AUROC of content-free slice scores (evaluation.POSITION_ONLY).
POSITION_ROWS = (("brain_area", "position only: brain area"), ("centrality", "position only: centrality"))


def training_budget(card: ModelCard) -> str:
    """What training the card records, for the table: "600 epochs, 5.6 min on NVIDIA H100 80GB HBM3", "150 steps,
    9.8 min on cpu", "0.8 s on cpu" (a one-pass fit), or "none" for a method that is not trained."""
    training = card.training
    if "seconds" not in training:
        return "none"
    seconds = float(training["seconds"])
    duration = f"{seconds:.1f} s" if seconds < 60 else (f"{seconds / 60:.1f} min" if seconds < 3600
                                                          else f"{seconds / 3600:.1f} h")
    settings = training.get("settings", {})
    counts = [f"{settings[unit]} {unit}" for unit in ("epochs", "steps") if int(settings.get(unit, 1)) > 1]
    return ", ".join(counts + [f"{duration} on {training.get('device', 'an unrecorded device')}"])


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
    measured: dict[Path, dict[str, dict]] = {}  # card metrics to add, by bundle folder
    for dataset in datasets:
        curves, references, staged = {}, {}, {}  # staged: each case read and staged once per preprocessing
        for bundle in bundles:
            cases = load_cases(data_root / dataset, "test", bundle.card.modality)
            for name, ablation, variant in variants[bundle.card.name]:
                scores = score_split(build_method(variant, device), variant, cases, cache=staged)
                summary = summarise(scores, variant.card.thresholds.get("pixel"))
                results.setdefault(name, {})[dataset] = summary
                curves[name] = (np.concatenate(scores.slice_labels), np.concatenate(scores.slice_scores))
                for key, title in POSITION_ROWS:  # the reference, from the first model's slices
                    if scores.position_scores.get(key):
                        references.setdefault(title, (curves[name][0], np.concatenate(scores.position_scores[key])))
                if reports is not None:
                    folder = reports / (bundle.card.name + (f"-{ablation.replace(' ', '-')}" if ablation else ""))
                    write_report(scores, {**summary, "command": command}, f"{name} on {dataset} test",
                                 folder / dataset)
                if update_cards:
                    key = metrics_key(dataset, "test", ablation)
                    measured.setdefault(bundle.path, {})[key] = {**summary, "dataset": dataset, "split": "test",
                                                                 "modality": bundle.card.modality, "command": command}
                print(f"{name} on {dataset}: " + ", ".join(f"{k} {summary.get(k)}" for k, _ in TABLE_METRICS)
                      + f", position-only slice AUROC {summary.get('position_only_slice_auroc')}")
        plot_roc({**curves, **references}, f"slice-level ROC on {dataset} test", out / f"roc_{dataset}.png")
        plot_score_distributions(curves, f"slice scores on {dataset} test", out / f"scores_{dataset}.png")
    for folder, metrics in measured.items():
        add_metrics(folder, metrics)
    (out / "comparison.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "comparison.md").write_text(markdown(results, datasets, _budgets(bundles)) + "\n")
    return results


def _budgets(bundles: list[Bundle]) -> dict[str, str]:
    """Each table row's training budget (an ablation row has its model's)."""
    return {name: training_budget(bundle.card) for bundle in bundles for name, _, _ in _variants(bundle)}


def rewrite_table(models: list[str], datasets: list[str], out: Path) -> str:
    """Rewrite ``out``/comparison.md, columns in the order of ``datasets``, from ``out``/comparison.json (as
    ``compare`` wrote it, or merged from runs on separate datasets) and the models' cards, scoring nothing; returns
    the table."""
    source = out / "comparison.json"
    if not source.is_file():
        raise InputError(f"{source} does not exist: run compare without --table-only first")
    results = json.loads(source.read_text())
    missing = sorted({d for per_dataset in results.values() for d in set(datasets) - set(per_dataset)})
    if missing:
        raise InputError(f"{source} has no results on {', '.join(missing)} for every method")
    table = markdown(results, datasets, _budgets([load_bundle(model) for model in models]))
    (out / "comparison.md").write_text(table + "\n")
    return table


def _per_case_text(pooled: float | None, spread: dict | None) -> str:
    """"pooled (per case mean ± SD)", or "–"."""
    if pooled is None:
        return "–"
    return f"{pooled:.3f}" + (f" ({spread['mean']:.3f} ± {spread['sd']:.3f})" if spread else "")


def markdown(results: dict[str, dict[str, dict]], datasets: list[str], budgets: dict[str, str]) -> str:
    """Rows: methods; columns: each method's training budget (``budgets``, by row), each dataset's slice AUROC, voxel
    AUROC, ⌈Dice⌉ (the best of each column bold) and Dice of the default label map (pooled, and per lesion-holding
    case mean ± SD). Below the methods, the "position only" rows: the slice AUROC of content-free scores (a slice's
    brain area, its centrality) of the same eligible slices, the reference a slice AUROC is to be read against (a
    range where models' preprocessing differs)."""
    header = ("| method | training budget | "
              + " | ".join(f"{d} {title}" for d in datasets for _, title in TABLE_METRICS)
              + "".join(f" | {d} label map Dice (per case)" for d in datasets) + " |")
    columns = len(datasets) * (len(TABLE_METRICS) + 1)
    rows = [header, "|---|---|" + "---|" * columns]
    best = {(d, k): max((r[d].get(k) or 0.0) for r in results.values()) for d in datasets for k, _ in TABLE_METRICS}
    for name, per_dataset in results.items():
        cells = []
        for dataset in datasets:
            for key, _ in TABLE_METRICS:
                value = per_dataset[dataset].get(key)
                text = "–" if value is None else f"{value:.3f}"
                cells.append(f"**{text}**" if value is not None and value == best[(dataset, key)] else text)
        cells += [_per_case_text(per_dataset[d].get("label_map_dice"), per_dataset[d].get("label_map_dice_per_case"))
                  for d in datasets]
        rows.append(f"| {name} | {budgets.get(name, '–')} | " + " | ".join(cells) + " |")
    for key, title in POSITION_ROWS:
        cells = []
        for dataset in datasets:
            for metric, _ in TABLE_METRICS:
                found = sorted({r[dataset].get("position_only_slice_auroc", {}).get(key) for r in results.values()}
                               - {None})
                if metric != "slice_auroc" or not found:
                    cells.append("–")
                else:
                    cells.append(f"{found[0]:.3f}" if len(found) == 1 else f"{found[0]:.3f}–{found[-1]:.3f}")
        cells += ["–"] * len(datasets)
        rows.append(f"| {title} | none | " + " | ".join(cells) + " |")
    return "\n".join(rows)

"""The SCRPS paper's Table 1 and Fig. 3 ablations on our T1 data, beside the bundled T1 models.

    python docs/scrps/scrps_table.py --model Resources/Models/scrps-t1 --baselines patchgan-t1 intensity-t1 \\
        --data-root ../shared/data --out docs/scrps --steps 0 5 10 20 --update-card

Volume level (the paper's AUROC): the 8 healthy ``ixi_t1`` test volumes are the negatives, the 3 ``mslub`` T1 test
volumes the positives, and a volume's score is the highest score among its eligible slices (the pipeline's volume
score). ⌈Dice⌉ (one threshold for the split), voxel and slice AUROC on ``mslub`` T1; at each model's calibrated
threshold the Dice on ``mslub`` and the share of healthy ``ixi_t1`` test brain voxels flagged. All through the same
inference path and metrics as ``python -m training evaluate`` (``training.evaluation.score_split``/``summarise``).

SCRPS variants (the paper's Fig. 3: K2 with K1 = 5 K2, swap start L2 with L2 = 0 = no swap, one-stage retrieval;
and our refinement steps after the encoder) share one inversion per slice (``InversionCache``: the longest
refinement runs first and the shorter ones are its snapshots), so the table costs about one inversion of the test
volumes. Seconds per slice for each number of refinement steps are measured separately (a batch of 16 ``mslub``
slices, no cache, the threads of this process). With ``--update-card`` the default model's evaluations go into its
card (as ``evaluate --update-card`` would put them) and its per-case reports into docs/results/<model>/.

Writes ``results.json`` and ``table.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "MedicalAnomalyDetection")]

from MedicalAnomalyDetectionLib.bundle import load_bundle, write_card  # noqa: E402
from MedicalAnomalyDetectionLib.methods import build_method, with_overrides  # noqa: E402
from MedicalAnomalyDetectionLib.methods.scrps import SCRPS, InversionCache  # noqa: E402
from MedicalAnomalyDetectionLib.preprocessing import prepare_volume  # noqa: E402
from training.datasets import load_cases  # noqa: E402
from training.evaluation import metrics_key, score_split, summarise, write_report  # noqa: E402
from training.metrics import auroc_ap  # noqa: E402

NEGATIVE, POSITIVE = "ixi_t1", "mslub"
# The paper's Fig. 3: the method's own ablations, less the refinement steps (a table of their own here).
ABLATIONS = {name: change for name, change in SCRPS.ablations.items() if "refine_steps" not in change}


def evaluate(name: str, bundle, method, data_root: Path, truths: dict) -> dict:
    """Score both test splits; the volume-level AUROC and the split summaries."""
    started = time.perf_counter()
    threshold = bundle.card.thresholds.get("pixel")
    splits = {}
    for dataset in (NEGATIVE, POSITIVE):
        cases = load_cases(data_root / dataset, "test", bundle.card.modality)
        splits[dataset] = score_split(method, bundle, cases, cache=truths)
    negatives = [row["volume_score"] for row in splits[NEGATIVE].rows]
    positives = [row["volume_score"] for row in splits[POSITIVE].rows]
    volume = auroc_ap(np.r_[np.zeros(len(negatives)), np.ones(len(positives))], np.r_[negatives, positives])
    healthy = summarise(splits[NEGATIVE], threshold)
    lesion = summarise(splits[POSITIVE], threshold)
    result = {"volume_auroc": round(volume["auroc"], 4), "volume_scores": {NEGATIVE: negatives, POSITIVE: positives},
              "mslub": lesion, "ixi_t1": healthy, "threshold": threshold,
              "seconds": round(time.perf_counter() - started, 1), "splits": splits}
    print(f"{name}: volume AUROC {result['volume_auroc']}, ⌈Dice⌉ {lesion.get('best_dice')}, "
          f"Dice@t {lesion.get('dice_at_threshold')}, healthy FPR {healthy.get('healthy_fpr_at_threshold')} "
          f"({result['seconds']} s)", flush=True)
    return result


def seconds_per_slice(bundle, steps: list[int], data_root: Path) -> dict[int, float]:
    """Seconds per slice of SCRPS scoring (a batch of 16 mslub slices, no inversion cache) for each step count."""
    case = load_cases(data_root / POSITIVE, "test", bundle.card.modality)[0]
    image, brain, _ = case.read()
    prepared = prepare_volume(image, bundle.card.preprocessing, brain)
    middle = np.flatnonzero(prepared.mask.any(axis=(1, 2)))
    chosen = middle[len(middle) // 2 - 8:len(middle) // 2 + 8]
    x, mask = torch.from_numpy(prepared.slices[chosen]), torch.from_numpy(prepared.mask[chosen])
    timings = {}
    for count in steps:
        method = build_method(with_overrides(bundle, {"refine_steps": count}), torch.device("cpu"))
        method.score(x[:2], mask[:2])
        started = time.perf_counter()
        method.score(x, mask)
        timings[count] = round((time.perf_counter() - started) / len(x), 3)
    return timings


def row(name: str, result: dict, extra: str = "") -> str:
    lesion, healthy = result["mslub"], result["ixi_t1"]
    cells = [result["volume_auroc"], lesion.get("best_dice"), lesion.get("voxel_auroc"), lesion.get("slice_auroc"),
             lesion.get("dice_at_threshold"), healthy.get("healthy_fpr_at_threshold")]
    return f"| {name} | " + " | ".join("–" if c is None else f"{c:.3f}" if isinstance(c, float) else str(c)
                                     for c in cells) + f" |{extra}"


HEADER = ("| model | volume AUROC (ixi_t1 test vs mslub T1 test) | mslub ⌈Dice⌉ | mslub voxel AUROC | "
          "mslub slice AUROC | mslub Dice @ calibrated | ixi_t1 test healthy voxels flagged |\n|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the SCRPS bundle")
    parser.add_argument("--baselines", nargs="*", default=["patchgan-t1", "intensity-t1"])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("docs/scrps"))
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 5, 10, 20],
                        help="refinement steps to compare (the card's own is always included)")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--update-card", action="store_true")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    device = torch.device("cpu")
    bundle = load_bundle(args.model)
    default_steps = int(bundle.card.hyperparameters["refine_steps"])
    steps = sorted(set(args.steps) | {default_steps}, reverse=True)
    cache = InversionCache(snapshots=tuple(steps))
    truths: dict = {}
    results: dict = {"command": command, "threads": torch.get_num_threads(), "models": {}, "steps": {},
                     "ablations": {}}
    started = time.perf_counter()

    for count in steps:  # the longest first: the others are its snapshots
        variant = with_overrides(bundle, {"refine_steps": count})
        method = build_method(variant, device)
        method.inversion_cache = cache
        result = evaluate(f"{bundle.card.name} ({count} steps)", variant, method, args.data_root, truths)
        results["steps"][count] = result
    results["models"][bundle.card.name] = results["steps"][default_steps]
    if not args.no_ablations:
        for name, change in ABLATIONS.items():
            variant = with_overrides(bundle, change)
            method = build_method(variant, device)
            method.inversion_cache = cache
            results["ablations"][name] = evaluate(f"{bundle.card.name} ({name})", variant, method, args.data_root,
                                                  truths)
    for name in args.baselines:
        baseline = load_bundle(name)
        results["models"][name] = evaluate(name, baseline, build_method(baseline, device), args.data_root, truths)
    timings = seconds_per_slice(bundle, steps, args.data_root)

    if args.update_card:
        default = results["models"][bundle.card.name]
        for dataset in (NEGATIVE, POSITIVE):
            summary = {**default[dataset], "dataset": dataset, "split": "test", "modality": bundle.card.modality,
                       "command": command}
            bundle.card.metrics[metrics_key(dataset, "test")] = summary
            write_report(default["splits"][dataset], summary, f"{bundle.card.name} on {dataset} test",
                         ROOT / "docs" / "results" / bundle.card.name / dataset)
        bundle.card.metrics["volume_auroc ixi_t1/test vs mslub/test"] = {
            "auroc": default["volume_auroc"], "negatives": "ixi_t1 test (healthy)", "positives": "mslub test (T1)",
            "volume_score": "highest eligible slice score", "command": command}
        write_card(bundle.path, bundle.card)

    results["seconds"] = round(time.perf_counter() - started, 1)
    results["seconds_per_slice"] = timings
    strip = lambda r: {k: v for k, v in r.items() if k != "splits"}  # noqa: E731
    saved = {**results, "models": {k: strip(v) for k, v in results["models"].items()},
             "steps": {k: strip(v) for k, v in results["steps"].items()},
             "ablations": {k: strip(v) for k, v in results["ablations"].items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(saved, indent=2) + "\n")

    hp = bundle.card.hyperparameters
    lines = [f"# SCRPS on T1: the paper's Table 1 and Fig. 3 on our data\n",
             f"Made by `{command}` ({results['seconds'] / 60:.0f} min on this CPU, torch threads: {results['threads']}). "
             f"Negatives: {len(results['models'][bundle.card.name]['volume_scores'][NEGATIVE])} healthy ixi_t1 test "
             f"volumes; positives: {len(results['models'][bundle.card.name]['volume_scores'][POSITIVE])} mslub T1 "
             "test volumes; volume score = highest eligible slice score. Thresholds: each model's calibrated pixel "
             "threshold (its card). Paper (BraTS2020 T1): volume AUROC 0.894, ⌈Dice⌉ 0.370.\n",
             "## Table 1\n", HEADER]
    lines += [row(name, result) for name, result in results["models"].items()]
    lines += [f"\n## Refinement steps after the encoder (amortised inversion)\n",
              "Seconds per slice: SCRPS scoring of 16 mslub slices at once, this process's threads, no cache.\n",
              HEADER.replace("| model |", "| steps |").replace(" |\n|---", " | seconds / slice |\n|---|---")]
    lines += [row(f"{count}" + (" (shipped)" if count == default_steps else ""), results["steps"][count],
                  f" {timings[count]} |") for count in sorted(results["steps"])]
    if results["ablations"]:
        lines += [f"\n## Ablations (the paper's Fig. 3), at {default_steps} steps; defaults K1 = {hp['k1']}, "
                  f"K2 = {hp['k2']}, L1 = {hp['l1']}, L2 = {hp['l2']} of L = {hp['gan']['levels'] * 2}\n", HEADER]
        lines.append(row("default", results["models"][bundle.card.name]))
        lines += [row(name, result) for name, result in results["ablations"].items()]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print(f"{args.out}/table.md and results.json written")


if __name__ == "__main__":
    main()

"""Which healthy-voxel rate the bundled models' pixel thresholds are calibrated for, chosen on the *validation* splits
only (lgg_flair val: large gliomas, 5 mm FLAIR; nichart_wmh val: small white-matter lesions, another scanner).

For each FLAIR bundle and each candidate rate, the threshold is calibrated as ``python -m training calibrate`` does
(healthy brain voxels at least 3 mm from any lesion, both sources weighing the same) and then measured on each source:
⌈Dice⌉, Dice at the threshold, their ratio, and the share of non-lesion brain voxels flagged. A second table
calibrates on one source only and measures on the other (does the rate transfer to another scanner?).

Run from the repository root: ``python docs/analysis/operating_points.py [DATA_DIR] > docs/analysis/operating_points.md``
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.methods import build_method
from training.datasets import load_cases
from training.evaluation import calibrate, score_split
from training.metrics import best_dice, dice_at

DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data")
MODELS = ("intensity-flair", "patchgan-flair", "patchgan-flair-paper", "pathoscope-flair", "ae-flair", "ocsvm-flair")
SOURCES = ("lgg_flair", "nichart_wmh")
RATES = (0.001, 0.003, 0.01, 0.02)


def measure(scores, threshold: float) -> dict:
    labels, values = np.concatenate(scores.voxel_labels), np.concatenate(scores.voxel_scores)
    ceiling = best_dice(labels, values)[0]
    at = dice_at(labels, values, threshold)
    return {"ceiling": ceiling, "dice": at, "ratio": at / ceiling if ceiling else 0.0,
            "fpr": float((values[~labels] >= threshold).mean())}


print(__doc__.split("\n\n")[0].replace("\n", " "), "\n")
print("## Calibrated on both sources\n")
print("| model | rate | threshold | " + " | ".join(f"{s} ⌈Dice⌉ / Dice@t (ratio) / healthy flagged" for s in SOURCES)
      + " |")
print("|---|---|---|" + "---|" * len(SOURCES))
transfer_rows, worst = [], {rate: 1.0 for rate in RATES}
for name in MODELS:
    bundle = load_bundle(name)
    method = build_method(bundle, torch.device("cpu"))
    scores = {f"{s} val": score_split(method, bundle, load_cases(DATA / s, "val", "flair")) for s in SOURCES}
    for rate in RATES:
        threshold = calibrate(scores, rate, 0.05)["pixel"]
        cells = []
        for source in scores:
            m = measure(scores[source], threshold)
            cells.append(f"{m['ceiling']:.3f} / {m['dice']:.3f} ({m['ratio']:.2f}) / {100 * m['fpr']:.2f} %")
            worst[rate] = min(worst[rate], m["ratio"])
        print(f"| {name} | {100 * rate:g} % | {threshold:.4g} | " + " | ".join(cells) + " |", flush=True)
        for own, other in ((0, 1), (1, 0)):
            names = list(scores)
            alone = calibrate({names[own]: scores[names[own]]}, rate, 0.05)["pixel"]
            flagged = measure(scores[names[other]], alone)["fpr"]
            transfer_rows.append(f"| {name} | {100 * rate:g} % | {names[own]} | {names[other]} | "
                                 f"{100 * flagged:.2f} % ({flagged / rate:.2f}x) |")

print("\nWorst Dice@t / ⌈Dice⌉ over the models and sources, per rate: "
      + ", ".join(f"{100 * rate:g} %: {ratio:.2f}" for rate, ratio in worst.items()))
print("\n## Calibrated on one source, measured on the other\n")
print("| model | rate | calibrated on | measured on | healthy flagged (x the rate) |")
print("|---|---|---|---|---|")
print("\n".join(transfer_rows))

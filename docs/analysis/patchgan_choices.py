"""What each change to the flagship Patch-GAN buys, on the *validation* splits only: lgg_flair val (large gliomas)
and nichart_wmh val (small white-matter lesions, another scanner), with the datasets' brain masks.

Every variant is the bundled ``patchgan-flair`` network (no retraining) with inference settings changed from its 0.1
configuration (``BASE``: box 7 px, 2 hole shifts, no prior; each variant starts from it, never from whatever the
bundle is configured with now): the map's box smoothing, the number of shifted hole sets averaged, and the intensity
prior (the geometric mean of the learned
map and the intensity's deviation from the brain median, ``methods/patchgan.py``; slice scores stay the learned
map's). ``intensity-flair`` is the bar.

Run from the repository root: ``python docs/analysis/patchgan_choices.py CACHE [DATA_DIR] > docs/analysis/patchgan_choices.md``
(CACHE: the lgg_flair train slice cache of ``python -m training prepare``, whose brain spread scales the prior).
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.methods import build_method, with_overrides
from training.datasets import load_cases
from training.evaluation import score_split, summarise
from training.slice_set import SliceSet

CACHE = Path(sys.argv[1])
DATA = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("../shared/data")
SOURCES = ("lgg_flair", "nichart_wmh")
METRICS = (("slice_auroc", "slice AUROC"), ("voxel_auroc", "voxel AUROC"), ("best_dice", "⌈Dice⌉"))

train = SliceSet.load(CACHE)
brain = train.slices[train.masks].astype(np.float64)
spread = float(1.4826 * np.median(np.abs(brain - np.median(brain))))
BASE = {"map_smoothing": 7, "inference_shifts": [0, 16], "intensity_prior": 0.0}  # patchgan-flair 0.1.0
VARIANTS = {
    "intensity-flair (the bar)": ("intensity-flair", {}),
    "patchgan-flair 0.1 (box 7 px, 2 hole shifts)": ("patchgan-flair", {}),
    "box 5 px": ("patchgan-flair", {"map_smoothing": 5}),
    "box 3 px": ("patchgan-flair", {"map_smoothing": 3}),
    "box 5 px, 4 hole shifts": ("patchgan-flair", {"map_smoothing": 5, "inference_shifts": [0, 8, 16, 24]}),
    "box 7 px + intensity prior": ("patchgan-flair", {"intensity_prior": spread}),
    "box 5 px + intensity prior": ("patchgan-flair", {"map_smoothing": 5, "intensity_prior": spread}),
    "box 3 px + intensity prior": ("patchgan-flair", {"map_smoothing": 3, "intensity_prior": spread}),
    "box 1 px + intensity prior": ("patchgan-flair", {"map_smoothing": 1, "intensity_prior": spread}),
    "box 5 px, 4 hole shifts + intensity prior": (
        "patchgan-flair", {"map_smoothing": 5, "inference_shifts": [0, 8, 16, 24], "intensity_prior": spread}),
    "box 3 px, 4 hole shifts + intensity prior": (
        "patchgan-flair", {"map_smoothing": 3, "inference_shifts": [0, 8, 16, 24], "intensity_prior": spread}),
}

print(__doc__.split("\n\n")[0].replace("\n", " "))
print(f"\nIntensity prior scale: robust brain spread of {CACHE.name} = {spread:.4f}.\n")
print("| variant | " + " | ".join(f"{s} {t}" for s in SOURCES for _, t in METRICS) + " | mean ⌈Dice⌉ |")
print("|---|" + "---|" * (len(SOURCES) * len(METRICS) + 1))
cache: dict = {}
for label, (model, change) in VARIANTS.items():
    bundle = with_overrides(load_bundle(model), {**BASE, **change} if model == "patchgan-flair" else change)
    method = build_method(bundle, torch.device("cpu"))
    cells, dice = [], []
    for source in SOURCES:
        summary = summarise(score_split(method, bundle, load_cases(DATA / source, "val", "flair"), cache=cache), None)
        cells += [f"{summary.get(key):.3f}" for key, _ in METRICS]
        dice.append(summary["best_dice"])
    print(f"| {label} | " + " | ".join(cells) + f" | {np.mean(dice):.3f} |", flush=True)

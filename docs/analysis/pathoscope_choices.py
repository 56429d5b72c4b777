"""The lgg_flair *validation* numbers behind PathoSCOPE's choices (never test): the embedding scale that the paper's
step sizes are read in (``methods.pathoscope.fit.PAPER_TYPICAL_DISTANCE``) and the default backbone (random initialisation or
the SimCLR trunk of ``python -m training backbone``). Shots are drawn from the lgg_flair train cache.

Run from the repository root: ``python docs/analysis/pathoscope_choices.py CACHE [BACKBONE.pt]``; prints a markdown
table (slice AUROC, voxel AUROC on the input grid inside the brain, AU-PRO, ⌈Dice⌉).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.methods.pathoscope import fit as fit_module
from MedicalAnomalyDetectionLib.methods.pathoscope.fit import FewShotSettings
from MedicalAnomalyDetectionLib.methods import build_method
from training.datasets import load_cases
from training.evaluation import score_split, summarise
from training.recipes.pathoscope import fit_in_memory
from training.slice_set import SliceSet

import torch

DATA = Path("../shared/data/lgg_flair")
data = SliceSet.load(Path(sys.argv[1]))
backbone = Path(sys.argv[2]) if len(sys.argv) > 2 else None
cases = load_cases(DATA, "val", data.source["modality"])
cache: dict = {}
keys = ("slice_auroc", "voxel_auroc", "pro", "best_dice")


def measure(shots: int, seed: int, scale: float, trunk: Path | None) -> dict:
    fit_module.PAPER_TYPICAL_DISTANCE = scale  # the constant under test; pieg() reads it at each call
    bundle, _ = fit_in_memory(data, shots, FewShotSettings(seed=seed), trunk)
    return summarise(score_split(build_method(bundle, torch.device("cpu")), bundle, cases, cache=cache), None)


runs = [("scale", 2, 0, scale, None) for scale in (0.1, 0.05, 0.025)] + [("backbone", 8, 0, 0.05, None)]
runs += [("backbone", k, 0, 0.05, backbone) for k in (2, 8)] if backbone else []
print("| choice | K | seed | scale | backbone | " + " | ".join(keys) + " |")
print("|---|---|---|---|---|" + "---|" * len(keys))
for choice, k, seed, scale, trunk in runs:
    summary = measure(k, seed, scale, trunk)
    print(f"| {choice} | {k} | {seed} | {scale} | {trunk.name if trunk else 'random'} | "
          + " | ".join(f"{summary.get(key):.3f}" for key in keys) + " |", flush=True)

"""Why ALOCC scores below chance: on lgg_flair *val* (never test), its slice score against the slice's brain area.

Run from the repository root: ``python docs/analysis/alocc_brain_area.py [DATA_DIR]``. Prints the ALOCC slice AUROC,
the Spearman correlation of its score with the brain area, and the AUROC of the brain area alone.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.pipeline import score_volume
from training.datasets import load_cases
from training.metrics import auroc_ap
from training.slices import lesion_slices, prepare_case

data = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data")
bundle = load_bundle("alocc-flair")
method = build_method(bundle, torch.device("cpu"))
labels, scores, areas = [], [], []
for case in load_cases(data / "lgg_flair", "val", "flair"):
    prepared = prepare_case(case.read(), bundle.card.preprocessing)
    scored = score_volume(method, prepared)
    eligible = scored.eligible
    labels.append(lesion_slices(prepared)[eligible])
    scores.append(scored.slice_scores[eligible])
    areas.append(prepared.mask.sum(axis=(1, 2))[eligible])
labels, scores, areas = map(np.concatenate, (labels, scores, areas))
print(f"ALOCC slice AUROC on lgg_flair val: {auroc_ap(labels, scores)['auroc']:.3f}")
print(f"Spearman(score, brain area): {spearmanr(scores, areas).correlation:.2f}")
print(f"slice AUROC of the brain area alone: {auroc_ap(labels, areas)['auroc']:.3f}")

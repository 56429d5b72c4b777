"""The lgg_flair *validation* numbers behind model choices (never test): slice AUROC, and voxel AUROC and ⌈Dice⌉ on
the model grid inside the brain, for each bundle given.

Run from the repository root: ``python docs/analysis/val_metrics.py BUNDLE [BUNDLE ...]`` (names or folders).
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.pipeline import score_volume
from training.datasets import load_cases
from training.metrics import auroc_ap, best_dice
from training.slices import lesion_slices, prepare_case

DATA = Path("../shared/data/lgg_flair")
for model in sys.argv[1:]:
    bundle = load_bundle(model)
    method = build_method(bundle, torch.device("cpu"))
    slice_labels, slice_scores, voxel_labels, voxel_scores = [], [], [], []
    for case in load_cases(DATA, "val", bundle.card.modality):
        prepared = prepare_case(case.read(), bundle.card.preprocessing)
        scored = score_volume(method, prepared, 32)
        eligible = scored.eligible
        slice_labels.append(lesion_slices(prepared)[eligible])
        slice_scores.append(scored.slice_scores[eligible])
        voxel_labels.append(prepared.labels[0][prepared.mask])
        voxel_scores.append(scored.maps[prepared.mask])
    labels, values = np.concatenate(voxel_labels), np.concatenate(voxel_scores)
    print(f"{model}: slice AUROC {auroc_ap(np.concatenate(slice_labels), np.concatenate(slice_scores))['auroc']:.3f}"
          f", voxel AUROC {auroc_ap(labels, values)['auroc']:.3f}, best Dice {best_dice(labels, values)[0]:.3f}")

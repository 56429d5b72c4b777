"""How often the few-shot reference check ("if it holds a lesion, the model will learn that lesion as normal") fires
on healthy references, and how often on references with lesions, on *validation* data only.

The check runs the modality's bundled intensity baseline at its calibrated threshold and measures the largest
connected region it flags (``references.largest_flagged_region_ml``). Healthy references: the ixi_t1 val
subjects (T1, whole volumes) and the lesion-free slices of the lgg_flair val patients (FLAIR; at least one slice
away from any lesion slice, the training protocol's healthy slices). References with lesions: the lgg_flair val
patients (gliomas) and the nichart_wmh val subjects (white-matter hyperintensities), whole volumes.

Run from the repository root: ``python docs/analysis/lesion_check.py [DATA_DIR] > docs/analysis/lesion_check.md``
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.references import LESION_WARNING_ML, largest_flagged_region_ml
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.pipeline import score_volume
from MedicalAnomalyDetectionLib.preprocessing import prepare_volume
from training.datasets import load_cases
from training.slices import healthy_slices

DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data")
GROUPS = (("ixi_t1 val (healthy, whole volumes)", "ixi_t1", "t1", "healthy"),
          ("lgg_flair val (lesion-free slices)", "lgg_flair", "flair", "healthy slices"),
          ("lgg_flair val (gliomas, whole volumes)", "lgg_flair", "flair", "whole"),
          ("nichart_wmh val (WMH, whole volumes)", "nichart_wmh", "flair", "whole"))

print(__doc__.split("\n\n")[0].replace("\n", " "), "\n")
print(f"Warning when the largest flagged region is at least {LESION_WARNING_ML:g} mL.\n")
print("| references | largest flagged region per reference (mL) | warned |")
print("|---|---|---|")
for label, dataset, modality, part in GROUPS:
    baseline = load_bundle(f"intensity-{modality}")
    method = build_method(baseline, torch.device("cpu"))
    sizes = []
    for case in load_cases(DATA / dataset, "val", modality):
        image, brain, lesion = case.read()
        prepared = prepare_volume(image, baseline.card.preprocessing, brain,
                                  labels=(lesion,) if lesion is not None else ())
        maps = score_volume(method, prepared, map_normalisation=baseline.card.map_normalisation).maps
        inside = prepared.mask & (healthy_slices(prepared)[:, None, None] if part == "healthy slices" else True)
        sizes.append(largest_flagged_region_ml(maps, inside, baseline.card.thresholds["pixel"], prepared.model_grid))
    warned = sum(size >= LESION_WARNING_ML for size in sizes)
    print(f"| {label} | {', '.join(f'{s:.2f}' for s in sizes)} | {warned} of {len(sizes)} |", flush=True)

"""How the core's brain extraction (``brain_extraction.brain_mask_for``, as ``mad-detect --brain-mask auto`` runs it)
agrees with the brain masks the datasets ship, per case: Dice, how the mask was obtained, seconds.

    python docs/analysis/brain_extraction_check.py [DATA_DIR] > docs/analysis/brain_extraction_check.md

lgg_flair's and nichart_wmh's masks were made by deepbet; ixi_t1's come from a parcellation; the lesion columns say
how much of the expert lesion mask lies inside the extracted brain (a lesion cut away cannot be detected).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "MedicalAnomalyDetection")]

from MedicalAnomalyDetectionLib.brain_extraction import brain_mask_for  # noqa: E402
from MedicalAnomalyDetectionLib.volume_io import read_volume, validate_volume  # noqa: E402

SETS = (("lgg_flair", "val", "flair"), ("lgg_flair", "test", "flair"), ("nichart_wmh", "val", "flair"),
        ("ixi_t1", "val", "t1"))


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    print("# Brain extraction against the datasets' brain masks\n")
    print("Made by `python docs/analysis/brain_extraction_check.py` (every case of each split, `--brain-mask auto` "
          "as mad-detect runs it, on this 2-core CPU).\n")
    print("| dataset | case | masking | Dice | share of lesion voxels inside | seconds |\n|---|---|---|---|---|---|")
    summary = {}
    for dataset, split, modality in SETS:
        cases = json.loads((data / dataset / "dataset.json").read_text())["splits"][split]
        for case in cases:
            folder = data / dataset / case
            image = validate_volume(read_volume(folder / f"{modality}.nii.gz"))
            started = time.perf_counter()
            found = brain_mask_for(image, None, "auto")
            seconds = time.perf_counter() - started
            mask = sitk.GetArrayFromImage(found.mask) > 0
            reference = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "brain.nii.gz"))) > 0
            dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
            lesion_path = folder / "lesion.nii.gz"
            inside = "–"
            if lesion_path.exists():
                lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_path))) > 0
                inside = f"{(lesion & mask).sum() / max(1, lesion.sum()):.3f}" if lesion.any() else "–"
            summary.setdefault(f"{dataset} {split}", []).append(dice)
            print(f"| {dataset} {split} | {case} | {found.how} | {dice:.3f} | {inside} | {seconds:.1f} |", flush=True)
    print("\n| set | cases | Dice min | Dice median | Dice max |\n|---|---|---|---|---|")
    for name, values in summary.items():
        print(f"| {name} | {len(values)} | {min(values):.3f} | {np.median(values):.3f} | {max(values):.3f} |")


if __name__ == "__main__":
    main()

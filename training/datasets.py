"""Datasets in the layout of ``../shared/data`` (see its README): ``<dataset>/dataset.json`` and one folder a case."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from MedicalAnomalyDetectionLib.errors import InputError


CaseImages = tuple[sitk.Image, "sitk.Image | None", "sitk.Image | None"]  # image, brain mask, lesion mask


@dataclass(frozen=True)
class Case:
    """One case of a dataset: its image, and brain and lesion masks where it has them."""

    dataset: str
    case_id: str
    image: Path
    brain: Path | None
    lesion: Path | None

    def read(self) -> CaseImages:
        """(image, brain mask or None, lesion mask or None)."""
        return (sitk.ReadImage(str(self.image)),
                sitk.ReadImage(str(self.brain)) if self.brain else None,
                sitk.ReadImage(str(self.lesion)) if self.lesion else None)


def dataset_info(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / "dataset.json"
    if not path.exists():
        raise InputError(f"not a dataset folder (no dataset.json): {dataset_dir}")
    return json.loads(path.read_text())


def load_cases(dataset_dir: Path, split: str, modality: str) -> list[Case]:
    """The cases of ``split`` that have ``modality``, in the order of dataset.json."""
    dataset_dir = Path(dataset_dir)
    info = dataset_info(dataset_dir)
    if split not in info.get("splits", {}):
        raise InputError(f"dataset {info['name']} has no split {split!r} (has {sorted(info.get('splits', {}))})")
    cases = []
    for case_id in info["splits"][split]:
        folder = dataset_dir / case_id
        image = folder / f"{modality}.nii.gz"
        if not image.exists():
            raise InputError(f"case {case_id} of {info['name']} has no {modality} image")
        brain, lesion = folder / "brain.nii.gz", folder / "lesion.nii.gz"
        cases.append(Case(dataset=info["name"], case_id=case_id, image=image,
                          brain=brain if brain.exists() else None, lesion=lesion if lesion.exists() else None))
    return cases

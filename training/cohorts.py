"""Healthy cohorts for ``prepare`` as labs keep them, besides the layout of ``../shared/data``: a BIDS dataset, a
folder of volume files, or a CSV list (``input[,brain_mask]``), as :class:`~.datasets.Case` lists."""

from __future__ import annotations

from pathlib import Path

from MedicalAnomalyDetectionLib.bids import SUFFIX_FOR_MODALITY, dataset_description, find_images
from MedicalAnomalyDetectionLib.cohort import list_volumes, volume_name
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.modality import described_modalities

from .datasets import Case


def _unique(cases: list[Case]) -> list[Case]:
    seen: dict[str, Case] = {}
    for case in cases:
        other = seen.setdefault(case.case_id, case)
        if other is not case:
            raise InputError(f"two volumes are both named {case.case_id}: {other.image} and {case.image}")
    return cases


def bids_cases(root: Path, modality: str, suffix: str | None = None, subjects: tuple[str, ...] = (),
               sessions: tuple[str, ...] = ()) -> tuple[list[Case], dict]:
    """The ``suffix`` images (default: the BIDS suffix of ``modality``) of a BIDS dataset, one case each (named by
    their entities, e.g. ``sub-01_ses-1``), and the dataset's description."""
    suffix = suffix or SUFFIX_FOR_MODALITY.get(modality)
    if suffix is None:
        raise InputError(f"no BIDS suffix is known for modality {modality!r}; pass --suffix")
    description = dataset_description(root)
    name = str(description.get("Name") or Path(root).name)
    cases = [Case(dataset=name, case_id=image.stem.rsplit("_", 1)[0], image=image.path, brain=None, lesion=None)
             for image in find_images(root, suffix, subjects, sessions)]
    return _unique(cases), description


def listed_cases(source: Path) -> list[Case]:
    """A folder of volume files or a CSV list (``input[,brain_mask]``, relative paths from the CSV's folder), one
    case each, named by its file name."""
    cases = []
    for listed in list_volumes([source]):
        if listed.output_dir:
            raise InputError(f"{source}: an output_dir column means nothing to prepare; list input[,brain_mask]")
        cases.append(Case(dataset=volume_name(Path(source)), case_id=volume_name(listed.image), image=listed.image,
                          brain=listed.brain_mask, lesion=None))
    return _unique(cases)


def refuse_other_contrast(cases: list[Case], modality: str) -> None:
    """Refuse, before anything is read, volumes whose file names name another contrast than ``modality`` (e.g.
    ``sub-01_T1w.nii.gz`` prepared as FLAIR): slices of one contrast only train a model."""
    other = [case.image.name for case in cases
             if (named := described_modalities(case.image.name)) and modality.lower() not in named]
    if other:
        raise InputError(f"{len(other)} of {len(cases)} volumes are named as another contrast than "
                         f"{modality.upper()} (--modality): {', '.join(other[:3])}{' ...' if len(other) > 3 else ''}")

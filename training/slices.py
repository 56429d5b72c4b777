"""Model-plane slices of a dataset split, through the core preprocessing, and which of them count as healthy."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_dilation

from MedicalAnomalyDetectionLib.brain_extraction import BrainMask, brain_mask_for
from MedicalAnomalyDetectionLib.card import Preprocessing
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.preprocessing import PreparedVolume, prepare_volume
from MedicalAnomalyDetectionLib.scoring import MIN_BRAIN_SHARE, TRAIN_MIN_BRAIN_SHARE, eligible_slices
from MedicalAnomalyDetectionLib.volume_io import validate_volume

from .datasets import Case, CaseImages
from .slice_set import SliceSet

# A lesion-free slice closer than this many slices to a lesion slice is not used as healthy.
HEALTHY_MARGIN = 1


def case_brain(image: sitk.Image, brain: sitk.Image | None, masking: str = "dataset",
               fallback: str = "auto") -> BrainMask:
    """The brain mask a case's maps are made in: with ``masking`` "dataset" the dataset's own mask (checked as a
    given mask is), or, for a case without one, the detector's ``fallback`` masking; with "auto"/"none" the mask the
    detector would make (``brain_extraction.brain_mask_for``, the one masking path)."""
    validated = validate_volume(image)
    if masking == "dataset" and brain is not None:
        return BrainMask(brain_mask_for(validated, brain, "auto").mask, "the dataset's reference brain mask",
                         computed=False)
    return brain_mask_for(validated, None, fallback if masking == "dataset" else masking)


def prepare_case(images: CaseImages, pre: Preprocessing, masking: str = "none") -> PreparedVolume:
    """The core preprocessing of one case's (image, brain, lesion), the lesion mask (if any) resampled alongside; a
    case without a brain mask is masked as the detector masks it with ``masking`` ("auto" or "none")."""
    image, brain, lesion = images
    used = case_brain(image, brain, "dataset", fallback=masking)
    return prepare_volume(image, pre, used.mask, labels=(lesion,) if lesion is not None else ())


def lesion_slices(prepared: PreparedVolume) -> np.ndarray:
    """Boolean (N,): slices with lesion inside the brain (all False without a lesion mask)."""
    if not prepared.labels:
        return np.zeros(prepared.slices.shape[0], dtype=bool)
    return (prepared.labels[0] & prepared.mask).any(axis=(1, 2))


def healthy_slices(prepared: PreparedVolume, margin: int = HEALTHY_MARGIN,
                   min_share: float = MIN_BRAIN_SHARE) -> np.ndarray:
    """Boolean (N,): eligible slices at least ``margin`` slices away from any lesion slice."""
    near_lesion = binary_dilation(lesion_slices(prepared), iterations=margin) if margin else lesion_slices(prepared)
    return eligible_slices(prepared.brain_area, min_share) & ~near_lesion


def gather_healthy(cases: list[Case], pre: Preprocessing, source: dict, every: int = 1,
                   masking: str = "none") -> SliceSet:
    """Healthy slices (every ``every``-th of them per case) of ``cases``, preprocessed as the model card says (cases
    without a brain mask masked by ``masking``); ``source`` (dataset, split, modality, licence) is kept with them.
    An InputError saying what was found when no slice is healthy."""
    slices, masks, ids = [], [], []
    total = with_lesion = little_brain = 0
    for case in cases:
        prepared = prepare_case(case.read(), pre, masking)
        total += len(prepared.slices)
        with_lesion += int(lesion_slices(prepared).sum())
        little_brain += int((~eligible_slices(prepared.brain_area, TRAIN_MIN_BRAIN_SHARE)).sum())
        chosen = np.flatnonzero(healthy_slices(prepared, min_share=TRAIN_MIN_BRAIN_SHARE))[::every]
        slices.append(prepared.slices[chosen].astype(np.float16))
        masks.append(prepared.mask[chosen])
        ids += [case.case_id] * len(chosen)
    if not ids:
        raise InputError(f"no lesion-free slice to learn normal from in {len(cases)} cases of "
                         f"{source.get('dataset', 'the data')}: of {total} slices, {with_lesion} show a lesion, "
                         f"{little_brain} too little brain, and none of the rest is {HEALTHY_MARGIN} slice or more "
                         f"from a lesion")
    return SliceSet(slices=np.concatenate(slices), masks=np.concatenate(masks), case_ids=ids,
                    source={**source, "preprocessing": pre.to_dict(), "every": every})

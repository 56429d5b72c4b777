"""Brain masks for inputs that come without one: skull-stripped inputs are recognised and masked by their foreground;
skull-on inputs go through deepbet's brain-extraction networks (Fisch et al., 2024; MIT licence).

Only deepbet's two TorchScript weight files are used (a bounding-box network at 128^3, then the extraction network
on the box at 256^3), found in the installed ``deepbet`` distribution without importing it, so ``pip install
--no-deps deepbet`` suffices: none of its GUI or table dependencies are needed. The glue around the networks (RAS
orientation, intensity scaling, largest component, filled holes, the way back to the input grid) is written here
with SimpleITK and torch, following deepbet's published procedure.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .errors import InputError
from .preprocessing import background_value, foreground_mask
from .volume_io import validate_mask

log = logging.getLogger(__name__)

DEEPBET_INSTALL = "pip install --no-deps deepbet"
MASKING_MODES = ("auto", "none")
# A skull-stripped volume: at least this share of its voxels hold exactly the background value, and what is left is
# no larger than a brain (a head with scalp is 3-8 litres, a brain about 1.0-1.8).
STRIPPED_BACKGROUND_SHARE = 0.5
STRIPPED_MAX_ML = 2200.0
# deepbet's mask covering this share of the non-background voxels means the input was skull-stripped already.
STRIPPED_COVERAGE = 0.9
# A brain mask outside these volumes is not a brain: partial slabs of a few cm at the low end; at the high end room for
# headers whose spacing is only approximate (lgg_flair's own deepbet masks measure up to 2.9 L by their headers).
PLAUSIBLE_BRAIN_ML = (100.0, 4000.0)
BOX_SIZE, EXTRACTION_SIZE, BOX_MARGIN = (128, 128, 128), (256, 256, 256), 0.1


def mask_file(brain_mask: str) -> Path | None:
    """The mask file that a ``--brain-mask auto|none|FILE`` value names; None for the two masking modes."""
    return None if brain_mask in MASKING_MODES else Path(brain_mask)


@dataclass
class BrainMask:
    """The brain mask a run used (uint8 0/1 on the input grid) and how it was obtained, in words."""

    mask: sitk.Image
    how: str
    computed: bool  # False when the user gave it


def deepbet_weights() -> tuple[Path, Path] | None:
    """(bounding-box network, extraction network) TorchScript files of the installed deepbet, or None."""
    try:
        distribution = importlib.metadata.distribution("deepbet")
    except importlib.metadata.PackageNotFoundError:
        return None
    files = tuple(Path(distribution.locate_file(f"data/models/{name}.pt")) for name in ("bbox_model", "model"))
    return files if all(f.is_file() for f in files) else None


@lru_cache(maxsize=2)
def _networks(device: str) -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    weights = deepbet_weights()
    if weights is None:
        raise InputError(f"brain extraction needs deepbet's weights: {DEEPBET_INSTALL}")
    return tuple(torch.jit.load(str(path), map_location=device).eval() for path in weights)


def _non_background(image: sitk.Image) -> np.ndarray:
    """Which voxels differ from the background value: the share a skull-stripped input leaves (not the
    preprocessing's foreground mask, which is the largest filled component of the head)."""
    array = sitk.GetArrayViewFromImage(image)
    return array != background_value(array)


def _millilitres(voxels: int, image: sitk.Image) -> float:
    return float(voxels) * float(np.prod(image.GetSpacing())) / 1000.0


def looks_skull_stripped(image: sitk.Image) -> bool:
    """True when most voxels hold exactly the background value and the rest is no bigger than a brain."""
    foreground = _non_background(image)
    return (1.0 - foreground.mean() >= STRIPPED_BACKGROUND_SHARE
            and _millilitres(int(foreground.sum()), image) <= STRIPPED_MAX_ML)


def _scaled(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """deepbet's input scaling: clip to the 0.5-99.5 % range, standardise, then mean 0.449 and spread 0.226."""
    x = ((x - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    return 0.226 * (x - x.mean()) / x.std().clamp_min(1e-6) + 0.449


def _resized(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(x[None, None], size, mode="nearest-exact")[0, 0]


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary (x, y, z) array, its enclosed holes filled."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(image), sortByObjectSize=True)
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.Equal(components, 1))) > 0


def _box(mask: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The bounding box of a small-grid mask, scaled to ``shape`` and widened by BOX_MARGIN on every side."""
    box = []
    for axis, full in enumerate(shape):
        extent = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if extent.size == 0:
            raise InputError("brain extraction found no brain in this volume")
        scale = full / mask.shape[axis]
        centre, size = (extent[0] + extent[-1] + 1) / 2 * scale, (extent[-1] + 1 - extent[0]) * scale
        half = (1 + 2 * BOX_MARGIN) * size / 2
        box.append(slice(max(0, int(round(centre - half))), min(full, int(round(centre + half)))))
    return tuple(box)


def extract_brain(image: sitk.Image, device: torch.device | str = "cpu") -> sitk.Image:
    """A brain mask (uint8 0/1 on ``image``'s grid) from deepbet's networks; an InputError when deepbet is missing
    or what it finds is not a plausible brain. ``image`` is not modified."""
    device = str(torch.device(device))
    box_network, network = _networks(device)
    oriented = sitk.DICOMOrient(image, "RAS")  # the networks' orientation, as (x, y, z) arrays
    x = torch.from_numpy(np.ascontiguousarray(sitk.GetArrayFromImage(oriented).transpose(2, 1, 0))).float()
    x = torch.nan_to_num(x).to(device)
    small = _resized(x, BOX_SIZE)
    low, high = small.quantile(0.005), small.quantile(0.995)
    with torch.no_grad():
        small_mask = box_network(_scaled(small, low, high)[None, None])[0, 1] > 0.5
        box = _box(_largest_filled(small_mask.cpu().numpy()), tuple(x.shape))
        crop = x[box]
        probability = network(_scaled(_resized(crop, EXTRACTION_SIZE), low, high)[None, None])[0, 1]
        probability = _resized(probability, tuple(crop.shape))
    mask = np.zeros(tuple(x.shape), dtype=bool)
    mask[box] = _largest_filled(probability.cpu().numpy() > 0.5)
    oriented_mask = sitk.GetImageFromArray(mask.transpose(2, 1, 0).astype(np.uint8))
    oriented_mask.CopyInformation(oriented)
    result = sitk.Resample(oriented_mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    volume = _millilitres(int(sitk.GetArrayViewFromImage(result).sum()), image)
    if not PLAUSIBLE_BRAIN_ML[0] <= volume <= PLAUSIBLE_BRAIN_ML[1]:
        raise InputError(f"brain extraction found {volume:.0f} mL of brain, which is not plausible "
                         f"({PLAUSIBLE_BRAIN_ML[0]:.0f}-{PLAUSIBLE_BRAIN_ML[1]:.0f} mL); pass a brain mask")
    return result


def brain_mask_for(image: sitk.Image, given: sitk.Image | None = None, masking: str = "auto",
                   device: torch.device | str = "cpu") -> BrainMask:
    """The brain mask of a run: ``given`` if any (checked against ``image``'s grid); else with ``masking`` "none"
    the foreground mask of the preprocessing; else ("auto") the foreground of a skull-stripped input, or deepbet's
    extraction of a skull-on one. ``image`` must be a validated volume (``volume_io.validate_volume``)."""
    if given is not None:
        mask = validate_mask(given, image)
        if sitk.GetArrayViewFromImage(mask).all():
            raise InputError("brain mask covers the whole image; pass a mask of the brain, or none")
        return BrainMask(mask, "given brain mask", computed=False)
    if masking not in MASKING_MODES:
        raise InputError(f"brain masking must be one of {', '.join(MASKING_MODES)} or a mask file, not {masking!r}")
    if masking == "none":
        return BrainMask(foreground_mask(image), "foreground mask (no brain extraction)", computed=True)
    if looks_skull_stripped(image):
        return BrainMask(foreground_mask(image), "foreground of a skull-stripped input", computed=True)
    if deepbet_weights() is None:
        raise InputError("this volume has a skull (or its background is not empty) and no brain mask was given: "
                         f"brain extraction needs deepbet ({DEEPBET_INSTALL}); or give a brain mask, or "
                         "choose no masking (a foreground mask, which scalp fat can dominate)")
    mask = extract_brain(image, device)
    foreground = _non_background(image)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    if (inside & foreground).sum() >= STRIPPED_COVERAGE * foreground.sum():
        return BrainMask(foreground_mask(image), "foreground of a skull-stripped input", computed=True)
    return BrainMask(mask, "deepbet brain extraction", computed=True)

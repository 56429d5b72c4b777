"""Reading and checking volumes: every path into the core goes through :func:`validate_volume`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

log = logging.getLogger(__name__)

MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
MIN_INPLANE_VOXELS = 16
# A volume whose voxels (a sample of about LABEL_SAMPLE of them) take at most this many integer values is a label map.
MAX_LABEL_VALUES = 8
LABEL_SAMPLE = 200_000


def read_volume(path: str | Path) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder into a float32 SimpleITK image (not yet validated)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"no DICOM series in folder: {path}")
            if len(series) > 1:
                log.warning("%s holds %d DICOM series; reading the first (%s)", path, len(series), series[0])
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        last_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise InputError(f"cannot read {path}: {last_line}") from None
    return image


def validate_volume(image: sitk.Image, name: str = "volume") -> sitk.Image:
    """Return a float32 3D scalar copy of ``image`` or raise :class:`InputError` saying what is wrong.

    A trailing singleton fourth axis is squeezed (with a log message); 2D, 4D and vector images, empty, constant,
    NaN/Inf-holding volumes and absurd spacings are refused. The caller's image is never modified.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a scalar (single-channel) volume is needed")
    if image.GetDimension() == 4:
        if image.GetSize()[3] != 1:
            raise InputError(f"{name} is 4D ({image.GetSize()[3]} time points/channels); pick one 3D volume")
        log.warning("%s has a trailing singleton 4th axis; squeezed to 3D", name)
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"{name} is {image.GetDimension()}D; a 3D volume is needed")
    size = image.GetSize()
    if min(size) == 0:
        raise InputError(f"{name} is empty (size {size})")
    spacing = image.GetSpacing()
    if any(not np.isfinite(s) or s < MIN_SPACING_MM or s > MAX_SPACING_MM for s in spacing):
        raise InputError(f"{name} has absurd voxel spacing {tuple(round(s, 4) for s in spacing)} mm "
                         f"(allowed {MIN_SPACING_MM}-{MAX_SPACING_MM} mm)")
    if sorted(size)[1] < MIN_INPLANE_VOXELS:
        raise InputError(f"{name} is too small for the model (size {size}; at least {MIN_INPLANE_VOXELS} voxels "
                         "along two axes are needed)")
    image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.any():
        raise InputError(f"{name} holds no finite values (all NaN/Inf)")
    if not finite.all():
        raise InputError(f"{name} holds {int((~finite).sum())} NaN/Inf voxels; clean them before detection")
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name} is constant (every voxel is {float(array.min()):g}); nothing to detect")
    sample = array.ravel()[::max(1, array.size // LABEL_SAMPLE)]
    values = np.unique(sample)
    if len(values) <= MAX_LABEL_VALUES and np.all(values == np.round(values)):
        raise InputError(f"{name} looks like a label map or mask (only the values "
                         f"{', '.join(f'{v:g}' for v in values)}), not an MRI volume")
    return image


def validate_mask(mask: sitk.Image, reference: sitk.Image, name: str = "brain mask",
                  allow_empty: bool = False) -> sitk.Image:
    """Return ``mask`` as a uint8 0/1 image on ``reference``'s grid; raise if it lies on another grid or, unless
    ``allow_empty``, is empty."""
    if mask.GetDimension() == 4 and mask.GetSize()[3] == 1:
        mask = mask[:, :, :, 0]
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} must be a 3D scalar label volume")
    same_grid = (mask.GetSize() == reference.GetSize()
                 and np.allclose(mask.GetSpacing(), reference.GetSpacing(), rtol=1e-4, atol=1e-4)
                 and np.allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-3)
                 and np.allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-4))
    if not same_grid:
        raise InputError(f"{name} lies on another grid than the input (size {mask.GetSize()} vs "
                         f"{reference.GetSize()}, or spacing/origin/direction differ); resample it to the input first")
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not allow_empty and not sitk.GetArrayViewFromImage(binary).any():
        raise InputError(f"{name} is empty")
    binary.CopyInformation(reference)
    return binary


def write_image(image: sitk.Image, path: Path, inputs: tuple[Path, ...] = ()) -> None:
    """Write ``image`` compressed, refusing to overwrite any of ``inputs``."""
    path = Path(path)
    if any(path.resolve() == Path(p).resolve() for p in inputs):
        raise InputError(f"refusing to overwrite an input: {path}")
    sitk.WriteImage(image, str(path), useCompression=True)

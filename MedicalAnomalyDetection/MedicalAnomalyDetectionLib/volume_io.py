"""Reading, checking and writing volumes: every path into the core goes through :func:`validate_volume`, and
:func:`write_outputs` writes a run's files so that none appears under its final name before all are written."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .file_checks import check_volume_file

log = logging.getLogger(__name__)

MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
MIN_INPLANE_VOXELS = 16
# A volume whose voxels (a sample of about LABEL_SAMPLE of them) take at most this many integer values is a label map.
MAX_LABEL_VALUES = 8
LABEL_SAMPLE = 200_000
MAX_NON_FINITE_SHARE = 0.5  # more NaN/Inf voxels than this share: not a volume with a glitch but no volume at all
FLOAT32_EXACT = 2.0 ** 24  # every integer up to this magnitude is exact in float32


def read_volume(path: str | Path, series: str | None = None) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder into a SimpleITK image (not yet validated).

    A folder holding several DICOM series needs ``series`` (a SeriesInstanceUID; the error lists them). Files whose
    voxel data end early or whose header spacing is not positive are refused (``file_checks``), and so are DICOM
    series whose slices are not evenly spaced (a missing slice)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if series is not None and not path.is_dir():
        raise InputError(f"a DICOM series was named ({series}) but {path} is a file, not a DICOM folder")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(_dicom_series_files(path, series))
            return reader.Execute()
        non_finite = check_volume_file(path)
        image = sitk.ReadImage(str(path))
    except (RuntimeError, OSError, ValueError) as error:  # SimpleITK, the file itself, malformed DICOM values
        reason = error.strerror if isinstance(error, OSError) and error.strerror else _last_line(error)
        raise InputError(f"cannot read {path}: {reason}") from None
    return _with_nan_at(image, non_finite) if len(non_finite) else image


def _with_nan_at(image: sitk.Image, flat_indices: np.ndarray) -> sitk.Image:
    """``image`` (as float32) with NaN at ``flat_indices``: the NaN/Inf voxels of a NIfTI, which SimpleITK read as 0,
    put back so that :func:`validate_volume` sees them as it sees those of other formats."""
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    array.reshape(-1)[flat_indices] = np.nan
    restored = sitk.GetImageFromArray(array, isVector=False)
    restored.CopyInformation(image)
    return restored


def _dicom_series_files(folder: Path, series: str | None) -> list[str]:
    """The files of the chosen (or only) DICOM series in ``folder``, in slice order, checked for even spacing."""
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        raise InputError(f"no DICOM series in folder: {folder}")
    if series is None and len(uids) > 1:
        listed = "; ".join(f"{uid} ({_series_description(folder, uid)})" for uid in uids)
        raise InputError(f"{folder} holds {len(uids)} DICOM series; choose one by its UID "
                         f"(mad-detect --series UID): {listed}")
    if series is not None and series not in uids:
        raise InputError(f"DICOM series {series} is not in {folder} (it holds {', '.join(uids)})")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series or uids[0]))
    _check_slice_positions(files, folder)
    return files


def _header(file: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.ReadImageInformation()
    return reader


def _series_description(folder: Path, uid: str) -> str:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    header = _header(files[0])
    description = header.GetMetaData("0008|103e").strip() if header.HasMetaDataKey("0008|103e") else "no description"
    return f"{description}, {len(files)} files"


def _check_slice_positions(files: list[str], folder: Path) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal (a slice missing, or two at one place),
    which SimpleITK would read as a volume with one spacing and everything past the gap misplaced."""
    if len(files) < 3:
        return
    headers = [_header(file) for file in files]
    if not all(h.HasMetaDataKey("0020|0032") and h.HasMetaDataKey("0020|0037") for h in headers):
        return
    cosines = np.array([float(v) for v in headers[0].GetMetaData("0020|0037").split("\\")]).reshape(2, 3)
    normal = np.cross(cosines[0], cosines[1])
    positions = np.sort([normal @ np.array([float(v) for v in h.GetMetaData("0020|0032").split("\\")])
                         for h in headers])
    gaps = np.diff(positions)
    if gaps.min() < 1e-3 or gaps.max() - gaps.min() > max(0.01, 0.01 * float(np.median(gaps))):
        raise InputError(f"DICOM series in {folder} has unevenly spaced slices (gaps from {gaps.min():.3g} to "
                         f"{gaps.max():.3g} mm): a slice is missing or duplicated; export the complete series")


def validate_volume(image: sitk.Image, name: str = "volume", warnings: list[str] | None = None) -> sitk.Image:
    """Return a float32 3D scalar copy of ``image`` or raise :class:`InputError` saying what is wrong.

    A trailing singleton fourth axis is squeezed (with a log message); 2D, 4D and vector images, empty, constant,
    mostly NaN/Inf volumes, absurd spacings and direction matrices that are not orthonormal are refused. A few NaN/Inf
    voxels (an export glitch) are set to the background value, with a warning logged and appended to ``warnings``.
    Voxels beyond float32's exact integer range are shifted by the volume's minimum first (see :func:`_as_float32`).
    The caller's image is never modified.
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
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise InputError(f"{name} has a direction matrix whose axes are not perpendicular unit vectors "
                         f"({tuple(round(v, 3) for v in direction.ravel())}); resample it onto an orthogonal grid")
    if sorted(size)[1] < MIN_INPLANE_VOXELS:
        raise InputError(f"{name} is too small for the model (size {size}; at least {MIN_INPLANE_VOXELS} voxels "
                         "along two axes are needed)")
    image = _as_float32(image, name)
    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.all():
        image, warning = _background_for_non_finite(image, finite, name)
        log.warning(warning)
        if warnings is not None:
            warnings.append(warning)
        array = sitk.GetArrayViewFromImage(image)
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name} is constant (every voxel is {float(array.min()):g}); nothing to detect")
    sample = array.ravel()[::max(1, array.size // LABEL_SAMPLE)]
    values = np.unique(sample)
    if len(values) <= MAX_LABEL_VALUES and np.all(values == np.round(values)):
        raise InputError(f"{name} looks like a label map or mask (only the values "
                         f"{', '.join(f'{v:g}' for v in values)}), not an MRI volume")
    return image


def _background_for_non_finite(image: sitk.Image, finite: np.ndarray, name: str) -> tuple[sitk.Image, str]:
    """``image`` with its NaN/Inf voxels set to the background value (the median of the finite corner voxels, else
    the lowest finite value), and the warning to give; an InputError when at most half of the voxels are finite."""
    bad = int(finite.size - np.count_nonzero(finite))
    share = bad / finite.size
    if share > MAX_NON_FINITE_SHARE:
        raise InputError(f"{name} holds {bad} NaN/Inf voxels ({share:.0%} of the volume); it is not a readable MRI")
    array = sitk.GetArrayFromImage(image)
    corners = np.array([array[z, y, x] for z in (0, -1) for y in (0, -1) for x in (0, -1)])
    corners = corners[np.isfinite(corners)]
    background = float(np.median(corners)) if len(corners) else float(array[finite].min())
    array[~finite] = background
    repaired = sitk.GetImageFromArray(array)
    repaired.CopyInformation(image)
    return repaired, (f"{name}: {bad} NaN/Inf voxels ({share:.2%}) were read as the background value {background:g}")


def _as_float32(image: sitk.Image, name: str) -> sitk.Image:
    """A float32 copy of ``image``. Values beyond float32's exact integer range (2^24, e.g. int32 voxels near 2^31)
    would lose their texture in the cast, so such volumes are shifted by their minimum first, exactly (in 64-bit
    integers, or float64, slice by slice): intensity normalisation ignores a shift. Finite values still beyond
    float32's range are refused."""
    extremes = sitk.MinimumMaximumImageFilter()
    extremes.Execute(image)
    low, high = extremes.GetMinimum(), extremes.GetMaximum()
    if image.GetPixelID() == sitk.sitkFloat32 or not (np.isfinite(low) and np.isfinite(high)) \
            or max(abs(low), abs(high)) <= FLOAT32_EXACT:
        return sitk.Cast(image, sitk.sitkFloat32)
    if high - low > float(np.finfo(np.float32).max):
        raise InputError(f"{name} holds values from {low:g} to {high:g}, beyond what float32 can hold")
    source = sitk.GetArrayViewFromImage(image)
    wide = {"u": np.uint64, "i": np.int64}.get(source.dtype.kind, np.float64)
    minimum = wide(source.min())
    shifted = np.empty(source.shape, np.float32)
    for k in range(source.shape[0]):
        shifted[k] = source[k].astype(wide) - minimum
    log.info("%s: values %g to %g shifted by their minimum to keep float32 precision", name, low, high)
    result = sitk.GetImageFromArray(shifted)
    result.CopyInformation(image)
    return result


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


def write_image(image: sitk.Image, path: Path) -> None:
    """Write ``image`` compressed (NIfTI when ``path`` ends in .nii.gz)."""
    sitk.WriteImage(image, str(path), useCompression=True)


def make_writable_folder(folder: Path) -> None:
    """Create ``folder`` if missing and prove a file can be written in it; an OSError says why not."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".mad-write-test"
    probe.write_bytes(b"")
    probe.unlink()


def refuse_overwriting(outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """An InputError if any of ``outputs`` is one of ``inputs`` (the same file by its resolved path)."""
    sources = {Path(p).resolve() for p in inputs}
    for output in outputs:
        if Path(output).resolve() in sources:
            raise InputError(f"refusing to overwrite an input: {output}")


def write_outputs(folder: Path, writers: dict[str, Callable[[Path], None]], inputs: tuple[Path, ...] = ()) -> None:
    """Write each output ``name`` into ``folder`` through ``writers[name](path)``: all first under hidden temporary
    names (same suffix, so a writer picks the same format), then renamed in the given order. A failure (a full disk,
    a vanished folder) removes the temporaries and raises an InputError: no half-written file is left, and no file
    of this run appears under its final name. Overwriting any of ``inputs`` is refused before anything is written."""
    folder = Path(folder)
    refuse_overwriting([folder / name for name in writers], inputs)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in writers.items():
            staged.append((folder / f".partial-{os.getpid()}-{name}", folder / name))
            write(staged[-1][0])
        for temporary, final in staged:
            os.replace(temporary, final)
    except (OSError, RuntimeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else _last_line(error)
        raise InputError(f"cannot write the outputs to {folder}: {reason}; no output of this run was kept") from None
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)


def _last_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__

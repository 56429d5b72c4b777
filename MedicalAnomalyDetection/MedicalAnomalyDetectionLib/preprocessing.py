"""The one preprocessing path: input volume -> normalised model-plane slices, and model maps -> input grid.

Every face (Slicer, ``mad-detect``, training, evaluation) uses :func:`prepare_volume` and :func:`to_input_grid`, and
the model card's ``preprocessing`` section decides plane, in-plane size and spacing, and intensity normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .card import PLANE_ORIENTATION, Preprocessing
from .errors import InputError
from .volume_io import validate_mask, validate_volume


@dataclass
class PreparedVolume:
    """Model-plane slices of one volume, with what is needed to put results back on the input grid."""

    slices: np.ndarray  # (N, H, W) float32, normalised, zero outside the mask
    mask: np.ndarray  # (N, H, W) bool, brain (or foreground) on the model grid
    model_grid: sitk.Image  # an image whose geometry is the model grid (voxel values unused)
    slice_axis: int  # the input's IJK axis that model slices step along
    slice_index: np.ndarray  # (N,) input index along slice_axis of each model slice
    labels: list[np.ndarray]  # extra label volumes (e.g. lesion masks) resampled to the model grid, bool
    input_grid: sitk.Image  # the validated input: results go back onto its grid

    @property
    def brain_area(self) -> np.ndarray:
        """(N,) brain pixels of each model-grid slice."""
        return self.mask.sum(axis=(1, 2))


def background_value(array: np.ndarray) -> float:
    """The value of the volume's corners (their median): what a scanner or a skull-stripping tool left outside."""
    corners = np.array([array[z, y, x] for z in (0, -1) for y in (0, -1) for x in (0, -1)])
    return float(np.median(corners))


def foreground_mask(image: sitk.Image) -> sitk.Image:
    """A head/brain foreground mask for inputs without a brain mask: the largest non-background component, filled.

    Skull-stripped volumes (a large share of voxels equal to the corner value) keep every voxel that differs from the
    background value; others are thresholded with Otsu's method.
    """
    array = sitk.GetArrayViewFromImage(image)
    background = background_value(array)
    if np.mean(array == background) > 0.2:
        fg = sitk.Cast(sitk.NotEqual(image, background), sitk.sitkUInt8)
    else:
        fg = sitk.OtsuThreshold(image, 0, 1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(fg), sortByObjectSize=True)
    largest = sitk.Cast(sitk.Equal(components, 1), sitk.sitkUInt8)
    filled = sitk.BinaryFillhole(largest)
    filled.CopyInformation(image)
    return filled


def robust_sd(values: np.ndarray, median: float) -> float:
    """The standard deviation a normal distribution with the median absolute deviation of ``values`` around
    ``median`` has: 1.4826 MAD."""
    return 1.4826 * float(np.median(np.abs(values - median)))


def normalise_intensities(values_in_mask: np.ndarray, method: str) -> tuple[float, float]:
    """Return (offset, scale) so that ``(v - offset) / scale`` is the card's normalisation of a volume's voxels v."""
    if method == "percentile":
        low, mid = np.percentile(values_in_mask, [1.0, 50.0])
        offset, scale = float(low), float(2.0 * (mid - low))
    else:
        median = float(np.median(values_in_mask))
        offset, scale = median, robust_sd(values_in_mask, median)
    if not np.isfinite(scale) or scale <= 1e-12 * max(1.0, abs(offset)):
        raise InputError("intensities inside the brain/foreground mask have no spread; cannot normalise")
    return offset, scale


def _model_grid(oriented_mask: sitk.Image, pre: Preprocessing) -> sitk.Image:
    """The model grid: the oriented input's slices, resampled in plane to ``pre.size`` at ``pre.spacing_mm``,
    centred on the mask's in-plane bounding box."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(oriented_mask)
    x0, y0, _, nx, ny, _ = stats.GetBoundingBox(1)
    centre_x, centre_y = x0 + (nx - 1) / 2.0, y0 + (ny - 1) / 2.0
    height, width = pre.size
    sx, sy, sz = oriented_mask.GetSpacing()
    corner_index = (centre_x - (width - 1) / 2.0 * pre.spacing_mm / sx,
                    centre_y - (height - 1) / 2.0 * pre.spacing_mm / sy, 0.0)
    grid = sitk.Image(width, height, oriented_mask.GetSize()[2], sitk.sitkUInt8)
    grid.SetDirection(oriented_mask.GetDirection())
    grid.SetSpacing((pre.spacing_mm, pre.spacing_mm, sz))
    grid.SetOrigin(oriented_mask.TransformContinuousIndexToPhysicalPoint(corner_index))
    return grid


def _resample(image: sitk.Image, grid: sitk.Image, interpolator: int, pixel: int) -> np.ndarray:
    out = sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0, pixel)
    return sitk.GetArrayFromImage(out)


def _slice_indices(image: sitk.Image, grid: sitk.Image) -> tuple[int, np.ndarray]:
    normal = np.array(grid.GetDirection()).reshape(3, 3)[:, 2]
    axes = np.array(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(axes.T @ normal)))
    width, height, depth = grid.GetSize()
    centres = [grid.TransformContinuousIndexToPhysicalPoint(((width - 1) / 2, (height - 1) / 2, k))
               for k in range(depth)]
    index = np.array([round(image.TransformPhysicalPointToContinuousIndex(c)[axis]) for c in centres], dtype=int)
    return axis, index


def prepare_volume(image: sitk.Image, pre: Preprocessing, brain_mask: sitk.Image | None = None,
                   labels: tuple[sitk.Image, ...] = ()) -> PreparedVolume:
    """Validate ``image`` (and ``brain_mask``) and turn it into normalised model-plane slices; ``image`` itself is
    left untouched. The mask (``brain_mask`` or, without one, :func:`foreground_mask`) sets the intensity statistics,
    zeroes what lies outside it and centres the in-plane field of view. ``labels`` (same grid as ``image``) are
    resampled along."""
    image = validate_volume(image)
    mask = foreground_mask(image) if brain_mask is None else validate_mask(brain_mask, image)
    return prepare_validated(image, pre, mask, labels)


def prepare_validated(image: sitk.Image, pre: Preprocessing, mask: sitk.Image,
                      labels: tuple[sitk.Image, ...] = ()) -> PreparedVolume:
    """:func:`prepare_volume` of a volume and brain mask that were validated already (the detect path validates
    each once, when it reads and masks the volume)."""
    array = sitk.GetArrayViewFromImage(image)
    offset, scale = normalise_intensities(array[sitk.GetArrayViewFromImage(mask) > 0], pre.normalisation)

    grid = _model_grid(sitk.DICOMOrient(mask, PLANE_ORIENTATION[pre.plane]), pre)
    slices = _resample(image, grid, sitk.sitkLinear, sitk.sitkFloat32)
    model_mask = _resample(mask, grid, sitk.sitkNearestNeighbor, sitk.sitkUInt8) > 0
    slices = np.clip((slices - offset) / scale, *pre.clip).astype(np.float32) * model_mask
    model_labels = [_resample(validate_mask(label, image, "label", allow_empty=True), grid, sitk.sitkNearestNeighbor,
                              sitk.sitkUInt8) > 0 for label in labels]
    axis, index = _slice_indices(image, grid)
    return PreparedVolume(slices=slices, mask=model_mask, model_grid=grid, slice_axis=axis, slice_index=index,
                          labels=model_labels, input_grid=image)


def to_input_grid(values: np.ndarray, prepared: PreparedVolume, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """Put a (N, H, W) model-grid array back on the input's grid (size, spacing, origin, direction)."""
    model_image = sitk.GetImageFromArray(values.astype(np.float32))
    model_image.CopyInformation(prepared.model_grid)
    return sitk.Resample(model_image, prepared.input_grid, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)

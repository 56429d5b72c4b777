"""The geometry round trip: a map made on the model grid lands where the anatomy is, whatever the input's storage."""

import numpy as np
import pytest
import SimpleITK as sitk

from MedicalAnomalyDetectionLib.card import Preprocessing
from MedicalAnomalyDetectionLib.preprocessing import foreground_mask, prepare_volume, to_input_grid

from conftest import head_array, make_image

PRE = Preprocessing(size=(48, 48), spacing_mm=3.0)


def _rotation(angle_deg: float) -> tuple:
    a = np.deg2rad(angle_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return tuple((rz @ rx).ravel())


def _stored(kind: str) -> sitk.Image:
    """The same head stored axially, sagittally (axes permuted and flipped), obliquely, or anisotropically."""
    axial = make_image(head_array((24, 40, 40), blob=(8, 14, 28)), spacing=(3.0, 3.0, 3.0), origin=(-60, -60, -36))
    if kind == "axial":
        return axial
    if kind == "sagittal":
        return sitk.Flip(sitk.PermuteAxes(axial, [2, 0, 1]), [False, True, False])
    if kind == "oblique":
        axial.SetDirection(_rotation(12.0))
        return axial
    resampled = sitk.Resample(axial, [40, 40, 12], sitk.Transform(), sitk.sitkLinear, axial.GetOrigin(),
                              (3.0, 3.0, 6.0), axial.GetDirection(), 0.0, sitk.sitkFloat32)
    return resampled


def _blob_centre(image: sitk.Image, threshold: float) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    indices = np.argwhere(array > threshold)[:, ::-1].mean(axis=0)  # x, y, z
    return np.array(image.TransformContinuousIndexToPhysicalPoint(indices.tolist()))


@pytest.mark.parametrize("kind", ["axial", "sagittal", "oblique", "anisotropic"])
def test_map_returns_to_input_grid_aligned(kind):
    image = _stored(kind)
    before = sitk.GetArrayFromImage(image).copy()
    prepared = prepare_volume(image, PRE)
    assert prepared.slices.shape[1:] == (48, 48)
    # a "map" that is the normalised intensity itself must put the bright blob back where it was
    back = to_input_grid(prepared.slices, prepared)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection())
    distance = np.linalg.norm(_blob_centre(back, 1.5) - _blob_centre(image, 200.0))
    assert distance < 3.0, f"blob moved by {distance:.1f} mm"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)


@pytest.mark.parametrize("kind", ["axial", "sagittal", "anisotropic"])
def test_slices_run_inferior_to_superior_and_map_to_input_indices(kind):
    image = _stored(kind)
    prepared = prepare_volume(image, PRE)
    normal = np.array(prepared.model_grid.GetDirection()).reshape(3, 3)[:, 2]
    np.testing.assert_allclose(normal, [0, 0, 1], atol=1e-6)  # axial model slices, stepping towards superior
    # the input index of each model slice lies on the same physical plane as that slice
    for k in (0, len(prepared.slice_index) // 2):
        index = [0, 0, 0]
        index[prepared.slice_axis] = int(prepared.slice_index[k])
        z_input = image.TransformIndexToPhysicalPoint(index)[2]
        z_model = prepared.model_grid.TransformIndexToPhysicalPoint((0, 0, k))[2]
        assert abs(z_input - z_model) < 1e-3


def test_normalisation_puts_brain_median_at_half_and_zero_outside():
    prepared = prepare_volume(_stored("axial"), PRE)
    assert abs(np.median(prepared.slices[prepared.mask]) - 0.5) < 0.05
    assert np.all(prepared.slices[~prepared.mask] == 0)


def test_foreground_mask_of_skull_stripped_volume_is_the_nonzero_region():
    image = _stored("axial")
    mask = sitk.GetArrayFromImage(foreground_mask(image)) > 0
    assert np.array_equal(mask, sitk.GetArrayFromImage(image) != 0)

"""Bad input gets a one-line InputError naming the problem; good input passes unchanged."""

import numpy as np
import pytest
import SimpleITK as sitk

from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.volume_io import read_volume, validate_mask, validate_volume

from conftest import head_array, make_image


def test_valid_volume_is_returned_as_float32_copy(head_image):
    before = sitk.GetArrayFromImage(head_image).copy()
    checked = validate_volume(head_image)
    assert checked.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(head_image), before)


def test_trailing_singleton_axis_is_squeezed():
    image = sitk.JoinSeries(make_image(head_array()))
    assert image.GetDimension() == 4
    assert validate_volume(image).GetDimension() == 3


@pytest.mark.parametrize("image, message", [
    (sitk.Image(32, 32, sitk.sitkFloat32), "2D"),
    (sitk.JoinSeries([make_image(head_array()), make_image(head_array())]), "4D"),
    (sitk.Image([32, 32, 8], sitk.sitkVectorFloat32, 3), "components"),
    (make_image(np.full((8, 32, 32), 7.0, np.float32)), "constant"),
    (make_image(np.full((8, 32, 32), np.nan, np.float32)), r"8192 NaN/Inf voxels \(100% of the volume\)"),
    (make_image(head_array(), spacing=(0.0001, 1.0, 1.0)), "spacing"),
    (make_image(head_array(), spacing=(1.0, 1.0, 500.0)), "spacing"),
    (make_image(np.ones((8, 8, 4), np.float32)), "too small"),
])
def test_bad_volumes_are_refused(image, message):
    with pytest.raises(InputError, match=message):
        validate_volume(image)


def test_a_few_nan_voxels_become_background_with_a_warning():
    array = head_array()
    array[3, 4, 5], array[12, 20, 20] = np.nan, np.inf
    warnings = []
    checked = sitk.GetArrayFromImage(validate_volume(make_image(array), warnings=warnings))
    assert checked[3, 4, 5] == checked[12, 20, 20] == 0.0  # head_array()'s background
    np.testing.assert_array_equal(np.delete(checked.ravel(), [np.ravel_multi_index(i, array.shape) for i in
                                                              ((3, 4, 5), (12, 20, 20))]),
                                  np.delete(array.ravel(), [np.ravel_multi_index(i, array.shape) for i in
                                                            ((3, 4, 5), (12, 20, 20))]))
    assert warnings == ["volume: 2 NaN/Inf voxels (0.01%) were read as the background value 0"]
    assert np.isnan(array[3, 4, 5])  # the caller's array is untouched


def test_the_background_for_nan_voxels_comes_from_the_finite_corners():
    array = head_array() + 5.0
    array[0, 0, 0] = np.nan  # a corner
    array[12, 20, 20] = np.nan
    checked = sitk.GetArrayFromImage(validate_volume(make_image(array)))
    assert checked[0, 0, 0] == checked[12, 20, 20] == 5.0


def test_a_nifti_keeps_its_nan_voxels_where_they_were(tmp_path):
    """SimpleITK reads a NIfTI's NaN as 0; read_volume puts NaN back at the same voxels, like an NRRD keeps them."""
    array = head_array()
    array[7, 11, 13] = np.nan
    for suffix in (".nii.gz", ".nii", ".nrrd"):
        sitk.WriteImage(make_image(array), str(tmp_path / f"v{suffix}"))
        read = sitk.GetArrayFromImage(read_volume(tmp_path / f"v{suffix}"))
        assert np.argwhere(np.isnan(read)).tolist() == [[7, 11, 13]], suffix


def test_mask_on_another_grid_is_refused(head_image):
    mask = make_image((head_array() > 0).astype(np.uint8), spacing=(2.0, 3.0, 3.0))
    with pytest.raises(InputError, match="another grid"):
        validate_mask(mask, head_image)


def test_empty_mask_is_refused(head_image):
    with pytest.raises(InputError, match="empty"):
        validate_mask(make_image(np.zeros(head_array().shape, np.uint8)), head_image)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "nothing.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read"):
        read_volume(corrupt)


def test_a_file_that_cannot_be_opened_is_one_line(tmp_path, monkeypatch):
    from MedicalAnomalyDetectionLib import volume_io

    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(make_image(head_array()), str(path))

    def unreadable(file):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(volume_io, "check_volume_file", unreadable)  # as root, chmod cannot make it unreadable
    with pytest.raises(InputError, match="cannot read .*scan.nii.gz: Permission denied"):
        read_volume(path)

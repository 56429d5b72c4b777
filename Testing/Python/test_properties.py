"""Properties of reading and preprocessing over random inputs (hypothesis): the map is always on the input grid, no
input ever gives a NaN map, and nothing fails with anything but InputError."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from MedicalAnomalyDetectionLib.bundle import load_bundle, save_bundle
from MedicalAnomalyDetectionLib.card import Preprocessing
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.volume_io import read_volume

from conftest import head_array, make_image, tiny_card

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    card = tiny_card("intensity-tiny", "intensity")
    card.preprocessing = Preprocessing(plane="axial", size=(32, 32), spacing_mm=4.0, normalisation="zscore")
    card.thresholds = {"pixel": 3.0}
    return load_bundle(save_bundle(tmp_path_factory.mktemp("bundle") / "intensity", card, None))


def _rotation(quaternion: tuple[float, float, float, float], flips: tuple[int, int, int]) -> np.ndarray:
    w, x, y, z = np.array(quaternion) / np.linalg.norm(quaternion)
    matrix = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                       [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                       [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return matrix @ np.diag(flips)


geometries = st.fixed_dictionaries({
    "shape": st.tuples(st.integers(3, 12), st.integers(16, 36), st.integers(16, 36)),
    "spacing": st.tuples(*[st.floats(0.5, 8.0)] * 3),
    "origin": st.tuples(*[st.floats(-300.0, 300.0)] * 3),
    "quaternion": st.tuples(*[st.floats(-1.0, 1.0)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1),
    "flips": st.tuples(*[st.sampled_from((-1, 1))] * 3),
})


@FAST
@given(geometry=geometries)
def test_the_map_is_on_the_input_grid_whatever_the_geometry(bundle, tmp_path, geometry):
    direction = tuple(_rotation(geometry["quaternion"], geometry["flips"]).ravel())
    image = make_image(head_array(geometry["shape"], blob=None), geometry["spacing"], geometry["origin"], direction)
    path = tmp_path / "volume.nii.gz"
    sitk.WriteImage(image, str(path))
    read = read_volume(path)  # the NIfTI round trip keeps the geometry (float32 header precision)
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-3)

    result = detect(read, bundle, device="cpu")
    for output in (result.anomaly_map, result.label_map):
        assert output.GetSize() == read.GetSize()
        assert output.GetSpacing() == read.GetSpacing() and output.GetOrigin() == read.GetOrigin()
        assert output.GetDirection() == read.GetDirection()
    assert np.isfinite(sitk.GetArrayViewFromImage(result.anomaly_map)).all()
    assert sorted(result.slice_index.tolist()) == sorted(set(result.slice_index.tolist()))


values = st.floats(allow_nan=True, allow_infinity=True, width=32)
volumes = st.one_of(
    arrays(np.float32, st.tuples(st.integers(2, 6), st.integers(16, 24), st.integers(16, 24)), elements=values),
    arrays(st.sampled_from([np.int16, np.uint16, np.int32, np.uint8, np.float64]),
           st.tuples(st.integers(2, 6), st.integers(16, 24), st.integers(16, 24))),
)


@FAST
@given(volume=volumes, mask_seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)), mask_share=st.floats(0.0, 1.0))
def test_random_intensities_and_masks_give_a_finite_map_or_an_input_error(bundle, volume, mask_seed, mask_share):
    image = make_image(volume)
    mask = None
    if mask_seed is not None:
        chosen = np.random.default_rng(mask_seed).random(volume.shape) < mask_share
        mask = make_image(chosen.astype(np.uint8))
    before = volume.copy()
    try:
        result = detect(image, bundle, brain_mask=mask, device="cpu")
    except InputError as error:
        event(f"refused: {str(error).split(';')[0][-40:]}")
        assert "\n" not in str(error)
    else:
        event("detected")
        assert np.isfinite(sitk.GetArrayViewFromImage(result.anomaly_map)).all()
        assert result.anomaly_map.GetSize() == image.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), before)  # the input is never modified


@pytest.fixture(scope="module")
def whole_file(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("whole") / "volume.nii.gz"
    sitk.WriteImage(make_image(head_array()), str(path))
    return path.read_bytes()


@FAST
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_a_gzip_cut_anywhere_is_refused(whole_file, tmp_path, cut):
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(whole_file[:int(cut * len(whole_file))])
    with pytest.raises(InputError, match="cannot read"):
        read_volume(path)

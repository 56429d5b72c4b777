"""Brain masks in the one preprocessing path: skull-stripped inputs recognised, skull-on inputs through deepbet's
networks (tests with them are skipped where ``deepbet`` is not installed; `.ci/run` installs it), bad masks refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedicalAnomalyDetectionLib import brain_extraction
from MedicalAnomalyDetectionLib.brain_extraction import brain_mask_for, extract_brain, looks_skull_stripped
from MedicalAnomalyDetectionLib.cli import main
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.volume_io import validate_volume

from conftest import head_array, make_image

needs_deepbet = pytest.mark.skipif(brain_extraction.deepbet_weights() is None,
                                   reason="deepbet is not installed (pip install --no-deps deepbet)")


def skull_on_head(shape=(48, 64, 64), seed=0, lesion=False) -> tuple[np.ndarray, np.ndarray]:
    """A head at 4 mm: textured brain, dark CSF/skull, bright scalp fat, noisy air (no exact background value)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    radius = np.sqrt((x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.9) ** 2)
    brain = radius < 0.72
    volume = np.zeros(shape, np.float32)
    volume[brain] = 100 + 8 * rng.standard_normal(int(brain.sum()))
    volume[(radius >= 0.72) & (radius < 0.8)] = 20
    volume[(radius >= 0.8) & (radius < 0.95)] = 180
    if lesion:
        volume[22:27, 28:34, 36:42] = 160
    return volume + 3 * rng.standard_normal(shape).astype(np.float32), brain


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_skull_stripped_and_skull_on_heads_are_told_apart():
    assert looks_skull_stripped(make_image(head_array()))
    assert not looks_skull_stripped(make_image(skull_on_head()[0], spacing=(4.0, 4.0, 4.0)))


def test_a_skull_stripped_input_is_masked_by_its_foreground():
    image = validate_volume(make_image(head_array()))
    brain = brain_mask_for(image)
    assert brain.how == "foreground of a skull-stripped input" and brain.computed
    assert (sitk.GetArrayFromImage(brain.mask) > 0).sum() == (head_array() > 0).sum()
    assert brain_mask_for(image, masking="none").how.startswith("foreground mask")


def test_given_masks_are_checked():
    image = validate_volume(make_image(head_array()))
    whole = make_image(np.ones(head_array().shape, np.uint8))
    with pytest.raises(InputError, match="covers the whole image"):
        brain_mask_for(image, whole)
    given = brain_mask_for(image, make_image((head_array() > 0).astype(np.uint8)))
    assert given.how == "given brain mask" and not given.computed
    with pytest.raises(InputError, match="masking must be one of"):
        brain_mask_for(image, masking="skull")


def test_skull_on_input_without_deepbet_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(brain_extraction, "deepbet_weights", lambda: None)
    image = validate_volume(make_image(skull_on_head()[0], spacing=(4.0, 4.0, 4.0)))
    with pytest.raises(InputError, match="pip install --no-deps deepbet"):
        brain_mask_for(image)
    assert brain_mask_for(image, masking="none").computed  # the foreground is still possible on request


@needs_deepbet
@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (0, 0, 1, -1, 0, 0, 0, -1, 0)])
def test_deepbet_finds_the_brain_of_a_synthetic_head_in_any_orientation(direction):
    volume, brain = skull_on_head()
    image = make_image(volume, spacing=(4.0, 4.0, 4.0), direction=direction)
    before = sitk.GetArrayFromImage(image).copy()
    mask = extract_brain(image)
    assert mask.GetSize() == image.GetSize() and mask.GetDirection() == image.GetDirection()
    assert dice(sitk.GetArrayFromImage(mask) > 0, brain) > 0.85
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)


@needs_deepbet
def test_an_implausible_brain_is_refused_with_what_was_found(monkeypatch):
    monkeypatch.setattr(brain_extraction, "PLAUSIBLE_BRAIN_ML", (5000.0, 6000.0))
    with pytest.raises(InputError, match=r"found \d+ mL of brain"):
        extract_brain(make_image(skull_on_head()[0], spacing=(4.0, 4.0, 4.0)))


@needs_deepbet
def test_detect_extracts_the_brain_of_a_skull_on_input(intensity_bundle):
    volume, brain = skull_on_head(lesion=True)
    image = make_image(volume, spacing=(4.0, 4.0, 4.0))
    result = detect(image, intensity_bundle)
    assert result.brain.how == "deepbet brain extraction"
    scalp = volume > 150
    scalp[22:27, 28:34, 36:42] = False
    anomaly = sitk.GetArrayFromImage(result.anomaly_map)
    assert anomaly[scalp].mean() < 0.2 and anomaly[22:27, 28:34, 36:42].mean() > 2.0


@needs_deepbet
def test_mad_detect_writes_the_brain_mask_it_used(intensity_bundle, tmp_path):
    volume, brain = skull_on_head()
    path = tmp_path / "head.nii.gz"
    sitk.WriteImage(make_image(volume, spacing=(4.0, 4.0, 4.0)), str(path))
    assert main([str(path), "--model", str(intensity_bundle.path), "--output-dir", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["masking"] == "deepbet brain extraction"
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "brain_mask.nii.gz"))) > 0
    assert dice(written, brain) > 0.85
    assert main([str(path), "--model", str(intensity_bundle.path), "--output-dir", str(tmp_path / "none"),
                 "--brain-mask", "none"]) == 0
    assert json.loads((tmp_path / "none" / "report.json").read_text())["masking"].startswith("foreground mask")


def test_a_label_map_as_input_is_refused(intensity_bundle, tmp_path, capsys):
    path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(make_image((head_array() > 0).astype(np.uint8)), str(path))
    assert main([str(path), "--model", str(intensity_bundle.path), "--output-dir", str(tmp_path / "out")]) == 1
    assert "looks like a label map" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()

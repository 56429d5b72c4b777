"""detect(): outputs on the input grid, input untouched, labels from the threshold, progress and cancel."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.inference import detect, label_from_map
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for, cpu_supports_bf16
from MedicalAnomalyDetectionLib.progress import Cancelled

from conftest import head_array, make_image


def _oblique_head() -> sitk.Image:
    c, s = np.cos(0.2), np.sin(0.2)
    return make_image(head_array(), spacing=(3.0, 2.5, 4.0), origin=(10.0, -20.0, 5.0),
                      direction=(c, -s, 0, s, c, 0, 0, 0, 1))


def test_outputs_share_the_input_grid_and_input_is_untouched(tiny_bundle):
    image = _oblique_head()
    before = sitk.GetArrayFromImage(image).copy()
    result = detect(image, tiny_bundle, device="cpu")
    for output in (result.anomaly_map, result.label_map):
        assert output.GetSize() == image.GetSize()
        np.testing.assert_allclose(output.GetSpacing(), image.GetSpacing())
        np.testing.assert_allclose(output.GetOrigin(), image.GetOrigin())
        np.testing.assert_allclose(output.GetDirection(), image.GetDirection())
    assert result.anomaly_map.GetPixelID() == sitk.sitkFloat32
    assert result.label_map.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)
    anomaly = sitk.GetArrayFromImage(result.anomaly_map)
    label = sitk.GetArrayFromImage(result.label_map)
    np.testing.assert_array_equal(label, (anomaly >= result.threshold).astype(np.uint8))
    eligible_scores = result.slice_scores[result.slice_eligible]
    assert result.volume_score == pytest.approx(eligible_scores.max())
    assert result.flagged_slices(0.0) == result.slice_eligible.sum()
    assert result.flagged_slices(float(eligible_scores.max())) == 1
    assert result.flagged_slices(None) is None
    assert result.threshold == tiny_bundle.card.thresholds["pixel"]


def test_intensity_baseline_outlines_the_bright_blob(intensity_bundle):
    array = head_array(blob=(12, 20, 26))
    result = detect(make_image(array), intensity_bundle, device="cpu")
    label = sitk.GetArrayFromImage(result.label_map).astype(bool)
    truth = array == 250.0
    dice = 2 * (label & truth).sum() / (label.sum() + truth.sum())
    assert dice > 0.5
    assert result.most_anomalous_slice in range(10, 15)


def test_brain_mask_restricts_the_map(intensity_bundle):
    image = make_image(head_array())
    mask_array = (head_array() > 0).astype(np.uint8)
    mask_array[:, :, 20:] = 0  # the blob (x = 23..29) lies outside
    mask = make_image(mask_array)
    anomaly = sitk.GetArrayFromImage(detect(image, intensity_bundle, brain_mask=mask).anomaly_map)
    assert anomaly[:, :, 24:].max() == 0.0
    assert anomaly[:, :, :18].max() > 0.0


def test_progress_reaches_the_end_and_cancel_stops(tiny_bundle):
    seen = []
    detect(make_image(head_array()), tiny_bundle, progress=lambda f, stage: seen.append(f), batch_size=4)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(Cancelled):
        detect(make_image(head_array()), tiny_bundle, cancel=lambda: True)


def test_threshold_override_and_bad_threshold(tiny_bundle):
    image = make_image(head_array())
    result = detect(image, tiny_bundle, threshold=1e-6)
    assert sitk.GetArrayFromImage(result.label_map).sum() > 0
    with pytest.raises(InputError, match="threshold"):
        label_from_map(result.anomaly_map, -1.0)
    for bad in (-1.0, float("nan")):
        with pytest.raises(InputError, match="threshold"):  # refused before any work
            detect(image, tiny_bundle, threshold=bad, progress=lambda f, s: pytest.fail("work started"))


def test_ends_of_the_brain_do_not_decide_the_volume_score():
    from MedicalAnomalyDetectionLib.scoring import eligible_slices, volume_score

    area = np.array([5, 400, 500, 380, 30])
    eligible = eligible_slices(area)
    assert eligible.tolist() == [False, True, True, True, False]
    assert volume_score(np.array([9.0, 1.0, 2.0, 1.5, 8.0]), eligible) == 2.0
    assert volume_score(np.zeros(3), np.zeros(3, bool)) == 0.0


def test_cuda_without_gpu_is_a_clear_error(tiny_bundle, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no usable CUDA"):
        detect(make_image(head_array()), tiny_bundle, device="cuda")


def test_trailing_singleton_axis_gives_3d_outputs(intensity_bundle):
    image = sitk.JoinSeries(make_image(head_array()))
    result = detect(image, intensity_bundle)
    assert result.anomaly_map.GetDimension() == 3
    assert result.anomaly_map.GetSize() == image.GetSize()[:3]


def test_a_card_asking_for_peak_z_gets_it_from_the_methods_evidence_map(tiny_bundle):
    """patchgan's slice scores come from its learned map (its evidence), not from the map with the intensity prior."""
    import copy

    import torch

    from MedicalAnomalyDetectionLib.methods import build_method, with_overrides
    from MedicalAnomalyDetectionLib.pipeline import score_volume
    from MedicalAnomalyDetectionLib.preprocessing import prepare_volume, foreground_mask
    from MedicalAnomalyDetectionLib.scoring import eligible_slices, peak_z_scores

    bundle = with_overrides(tiny_bundle, {"intensity_prior": 0.1})
    peak_z = copy.deepcopy(bundle)
    peak_z.card.slice_score = "peak-z"
    image = make_image(head_array())
    prepared = prepare_volume(image, bundle.card.preprocessing, foreground_mask(image))
    method = build_method(bundle, torch.device("cpu"))
    evidence = method.score(torch.from_numpy(prepared.slices), torch.from_numpy(prepared.mask)).evidence.numpy()
    eligible = eligible_slices(prepared.brain_area)
    expected = peak_z_scores(evidence * prepared.mask.any(axis=(1, 2))[:, None, None], prepared.mask, eligible)
    scored = score_volume(method, prepared, slice_score="peak-z")
    np.testing.assert_allclose(scored.slice_scores, expected, rtol=1e-4, atol=1e-5)
    assert scored.volume_score == pytest.approx(expected[eligible].max(), rel=1e-5)
    result = detect(image, peak_z, device="cpu")
    np.testing.assert_allclose(result.slice_scores, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(detect(image, bundle, device="cpu").slice_scores, expected)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, False), (True, False, True),
                                                        (False, True, True)])
def test_bf16_autocast_only_where_the_cpu_computes_bf16_natively(monkeypatch, avx512_bf16, amx, expected):
    """oneDNN says bf16 works on any AVX-512 CPU, but without AVX512-BF16 or AMX it runs at half fp32's speed."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_supports_bf16() is expected
    with autocast_for(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == (torch.bfloat16 if expected else torch.float32)

"""The per-scan operating point: its threshold against the formula, what it does on a healthy map and on a huge
lesion load, and how mad-detect and cohorts choose and record it."""

import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from MedicalAnomalyDetectionLib.bundle import load_bundle, save_bundle
from MedicalAnomalyDetectionLib.cli import main
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.operating_point import (FIXED, GIVEN, PER_SCAN, operating_point,
                                                        per_scan_threshold)

from conftest import head_array, make_image, tiny_card

FIXED_T, RATE, K = 2.0, 0.01, 3.5


def _healthy(n=200_000, seed=0):
    return np.random.default_rng(seed).normal(0.5, 0.4, n)


def test_the_threshold_is_the_bulks_median_plus_k_sigma():
    values = _healthy()
    lesion_share = min(max(np.mean(values >= FIXED_T) - RATE, 0.0), 0.3)
    q50, q75 = np.quantile(values, [0.5 * (1 - lesion_share), 0.75 * (1 - lesion_share)])
    expected = q50 + K * (q75 - q50) / 0.6745
    assert per_scan_threshold(values, FIXED_T, RATE, K) == pytest.approx(expected)
    assert expected == pytest.approx(0.5 + K * 0.4, rel=0.02)  # a normal bulk: its mean plus k standard deviations


def test_a_map_without_a_tail_gets_a_near_empty_label_map():
    values = _healthy()
    threshold = per_scan_threshold(values, FIXED_T, RATE, K)
    assert np.mean(values >= threshold) < 0.001  # a normal bulk above 3.5 SD: 0.02 %


def test_a_huge_lesion_load_keeps_the_threshold_on_the_healthy_tissue():
    healthy = _healthy(140_000)
    lesion = np.random.default_rng(1).normal(4.0, 0.5, 60_000)  # 30 % of the brain
    threshold = per_scan_threshold(np.concatenate([healthy, lesion]), FIXED_T, RATE, K)
    assert threshold == pytest.approx(per_scan_threshold(healthy, FIXED_T, RATE, K), abs=0.25)
    assert np.mean(lesion >= threshold) > 0.9 and np.mean(healthy >= threshold) < 0.005
    naive = np.median(np.concatenate([healthy, lesion]))  # without removing the lesion share the bulk moves up
    assert naive > np.median(healthy) + 0.2


def test_small_lesions_lower_the_threshold_below_a_fixed_one_that_is_too_high():
    """A scanner whose healthy maps sit lower than the calibration scanners': the fixed threshold misses its
    lesions, the per-scan one follows the scan."""
    healthy = np.random.default_rng(2).normal(0.2, 0.2, 100_000)
    lesion = np.random.default_rng(3).normal(1.6, 0.2, 300)
    threshold = per_scan_threshold(np.concatenate([healthy, lesion]), FIXED_T, RATE, K)
    assert threshold < 1.2 and np.mean(lesion >= threshold) > 0.95 and np.mean(lesion >= FIXED_T) < 0.05


def test_degenerate_maps_fall_back_to_the_fixed_threshold():
    assert per_scan_threshold(np.zeros(1000), FIXED_T, RATE, K) == FIXED_T
    assert per_scan_threshold(np.empty(0), FIXED_T, RATE, K) == FIXED_T


def _card(**thresholds):
    card = tiny_card()
    card.thresholds = {"pixel": FIXED_T, **thresholds}
    return card


def test_the_card_decides_whether_per_scan_is_possible():
    assert operating_point(_card(pixel_fpr=RATE, per_scan_k=K)).name == PER_SCAN
    assert operating_point(_card(pixel_fpr=RATE, per_scan_k=K), mode=FIXED).threshold(_healthy()) == FIXED_T
    assert operating_point(_card(pixel_fpr=RATE)).name == FIXED  # no k chosen for this model: fixed
    given = operating_point(_card(pixel_fpr=RATE, per_scan_k=K), threshold=0.7)
    assert given.name == GIVEN and given.threshold(_healthy()) == 0.7
    with pytest.raises(InputError, match="unknown operating point"):
        operating_point(_card(), mode="adaptive")
    with pytest.raises(InputError, match="positive number"):
        operating_point(_card(), threshold=-1.0)
    card = _card()
    card.thresholds = {}
    with pytest.raises(InputError, match="no calibrated threshold"):
        operating_point(card)


@pytest.fixture
def per_scan_bundle(tmp_path):
    card = tiny_card("intensity-per-scan", "intensity")
    card.preprocessing = replace(card.preprocessing, normalisation="zscore")
    card.thresholds = {"pixel": 3.0, "pixel_fpr": RATE, "per_scan_k": K}
    return save_bundle(tmp_path / "model", card, None)


def test_mad_detect_labels_per_scan_by_default_and_fixed_on_request(per_scan_bundle, tmp_path):
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(make_image(head_array()), str(path))
    reports = {}
    for mode in (PER_SCAN, FIXED):
        out = tmp_path / mode
        assert main([str(path), "--model", str(per_scan_bundle), "--output-dir", str(out), "--brain-mask", "none",
                     "--operating-point", mode]) == 0
        reports[mode] = json.loads((out / "report.json").read_text())
        anomaly = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "anomaly_map.nii.gz")))
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "brain_mask.nii.gz"))) > 0
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "anomaly_label.nii.gz")))
        assert reports[mode]["operating_point"] == mode
        expected = per_scan_threshold(anomaly[brain], 3.0, RATE, K) if mode == PER_SCAN else 3.0
        assert reports[mode]["threshold"] == pytest.approx(expected, rel=1e-6)
        np.testing.assert_array_equal(label, anomaly >= reports[mode]["threshold"])
    assert reports[PER_SCAN]["threshold"] != reports[FIXED]["threshold"]


def test_a_cohort_rerun_at_another_operating_point_is_refused(per_scan_bundle, tmp_path, capsys):
    for name in ("a", "b"):
        sitk.WriteImage(make_image(head_array(seed=ord(name))), str(tmp_path / f"{name}.nii.gz"))
    args = [str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "--model", str(per_scan_bundle),
            "--output-dir", str(tmp_path / "out"), "--brain-mask", "none"]
    assert main(args) == 0
    assert main(args) == 0 and json.loads(capsys.readouterr().out.splitlines()[-1])["skipped"] == 2
    assert main([*args, "--operating-point", FIXED]) == 1
    assert "per-scan threshold" in capsys.readouterr().out + (tmp_path / "out" / "cohort.csv").read_text()
    assert load_bundle(per_scan_bundle).card.thresholds["per_scan_k"] == K

"""Evaluation measures what users run: its metrics pinned against brute force on small arrays, and ``score_split``
going through the detector's own path (``inference.stage_volume`` + ``inference.score_staged``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import distance_transform_edt

from MedicalAnomalyDetectionLib import inference
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.operating_point import operating_point
from MedicalAnomalyDetectionLib.volume_io import read_volume
from training import compare, evaluation
from training.datasets import load_cases
from training.evaluation import (LESION_MARGIN_MM, SplitScores, calibrate, position_scores, rate_threshold,
                                 score_split, summarise)
from training.metrics import best_dice, dice_at

ROUNDING = 5e-5 + 1e-12  # summarise rounds to 4 decimals


# ---------------------------------------------------------------------------------------------- brute-force helpers

def brute_auroc(labels, scores) -> float:
    """P(score of a positive > score of a negative), ties counting one half: the rank-sum statistic by pairs."""
    labels, scores = np.asarray(labels, dtype=bool), np.asarray(scores, dtype=float)
    positive, negative = scores[labels][:, None], scores[~labels][None, :]
    return float(((positive > negative) + 0.5 * (positive == negative)).mean())


def brute_dice(labels, predicted) -> float:
    labels, predicted = np.asarray(labels, dtype=bool), np.asarray(predicted, dtype=bool)
    both = sum(1 for a, b in zip(labels, predicted) if a and b)
    return 2.0 * both / (labels.sum() + predicted.sum())


def flagged_share(sources, t: float) -> float:
    """The mean over sources of the share of each source's values >= t (each source weighs the same)."""
    return float(np.mean([np.mean(np.asarray(v) >= t) for v in sources]))


def threshold_interval(sources, rate: float) -> tuple[float, float]:
    """(u_prev, u_k]: every threshold in it flags at most ``rate`` and the next lower value flags more; u_k the
    smallest of all values for which the share flagged is at most ``rate``, found by trying every value."""
    values = np.unique(np.concatenate(sources))
    shares = [flagged_share(sources, u) for u in values]
    k = next(i for i, share in enumerate(shares) if share <= rate)
    return (values[k - 1] if k > 0 else -np.inf), values[k]


# ---------------------------------------------------------------------------------------------- metrics

@pytest.mark.parametrize("seed", range(4))
def test_best_dice_equals_an_exhaustive_search_over_every_threshold(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.25
    scores = np.round(rng.normal(size=200) + 1.5 * labels, 1)  # one decimal: many ties
    assert len(np.unique(scores)) < 150
    exhaustive = max(brute_dice(labels, scores >= t) for t in np.unique(scores))
    found, threshold = best_dice(labels, scores)
    assert found == pytest.approx(exhaustive, abs=1e-12)
    assert brute_dice(labels, scores >= threshold) == pytest.approx(found, abs=1e-12)


def test_best_dice_with_a_small_lesion_share_still_finds_the_best_threshold():
    rng = np.random.default_rng(7)
    labels = np.zeros(2000, dtype=bool)
    labels[:30] = True
    scores = np.round(rng.normal(size=2000) + 3.0 * labels, 2)
    exhaustive = max(brute_dice(labels, scores >= t) for t in np.unique(scores))
    found, threshold = best_dice(labels, scores)
    assert found == pytest.approx(exhaustive, abs=1e-12)
    assert dice_at(labels, scores, threshold) == pytest.approx(found, abs=1e-12)
    assert best_dice(np.zeros(5, dtype=bool), np.arange(5.0)) == (0.0, float("inf"))


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2, 0.5])
def test_rate_threshold_flags_the_rate_with_sources_weighing_the_same(rate):
    rng = np.random.default_rng(1)
    small = np.round(rng.normal(0.0, 1.0, 60), 2)  # two sources of very different sizes and levels, with ties
    large = np.round(rng.normal(1.0, 1.0, 900), 2)
    t = rate_threshold([small, large], rate)
    below, at = threshold_interval([small, large], rate)
    assert below < t <= at
    share = flagged_share([small, large], t)
    step = max(np.max(np.unique(v, return_counts=True)[1]) / len(v) for v in (small, large)) / 2
    assert rate - step <= share <= rate  # within one value's step of the rate
    # equal weight, not pooled: the pooled share at t is another number (the large source dominates it)
    assert abs(np.mean(np.concatenate([small, large]) >= t) - share) > 0.25 * rate


def test_calibrate_on_hand_built_split_scores():
    rng = np.random.default_rng(2)
    one = SplitScores(healthy_voxel_scores=[rng.random(40), rng.random(25) + 0.5],
                      healthy_slice_scores=[np.arange(10.0), np.arange(5.0, 15.0)])
    two = SplitScores(healthy_voxel_scores=[2.0 * rng.random(300)], healthy_slice_scores=[np.linspace(0, 30, 61)])
    result = calibrate({"one val": one, "two val": two}, pixel_fpr=0.1, slice_fpr=0.2)
    voxels = [np.concatenate(one.healthy_voxel_scores), np.concatenate(two.healthy_voxel_scores)]
    slices = [np.concatenate(one.healthy_slice_scores), np.concatenate(two.healthy_slice_scores)]
    below, at = threshold_interval(voxels, 0.1)
    assert below < result["pixel"] <= at and flagged_share(voxels, result["pixel"]) <= 0.1
    below, at = threshold_interval(slices, 0.2)
    assert below < result["slice"] <= at and flagged_share(slices, result["slice"]) <= 0.2
    assert result["healthy_voxels"] == {"one val": 65, "two val": 300}
    assert result["healthy_slices"] == {"one val": 20, "two val": 61}
    assert result["pixel_fpr"] == 0.1 and result["slice_fpr"] == 0.2 and "3 mm" in result["meaning"]
    low = SplitScores(healthy_voxel_scores=[np.r_[-np.ones(50), np.zeros(40), np.ones(10)]],
                      healthy_slice_scores=[np.ones(3)])
    with pytest.raises(InputError, match="not above 0"):  # flagging 80 % takes a threshold at or below 0
        calibrate({"low": low}, pixel_fpr=0.8, slice_fpr=0.5)


def test_position_scores_are_brain_area_and_centrality_within_the_brain_slab():
    scores = position_scores(np.array([0, 5, 10, 5, 0, 0]))
    assert scores["brain_area"].tolist() == [0, 5, 10, 5, 0, 0]
    assert scores["centrality"].tolist() == [-1.0, -0.5, 0.0, -0.5, -1.0, -1.5]  # slab: slices 1 to 3


def hand_built_split() -> SplitScores:
    """Three cases (two with lesion) whose label map deliberately differs from the scores at the threshold."""
    rng = np.random.default_rng(3)
    scores = SplitScores(case_ids=["a", "b", "c"], masks_made_by={"given brain mask"})
    for case, lesion_voxels in (("a", 12), ("b", 30), ("c", 0)):
        labels = np.zeros(120, dtype=bool)
        labels[:lesion_voxels] = True
        values = np.round(rng.random(120) + 0.6 * labels, 2)
        regions = labels.astype(np.int32)
        regions[: lesion_voxels // 2] *= 2
        near = labels.copy()
        near[lesion_voxels:lesion_voxels + 10] = True  # a margin of 10 voxels around each lesion
        flags = values >= 0.9
        flags[::7] = ~flags[::7]  # the detector's label map: not simply scores >= threshold
        slice_labels = np.zeros(8, dtype=bool)
        slice_labels[3:3 + lesion_voxels // 10] = True
        scores.slice_labels.append(slice_labels)
        scores.slice_scores.append(np.round(rng.random(8) + 0.5 * slice_labels, 1))
        scores.position_scores["brain_area"].append(np.array([3, 5, 8, 9, 9, 8, 5, 3.0]))
        scores.position_scores["centrality"].append(-np.abs(np.linspace(0, 1, 8) - 0.5))
        scores.voxel_labels.append(labels)
        scores.voxel_scores.append(values)
        scores.voxel_regions.append(regions)
        scores.healthy_voxel_scores.append(values[~near])
        scores.voxel_flags.append(flags)
        scores.healthy_voxel_flags.append(flags[~near])
        scores.rows.append({"case": case})
    return scores


def test_summarise_against_brute_force():
    scores = hand_built_split()
    threshold = 0.9
    summary = summarise(scores, threshold)
    slice_labels, slice_scores = np.concatenate(scores.slice_labels), np.concatenate(scores.slice_scores)
    labels, values = np.concatenate(scores.voxel_labels), np.concatenate(scores.voxel_scores)
    flags = np.concatenate(scores.voxel_flags)
    assert summary["cases"] == 3 and summary["slices"] == 24 and summary["abnormal_slices"] == 4
    assert summary["masking"] == "given brain mask"
    assert summary["slice_auroc"] == pytest.approx(brute_auroc(slice_labels, slice_scores), abs=ROUNDING)
    for name in ("brain_area", "centrality"):
        expected = brute_auroc(slice_labels, np.concatenate(scores.position_scores[name]))
        assert summary["position_only_slice_auroc"][name] == pytest.approx(expected, abs=ROUNDING)
    assert summary["voxel_auroc"] == pytest.approx(brute_auroc(labels, values), abs=ROUNDING)
    exhaustive = max(brute_dice(labels, values >= t) for t in np.unique(values))
    assert summary["best_dice"] == pytest.approx(exhaustive, abs=ROUNDING)

    # at the threshold: pooled Dice, per lesion-holding case (a, b) mean / SD (n - 1) / worst, healthy rate
    assert summary["dice_at_threshold"] == pytest.approx(brute_dice(labels, values >= threshold), abs=ROUNDING)
    per_case = [brute_dice(scores.voxel_labels[i], scores.voxel_scores[i] >= threshold) for i in (0, 1)]
    spread = summary["dice_at_threshold_per_case"]
    assert spread["cases"] == 2
    assert spread["mean"] == pytest.approx((per_case[0] + per_case[1]) / 2, abs=ROUNDING)
    assert spread["sd"] == pytest.approx(abs(per_case[0] - per_case[1]) / np.sqrt(2), abs=ROUNDING)
    assert spread["worst"] == pytest.approx(min(per_case), abs=ROUNDING)
    assert spread["worst_case"] == "ab"[int(np.argmin(per_case))]
    healthy = np.concatenate(scores.healthy_voxel_scores)
    assert len(healthy) == 3 * 120 - (12 + 10) - (30 + 10) - 10  # lesion and margin left out
    flagged = sum(1 for v in healthy if v >= threshold)
    assert summary["healthy_fpr_at_threshold"] == pytest.approx(flagged / len(healthy), abs=ROUNDING)

    # the default label map, as the detector returned it
    assert summary["label_map_dice"] == pytest.approx(brute_dice(labels, flags), abs=ROUNDING)
    assert summary["label_map_dice"] != summary["dice_at_threshold"]
    per_case = [brute_dice(scores.voxel_labels[i], scores.voxel_flags[i]) for i in (0, 1)]
    spread = summary["label_map_dice_per_case"]
    assert spread["mean"] == pytest.approx(np.mean(per_case), abs=ROUNDING)
    assert spread["sd"] == pytest.approx(np.std(per_case, ddof=1), abs=ROUNDING)
    assert spread["worst_case"] == "ab"[int(np.argmin(per_case))]
    healthy_flags = np.concatenate(scores.healthy_voxel_flags)
    assert summary["label_map_healthy_fpr"] == pytest.approx(healthy_flags.sum() / len(healthy_flags), abs=ROUNDING)


def test_summarise_without_a_threshold_or_label_map_leaves_those_out():
    scores = hand_built_split()
    scores.voxel_flags, scores.healthy_voxel_flags = [], []
    summary = summarise(scores, None)
    assert "slice_auroc" in summary and "position_only_slice_auroc" in summary and "best_dice" in summary
    assert not {"dice_at_threshold", "dice_at_threshold_per_case", "healthy_fpr_at_threshold", "label_map_dice",
                "label_map_healthy_fpr"} & set(summary)


# ---------------------------------------------------------------------------------------------- the core path

@pytest.mark.parametrize("which", ["intensity", "intensity per scan", "patchgan"])
def test_evaluation_measures_the_map_mad_detect_makes(which, toy_dataset, intensity_bundle, tiny_bundle):
    bundle = tiny_bundle if which == "patchgan" else intensity_bundle
    if which == "intensity per scan":  # the label map's threshold comes from each scan's own map
        bundle.card.thresholds.update(pixel_fpr=0.01, per_scan_k=2.0)
    method = build_method(bundle, torch.device("cpu"))
    cases = load_cases(toy_dataset, "test", "flair")
    scores = score_split(method, bundle, cases, batch_size=16)
    assert scores.case_ids == [case.case_id for case in cases]
    assert scores.masks_made_by == {"the dataset's reference brain mask"}
    for i, case in enumerate(cases):
        brain = read_volume(case.brain)
        result = detect(read_volume(case.image), bundle, brain_mask=brain, device="cpu", method=method)
        inside = sitk.GetArrayFromImage(brain) > 0
        np.testing.assert_allclose(scores.voxel_scores[i], sitk.GetArrayFromImage(result.anomaly_map)[inside],
                                   rtol=1e-6, atol=1e-7)
        assert np.array_equal(scores.voxel_flags[i], sitk.GetArrayFromImage(result.label_map)[inside] > 0)
        assert scores.rows[i]["label_map_threshold"] == pytest.approx(result.threshold, rel=1e-5)
        np.testing.assert_allclose(scores.slice_scores[i], result.slice_scores[result.slice_eligible], rtol=1e-6)
        assert scores.rows[i]["volume_score"] == pytest.approx(result.volume_score, rel=1e-6)
        assert scores.rows[i]["slices"] == int(result.slice_eligible.sum())

        # slice labels: eligible slices holding lesion; the input's slices along the detection's slice axis agree
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case.lesion))) > 0
        on_input = np.moveaxis(lesion & inside, 2 - result.slice_axis, 0).any(axis=(1, 2))
        assert np.array_equal(scores.slice_labels[i], on_input[result.slice_index[result.slice_eligible]])
        assert scores.slice_labels[i].any() == lesion.any()

        # healthy voxels: every brain voxel at least LESION_MARGIN_MM from the lesion when there is one
        if lesion.any():
            distance = distance_transform_edt(~lesion, sampling=brain.GetSpacing()[::-1])[inside]
            healthy = scores.healthy_voxel_scores[i]
            assert len(healthy) <= int((distance >= LESION_MARGIN_MM).sum())
            assert len(healthy) >= int((distance > 2 * LESION_MARGIN_MM).sum())
        else:
            assert len(scores.healthy_voxel_scores[i]) == int(inside.sum())
    summary = summarise(scores, bundle.card.thresholds["pixel"])
    assert set(summary["position_only_slice_auroc"]) == {"brain_area", "centrality"}
    if which == "intensity per scan":
        assert summary["label_map_operating_point"] == "per-scan"
        assert len({row["label_map_threshold"] for row in scores.rows}) == len(cases)  # one threshold per scan
    else:  # a card without a per-scan factor: the label map is made at its fixed threshold
        assert summary["label_map_operating_point"] == "fixed"
        assert summary["label_map_dice"] == summary["dice_at_threshold"]


def test_the_label_map_is_the_detections_not_recomputed(toy_dataset, intensity_bundle, monkeypatch):
    """A core that returns another default label map (e.g. a per-scan threshold) is measured as it is."""
    real, calls = inference.score_staged, []

    def everything_flagged(staged, bundle, method, point, batch_size=16, **options):
        detection = real(staged, bundle, method, point, batch_size, **options)
        calls.append(point)
        everything = sitk.Image(detection.anomaly_map.GetSize(), sitk.sitkUInt8) + 1
        everything.CopyInformation(detection.anomaly_map)
        detection.label_map = everything
        return detection

    monkeypatch.setattr(inference, "score_staged", everything_flagged)
    cases = load_cases(toy_dataset, "test", "flair")
    method = build_method(intensity_bundle, torch.device("cpu"))
    summary = summarise(score_split(method, intensity_bundle, cases), intensity_bundle.card.thresholds["pixel"])
    assert calls == [operating_point(intensity_bundle.card)] * len(cases)  # mad-detect's default
    assert summary["label_map_healthy_fpr"] == 1.0 and summary["healthy_fpr_at_threshold"] < 0.5
    assert summary["label_map_dice"] < summary["dice_at_threshold"]


def test_staging_is_cached_across_models_with_the_same_preprocessing(toy_dataset, intensity_bundle, monkeypatch):
    staged = []
    real = evaluation.inference.stage_volume
    monkeypatch.setattr(evaluation.inference, "stage_volume", lambda *a, **k: staged.append(1) or real(*a, **k))
    cases = load_cases(toy_dataset, "test", "flair")
    method, cache = build_method(intensity_bundle, torch.device("cpu")), {}
    first = score_split(method, intensity_bundle, cases, cache=cache)
    second = score_split(method, intensity_bundle, cases, cache=cache)
    assert len(staged) == len(cases)
    assert all(np.array_equal(a, b) for a, b in zip(first.voxel_scores, second.voxel_scores))


def test_compare_table_has_position_only_rows():
    summary = {"slice_auroc": 0.8, "voxel_auroc": 0.9, "best_dice": 0.5, "label_map_dice": 0.4,
               "label_map_dice_per_case": {"mean": 0.3, "sd": 0.1, "worst": 0.2, "worst_case": "x", "cases": 2},
               "position_only_slice_auroc": {"brain_area": 0.7, "centrality": 0.6}}
    table = compare.markdown({"m": {"d": summary}, "n": {"d": {**summary, "slice_auroc": 0.75}}}, ["d"],
                             {"m": "40 epochs, 59.4 min on cpu", "n": "none"})
    rows = table.splitlines()
    assert rows[2] == "| m | 40 epochs, 59.4 min on cpu | **0.800** | **0.900** | **0.500** | 0.400 (0.300 ± 0.100) |"
    assert rows[3].startswith("| n | none | 0.750 | ")
    assert rows[-2] == "| position only: brain area | none | 0.700 | – | – | – |"
    assert rows[-1] == "| position only: centrality | none | 0.600 | – | – | – |"


@pytest.mark.parametrize("training, budget", [
    ({"epochs": 600, "settings": {"epochs": 600}, "seconds": 334.7, "device": "NVIDIA H100 80GB HBM3"},
     "600 epochs, 5.6 min on NVIDIA H100 80GB HBM3"),
    ({"settings": {"steps": 150}, "seconds": 590.3, "device": "cpu"}, "150 steps, 9.8 min on cpu"),
    ({"settings": {"epochs": 1}, "seconds": 0.8, "device": "cpu"}, "0.8 s on cpu"),
    ({"settings": {}, "seconds": 11237.2, "device": "cpu"}, "3.1 h on cpu"),
    ({"data": "none (no training)"}, "none")])
def test_the_comparison_states_each_training_budget_from_the_card(training, budget, intensity_bundle):
    card = dataclasses.replace(intensity_bundle.card, training=training)
    assert compare.training_budget(card) == budget


@pytest.mark.parametrize("masking, how", [("none", "foreground mask (no brain extraction)"),
                                          ("auto", "foreground of a skull-stripped input")])
def test_detector_masking_is_measured_inside_the_reference_brain(masking, how, toy_dataset, intensity_bundle):
    cases = load_cases(toy_dataset, "test", "flair")
    method = build_method(intensity_bundle, torch.device("cpu"))
    scores = score_split(method, intensity_bundle, cases, masking=masking)
    assert scores.masks_made_by == {how}
    for i, case in enumerate(cases):
        brain, image = read_volume(case.brain), read_volume(case.image)
        result = detect(image, intensity_bundle, device="cpu", method=method, masking=masking)
        inside = sitk.GetArrayFromImage(brain) > 0
        assert np.array_equal(scores.voxel_scores[i], sitk.GetArrayFromImage(result.anomaly_map)[inside])

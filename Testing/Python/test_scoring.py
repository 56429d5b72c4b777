"""The patch-ranking score (Eq. 5) and the per-volume peak z against values worked out by hand."""

import numpy as np
import pytest
import torch

from MedicalAnomalyDetectionLib.scoring import PatchRanking, patch_losses, peak_z_scores, slice_scores


def _map_with_two_hot_patches() -> tuple[torch.Tensor, torch.Tensor]:
    error = torch.zeros(1, 8, 8)
    error[0, 0:4, 0:4] = 2.0  # patch loss 4.0
    error[0, 4:8, 4:8] = 1.0  # patch loss 1.0
    return error, torch.ones(1, 8, 8)


def test_patch_losses_are_mean_squared_error_per_patch():
    error, mask = _map_with_two_hot_patches()
    losses, valid = patch_losses(error, mask, patch=4, stride=4, min_coverage=0.5)
    assert valid.all()
    assert sorted(losses[0].tolist()) == [0.0, 0.0, 1.0, 4.0]


def test_ranked_score_weights_the_most_anomalous_patches():
    error, mask = _map_with_two_hot_patches()
    ranked = slice_scores(error, mask, PatchRanking(patch=4, stride=4, weights=(1.1, 1.0)))
    assert ranked.item() == pytest.approx(1.1 * 4.0 + 1.0 * 1.0)


def test_the_paper_reading_weighs_every_patch():
    """Eq. 5: lambda = 1.1 for the most anomalous patch, 1.0 for every other one of the N patches."""
    error, mask = _map_with_two_hot_patches()
    error[0, 0:4, 4:8] = 0.5  # a third patch, loss 0.25: counted by the paper's reading, not by the top-2 one
    paper = slice_scores(error, mask, PatchRanking(patch=4, stride=4))
    assert paper.item() == pytest.approx(1.1 * 4.0 + 1.0 + 0.25)
    top_two = slice_scores(error, mask, PatchRanking(patch=4, stride=4, weights=(1.1, 1.0), rest_weight=0.0))
    assert top_two.item() == pytest.approx(1.1 * 4.0 + 1.0)


def test_without_ranking_the_score_is_the_plain_sum_of_patch_losses():
    error, mask = _map_with_two_hot_patches()
    plain = slice_scores(error, mask, PatchRanking(patch=4, stride=4, ranking=False))
    assert plain.item() == pytest.approx(4.0 + 1.0)


def test_patches_outside_the_brain_do_not_count():
    error, mask = _map_with_two_hot_patches()
    mask[0, 0:4, 0:4] = 0  # the hottest patch is outside the brain
    ranked = slice_scores(error, mask, PatchRanking(patch=4, stride=4, weights=(1.1, 1.0)))
    assert ranked.item() == pytest.approx(1.1 * 1.0)


def test_diffuse_normalisation_divides_by_median_patch_loss():
    error = torch.full((1, 8, 8), 1.0)
    error[0, 0:4, 0:4] = 3.0
    mask = torch.ones(1, 8, 8)
    ranking = PatchRanking(patch=4, stride=4, weights=(1.0,), rest_weight=0.0, diffuse_normalisation=True, floor=0.0)
    assert slice_scores(error, mask, ranking).item() == pytest.approx(9.0 / 1.0)


def test_empty_slice_scores_zero():
    scores = slice_scores(torch.ones(2, 8, 8), torch.zeros(2, 8, 8), PatchRanking(patch=4, stride=4))
    assert scores.tolist() == [0.0, 0.0]


def test_peak_z_is_the_smoothed_peak_in_robust_sds_of_the_volumes_positive_evidence():
    rng = np.random.default_rng(0)
    evidence = np.clip(rng.normal(0.0, 1.0, (6, 16, 16)), 0, None).astype(np.float32)  # half the brain exactly 0
    evidence[3, 6:11, 6:11] = 9.0  # a 5 x 5 bright spot: its box-smoothed peak is 9
    mask = np.ones((6, 16, 16), bool)
    mask[0] = False  # no brain: scores 0
    eligible = np.array([False, True, True, True, True, False])
    positive = evidence[1:5][evidence[1:5] > 0]
    median = np.median(positive)
    spread = 1.4826 * np.median(np.abs(positive - median))
    scores = peak_z_scores(evidence, mask, eligible)
    assert scores[0] == 0.0
    assert scores[3] == pytest.approx((9.0 - median) / spread, rel=1e-5)
    assert scores[3] == scores.max() and scores[3] > 3 * scores[[1, 2, 4]].max()
    box = torch.nn.functional.avg_pool2d(torch.from_numpy(evidence[2]).view(1, 1, 16, 16), 5, 1, 2,
                                         count_include_pad=False).max().item()
    assert scores[2] == pytest.approx((box - median) / spread, rel=1e-5)

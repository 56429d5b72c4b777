"""The patch-ranking score (Eq. 5) against values worked out by hand."""

import pytest
import torch

from MedicalAnomalyDetectionLib.scoring import PatchRanking, patch_losses, slice_scores


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


def test_without_ranking_the_score_is_the_mean_patch_loss():
    error, mask = _map_with_two_hot_patches()
    plain = slice_scores(error, mask, PatchRanking(patch=4, stride=4, ranking=False))
    assert plain.item() == pytest.approx((4.0 + 1.0) / 4)


def test_patches_outside_the_brain_do_not_count():
    error, mask = _map_with_two_hot_patches()
    mask[0, 0:4, 0:4] = 0  # the hottest patch is outside the brain
    ranked = slice_scores(error, mask, PatchRanking(patch=4, stride=4, weights=(1.1, 1.0)))
    assert ranked.item() == pytest.approx(1.1 * 1.0)


def test_diffuse_normalisation_divides_by_median_patch_loss():
    error = torch.full((1, 8, 8), 1.0)
    error[0, 0:4, 0:4] = 3.0
    mask = torch.ones(1, 8, 8)
    ranking = PatchRanking(patch=4, stride=4, weights=(1.0,), diffuse_normalisation=True, floor=0.0)
    assert slice_scores(error, mask, ranking).item() == pytest.approx(9.0 / 1.0)


def test_empty_slice_scores_zero():
    scores = slice_scores(torch.ones(2, 8, 8), torch.zeros(2, 8, 8), PatchRanking(patch=4, stride=4))
    assert scores.tolist() == [0.0, 0.0]

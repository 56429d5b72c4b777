"""The Patch-GAN's hole masks, networks and scoring on tiny inputs."""

import pytest
import torch

from MedicalAnomalyDetectionLib.methods.patchgan import PatchGAN, checkerboard_holes, inference_holes
from MedicalAnomalyDetectionLib.networks.patch_discriminator import PatchDiscriminator

from conftest import TINY_CONFIG


def test_inference_holes_cover_every_pixel_once_per_shift():
    holes = inference_holes(32, 32, TINY_CONFIG, torch.device("cpu"))
    assert holes.shape == (2 * len(TINY_CONFIG.inference_shifts), 1, 32, 32)
    assert torch.all(holes.sum(dim=0) == len(TINY_CONFIG.inference_shifts))
    assert holes[0].mean().item() == pytest.approx(0.5)


def test_checkerboard_phase_and_shift():
    zero = torch.zeros(1, dtype=torch.long)
    base = checkerboard_holes(8, 8, 4, zero, zero, zero)[0, 0]
    assert base[0, 0] == 0 and base[0, 4] == 1 and base[4, 4] == 0
    shifted = checkerboard_holes(8, 8, 4, zero, zero + 2, zero + 2)[0, 0]
    assert shifted[0, 1] == 0 and shifted[0, 2] == 1 and shifted[2, 2] == 0


def test_discriminator_gives_a_grid_of_patch_logits():
    logits = PatchDiscriminator((8, 16, 32))(torch.rand(2, 1, 64, 64), torch.zeros(2, 1, 64, 64))
    assert logits.shape == (2, 1, 8, 8)


def test_inference_hides_every_hole_pixel_from_the_reconstructor(tiny_bundle):
    """What R sees in each pass is zero wherever that pass's hole indicator is 1, and the indicators cover each
    pixel len(shifts) times: every pixel is reconstructed from context only."""
    method = PatchGAN.from_bundle(tiny_bundle, torch.device("cpu"))
    seen = []
    method.reconstructor.register_forward_hook(lambda module, args, output: seen.append(args))
    method.reconstruct(torch.rand(3, 32, 32) + 0.5)
    masked, holes = seen[0]
    assert masked.shape[0] == 3 * 2 * len(TINY_CONFIG.inference_shifts)
    assert torch.all(masked[holes > 0] == 0)
    assert torch.all(masked[holes == 0] > 0)
    per_slice = holes.view(3, -1, 32, 32).sum(dim=1)
    assert torch.all(per_slice == len(TINY_CONFIG.inference_shifts))


def test_score_finds_a_bright_spot_on_a_flat_slice(tiny_bundle):
    method = PatchGAN.from_bundle(tiny_bundle, torch.device("cpu"))
    slices = torch.full((2, 32, 32), 0.5)
    slices[1, 12:18, 12:18] = 2.0
    mask = torch.ones(2, 32, 32, dtype=torch.bool)
    result = method.score(slices, mask)
    assert result.maps.shape == (2, 32, 32) and result.scores.shape == (2,)
    assert result.scores[1] > result.scores[0]
    assert result.maps[1, 12:18, 12:18].mean() > result.maps[1].mean()


def test_the_intensity_prior_is_refused_on_a_scale_it_does_not_know(tiny_bundle):
    from dataclasses import replace

    from MedicalAnomalyDetectionLib.errors import InputError
    from MedicalAnomalyDetectionLib.methods import build_method, with_overrides

    variant = with_overrides(tiny_bundle, {"intensity_prior": 0.1})
    variant.card.preprocessing = replace(variant.card.preprocessing, normalisation="zscore")
    with pytest.raises(InputError, match="assumes the percentile normalisation"):
        build_method(variant, torch.device("cpu"))

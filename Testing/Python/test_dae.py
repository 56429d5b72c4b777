"""The denoising autoencoder with coarse noise: noise, training, map, and the plug-in end to end."""

from __future__ import annotations

import numpy as np
import torch

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.methods.common import erode, median_filter
from MedicalAnomalyDetectionLib.methods.dae import DAEConfig, DenoisingAutoencoder, coarse_noise
from training.cli import main
from training.loop import FitSettings, train
from training.recipes.dae import dae_trainee
from training.slice_set import SliceSet

from conftest import head_array, make_image


def _disks(count: int, seed: int = 0) -> np.ndarray:
    """'Brains': a flat disk whose level varies from slice to slice, a darker ring inside it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:32, :32]
    radius = np.hypot(y - 15.5, x - 15.5)
    levels = rng.uniform(0.4, 0.6, (count, 1, 1))
    return (levels * (radius < 13) - 0.2 * levels * ((radius > 6) & (radius < 8))).astype(np.float32)


def test_coarse_noise_is_smooth_and_stays_inside_the_mask():
    x = torch.zeros(4, 1, 64, 64)
    mask = torch.zeros_like(x)
    mask[..., 8:56, 8:56] = 1
    noise = coarse_noise(x, mask, DAEConfig(noise_std=0.5, noise_resolution=8), torch.Generator().manual_seed(0))
    assert (noise[mask == 0] == 0).all() and noise[mask == 1].std() > 0.2
    inside = noise[..., 8:56, 8:56]
    neighbour_step = (inside[..., 1:] - inside[..., :-1]).abs().mean()
    assert neighbour_step < 0.3 * inside.abs().mean()  # coarse (white noise would be about 1.4x)


def test_median_filter_removes_specks_and_erosion_shrinks():
    values = torch.zeros(1, 9, 9)
    values[0, 4, 4] = 5.0
    values[0, :, 7:] = 1.0
    filtered = median_filter(values, 3)
    assert filtered[0, 4, 4] == 0 and filtered[0, 4, 8] == 1.0
    mask = torch.zeros(1, 9, 9)
    mask[0, 2:7, 2:7] = 1
    assert erode(mask, 1).sum() == 9 and erode(mask, 0).sum() == 25


def test_training_removes_the_noise_and_the_map_finds_a_spot(tmp_path):
    healthy = _disks(32)
    data = SliceSet(slices=healthy.astype(np.float16), masks=healthy > 0, case_ids=["a"] * 32, source={})
    config = DAEConfig(widths=(8, 16), noise_std=0.1, noise_resolution=4, median_filter=3, erode_px=0)
    settings = FitSettings(epochs=80, batch_size=8, learning_rate=3e-3, checkpoint_every=80)
    trainee = dae_trainee(config, settings, torch.device("cpu"))
    record = train(trainee, data, settings, tmp_path / "run", torch.device("cpu"))
    assert record.done == 80 and all(np.isfinite(entry["loss_r"]) for entry in record.losses)
    clean = torch.from_numpy(_disks(8, seed=3)).unsqueeze(1)
    noisy = clean + coarse_noise(clean, (clean > 0).float(), config, torch.Generator().manual_seed(1))
    with torch.no_grad():
        denoised = trainee.modules["denoiser"].eval()(noisy)
    inside = clean > 0  # the loss is taken inside the brain only
    assert ((denoised - clean)[inside] ** 2).mean() < 0.5 * ((noisy - clean)[inside] ** 2).mean()
    method = DenoisingAutoencoder(config, trainee.modules["denoiser"], torch.device("cpu"))
    spotted = _disks(2, seed=5)
    spotted[:, 12:20, 12:20] += 0.5
    slices = torch.from_numpy(np.concatenate([_disks(2, seed=5), spotted]))
    result = method.score(slices, slices > 0)
    assert result.scores[2:].min() > 2 * result.scores[:2].max()
    assert result.maps[2, 13:19, 13:19].mean() > 5 * result.maps[2, :, :8].mean()


def test_fit_export_detect_through_the_command_line(toy_dataset, tmp_path):
    cache, run, bundle_dir = tmp_path / "c.npz", tmp_path / "run", tmp_path / "bundle"
    assert main(["prepare", "--dataset", str(toy_dataset), "--modality", "flair", "--out", str(cache),
                 "--size", "32", "--spacing", "4"]) == 0
    assert main(["fit", "--method", "dae", "--data", str(cache), "--run-dir", str(run), "--epochs", "1",
                 "--batch-size", "8", "--widths", "4", "8", "--device", "cpu", "--noise-std", "0.05"]) == 0
    assert main(["export", "--run", str(run), "--name", "toy-dae", "--out", str(bundle_dir)]) == 0
    bundle = load_bundle(bundle_dir)
    assert bundle.card.method == "dae" and bundle.card.hyperparameters["noise_std"] == 0.05
    assert set(k.split(".")[0] for k in bundle.state_dict) == {"denoiser"}
    result = detect(make_image(head_array()), bundle, device="cpu", threshold=1.0)
    assert np.isfinite(result.slice_scores).all()

"""Training of the paper's baselines on healthy slices: AE and ALOCC through :func:`training.loop.train`, and the
one-class SVMs fitted directly with scikit-learn (stored as tensors, see ``methods/ocsvm.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.svm import OneClassSVM

from MedicalAnomalyDetectionLib.methods.alocc import ALOCCConfig
from MedicalAnomalyDetectionLib.methods.autoencoder import AutoencoderConfig, ConvAutoencoder
from MedicalAnomalyDetectionLib.methods.ocsvm import (MIN_PATCH_BRAIN, OCSVMConfig, RBFDecision, patch_features,
                                                      slice_features)
from MedicalAnomalyDetectionLib.methods.patchgan import PatchDiscriminator
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for

from MedicalAnomalyDetectionLib.errors import InputError

from .loop import CHECKPOINT, FitSettings, Trainee
from .slice_set import SliceSet

# Patches the patch SVM is fitted on (a random subset of the healthy brain patches: fitting is quadratic in them).
OCSVM_MAX_PATCHES = 6000


def _adam(module: torch.nn.Module, settings: FitSettings) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=settings.learning_rate, betas=(0.5, 0.999))


def autoencoder_trainee(config: AutoencoderConfig, settings: FitSettings, device: torch.device,
                        size: tuple[int, int]) -> Trainee:
    """The AE with plain L2 reconstruction of the augmented healthy (size) slice."""
    config.check_size(size)
    torch.manual_seed(settings.seed)
    network = ConvAutoencoder(config.widths, config.latent_channels).to(device)
    optimiser = _adam(network, settings)

    def step(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        with autocast_for(device, training=True):
            reconstruction = network(x).float()
        loss = F.mse_loss(reconstruction, x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return {"loss_r": loss.item()}

    return Trainee(method="ae", config=config.to_dict(), modules={"autoencoder": network},
                   optimisers={"autoencoder": optimiser}, step=step)


def alocc_trainee(config: ALOCCConfig, settings: FitSettings, device: torch.device,
                  size: tuple[int, int]) -> Trainee:
    """ALOCC: D tells x from R(x + noise); R denoises, fools D, and keeps settings.recon_weight * L2."""
    config.reconstructor.check_size(size)
    torch.manual_seed(settings.seed)
    r = config.reconstructor
    reconstructor = ConvAutoencoder(r.widths, r.latent_channels).to(device)
    discriminator = PatchDiscriminator(config.disc_widths, in_channels=1).to(device)
    opt_r, opt_d = _adam(reconstructor, settings), _adam(discriminator, settings)

    def step(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        noisy = x + config.noise_sigma * torch.randn(x.shape, generator=generator, device=x.device)
        with autocast_for(device, training=True):
            restored = reconstructor(noisy).float()
            d_real = discriminator(x).float()
            d_fake = discriminator(restored.detach()).float()
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with autocast_for(device, training=True):
            d_gen = discriminator(restored).float()
        loss_adv = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        loss_r = F.mse_loss(restored, x)
        opt_r.zero_grad(set_to_none=True)
        (loss_adv + settings.recon_weight * loss_r).backward()
        opt_r.step()
        return {"loss_r": loss_r.item(), "loss_adv": loss_adv.item(), "loss_d": loss_d.item()}

    return Trainee(method="alocc", config=config.to_dict(),
                   modules={"reconstructor": reconstructor, "discriminator": discriminator},
                   optimisers={"reconstructor": opt_r, "discriminator": opt_d}, step=step)


def _fit_rbf_svm(features: np.ndarray, nu: float) -> RBFDecision:
    svm = OneClassSVM(kernel="rbf", gamma="scale", nu=nu).fit(features)
    return RBFDecision(support=torch.from_numpy(svm.support_vectors_).float(),
                       alpha=torch.from_numpy(svm.dual_coef_[0]).double(),
                       intercept=torch.tensor(float(svm.intercept_[0]), dtype=torch.float64),
                       gamma=torch.tensor(float(svm._gamma), dtype=torch.float64))


def fit_ocsvm(data: SliceSet, config: OCSVMConfig, run_dir: Path, seed: int = 0) -> dict:
    """Fit the slice SVM on all healthy slices and the patch SVM on a random subset of their brain patches
    (at least MIN_PATCH_BRAIN brain); writes checkpoint.pt (tensors only) and run.json like the other methods."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    slices = torch.from_numpy(data.slices.astype(np.float32))
    masks = torch.from_numpy(data.masks.astype(np.float32))
    slice_svm = _fit_rbf_svm(slice_features(slices, config).numpy(), config.nu)
    features = patch_features(slices, config).flatten(0, 1)
    coverage = patch_features(masks, config).flatten(0, 1).mean(dim=1)
    brain_patches = features[coverage >= MIN_PATCH_BRAIN].numpy()
    if len(brain_patches) == 0:
        raise InputError(f"no {config.patch}-pixel patch of the training slices is half brain; use smaller patches")
    chosen = np.random.default_rng(seed).permutation(len(brain_patches))[:OCSVM_MAX_PATCHES]
    patch_svm = _fit_rbf_svm(brain_patches[chosen], config.nu)
    modules = {name: {k.split(".", 1)[1]: v for k, v in svm.state(name).items()}
               for name, svm in (("slice_svm", slice_svm), ("patch_svm", patch_svm))}
    seconds = round(time.perf_counter() - started, 1)
    torch.save({"modules": modules, "epoch": 1, "seconds": seconds}, run_dir / CHECKPOINT)
    record = {"method": "ocsvm", "config": config.to_dict(), "settings": {"seed": seed, "epochs": 1},
              "epochs_done": 1, "slices": int(len(slices)), "cases": len(set(data.case_ids)), "device": "cpu",
              "device_name": "cpu", "seconds": seconds,
              "history": [{"slice_support_vectors": int(slice_svm.support.shape[0]),
                           "patch_support_vectors": int(patch_svm.support.shape[0]),
                           "patches": int(len(chosen))}]}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record

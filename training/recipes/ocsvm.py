"""The one-class SVM baseline's recipe: SVMs fitted with scikit-learn and stored as tensors (see
``methods/ocsvm.py``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.svm import OneClassSVM

from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods.ocsvm import (MIN_PATCH_BRAIN, OCSVMConfig, OneClassSVMMethod, RBFDecision,
                                                      patch_features, slice_features)
from MedicalAnomalyDetectionLib.run_record import RunRecord

from ..loop import CHECKPOINT, save_checkpoint
from ..slice_set import SliceSet
from . import Recipe, register
from .base import RecipeSettings, RunOptions
from .settings import option

@dataclass(frozen=True, kw_only=True)
class OCSVMSettings(RecipeSettings):
    """The OCSVM pair's fit: the patch SVM's patch size (the patch grid is min(8, patch))."""

    patch: int = option(OCSVMConfig.patch, "patch size of the patch SVM in px")


# Patches the patch SVM is fitted on (a random subset of the healthy brain patches: fitting is quadratic in them).
OCSVM_MAX_PATCHES = 6000


def _fit_rbf_svm(features: np.ndarray, nu: float) -> RBFDecision:
    svm = OneClassSVM(kernel="rbf", gamma="scale", nu=nu).fit(features)
    return RBFDecision(support=torch.from_numpy(svm.support_vectors_).float(),
                       alpha=torch.from_numpy(svm.dual_coef_[0]).double(),
                       intercept=torch.tensor(float(svm.intercept_[0]), dtype=torch.float64),
                       gamma=torch.tensor(float(svm._gamma), dtype=torch.float64))


def fit_ocsvm(data: SliceSet, config: OCSVMConfig, run_dir: Path, seed: int = 0, command: str = "") -> RunRecord:
    """Fit the slice SVM on all healthy slices and the patch SVM on a random subset of their brain patches
    (at least MIN_PATCH_BRAIN brain); writes checkpoint.pt (tensors only)."""
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
    save_checkpoint({"modules": modules, "epoch": 1, "seconds": seconds}, run_dir / CHECKPOINT)
    return RunRecord(method=OneClassSVMMethod.name, config=config.to_dict(), settings={"seed": seed},
                     source=data.source, data=data.describe(), seed=seed, device="cpu", seconds=seconds, done=1,
                     planned=1, command=command,
                     losses=[{"slice_support_vectors": int(slice_svm.support.shape[0]),
                              "patch_support_vectors": int(patch_svm.support.shape[0]), "patches": int(len(chosen))}])


@register
class OCSVMRecipe(Recipe):
    name = OneClassSVMMethod.name
    help = "one-class SVM baseline on pooled intensities"
    Settings = OCSVMSettings

    @classmethod
    def fit(cls, settings: OCSVMSettings, data: SliceSet | None, run_dir: Path, run: RunOptions = RunOptions(),
            command: str = "") -> RunRecord:
        config = OCSVMConfig(patch=settings.patch, patch_grid=min(8, settings.patch))
        return fit_ocsvm(data, config, run_dir, seed=settings.seed, command=command)

"""Shared fixtures: tiny synthetic volumes and tiny model bundles (no real data, no real training)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedicalAnomalyDetectionLib.bundle import load_bundle, save_bundle
from MedicalAnomalyDetectionLib.card import ModelCard, Preprocessing
from MedicalAnomalyDetectionLib.methods.patchgan import PatchGANConfig
from MedicalAnomalyDetectionLib.networks.unet import Reconstructor
from MedicalAnomalyDetectionLib.scoring import PatchRanking

TINY_PRE = Preprocessing(plane="axial", size=(32, 32), spacing_mm=4.0, normalisation="percentile")
TINY_CONFIG = PatchGANConfig(widths=(4, 8), disc_widths=(8, 16), hole=8, inference_shifts=(0, 4), map_smoothing=3,
                             ranking=PatchRanking(patch=8, stride=4))


def head_array(shape_zyx: tuple[int, int, int] = (24, 40, 40), blob: tuple[int, int, int] | None = (12, 20, 26),
               seed: int = 0) -> np.ndarray:
    """An ellipsoid of textured 'tissue' on a zero background, with an optional bright cube ('lesion')."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape_zyx), indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.8) ** 2 + (z / 0.9) ** 2 < 1
    volume = (100.0 + 10.0 * rng.standard_normal(shape_zyx)) * inside
    if blob is not None:
        bz, by, bx = blob
        volume[bz - 2:bz + 3, by - 3:by + 4, bx - 3:bx + 4] = 250.0
    return volume.astype(np.float32)


def make_image(array: np.ndarray, spacing=(3.0, 3.0, 3.0), origin=(0.0, 0.0, 0.0),
               direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


@pytest.fixture
def head_image() -> sitk.Image:
    return make_image(head_array())


def tiny_card(name: str = "tiny", method: str = "patchgan") -> ModelCard:
    return ModelCard(name=name, method=method, version="test", modality="flair", preprocessing=TINY_PRE,
                     hyperparameters=TINY_CONFIG.to_dict() if method == "patchgan"
                     else {"sign": "positive", "ranking": PatchRanking(patch=8, stride=4).to_dict()},
                     thresholds={"pixel": 0.2, "slice": 0.01},
                     licence={"weights": "test", "non_commercial": False})


@pytest.fixture
def tiny_bundle_dir(tmp_path):
    """A bundle with a randomly initialised tiny reconstructor."""
    torch.manual_seed(0)
    state = {f"reconstructor.{k}": v for k, v in Reconstructor(TINY_CONFIG.widths).state_dict().items()}
    return save_bundle(tmp_path / "tiny", tiny_card(), state)


@pytest.fixture
def tiny_bundle(tiny_bundle_dir):
    return load_bundle(tiny_bundle_dir)


@pytest.fixture
def intensity_bundle(tmp_path):
    card = tiny_card("intensity-tiny", "intensity")
    card.preprocessing = Preprocessing(plane="axial", size=(32, 32), spacing_mm=4.0, normalisation="zscore")
    card.thresholds = {"pixel": 3.0}
    return load_bundle(save_bundle(tmp_path / "intensity", card, None))


def _write_case(folder, seed, lesion):
    folder.mkdir(parents=True)
    array = head_array(blob=(12, 20, 26) if lesion else None, seed=seed)
    sitk.WriteImage(make_image(array), str(folder / "flair.nii.gz"))
    sitk.WriteImage(make_image((array > 0).astype(np.uint8)), str(folder / "brain.nii.gz"))
    sitk.WriteImage(make_image((array == 250.0).astype(np.uint8)), str(folder / "lesion.nii.gz"))


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write into, root included: mode 0o500, and for root the immutable attribute (chattr +i),
    since root ignores permission bits. Skipped only where neither holds (checked by trying to write)."""
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        yield folder
    else:
        pytest.skip("cannot make a read-only folder on this file system")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o700)


@pytest.fixture
def toy_dataset(tmp_path):
    """A dataset in the layout of ../shared/data: 3 healthy train cases, 1 val, 3 test (2 with a bright lesion)."""
    root = tmp_path / "toy"
    splits = {"train": ["t0", "t1", "t2"], "val": ["v0"], "test": ["s0", "s1", "s2"]}
    for split, cases in splits.items():
        for i, case in enumerate(cases):
            _write_case(root / case, seed=sum(map(ord, case)), lesion=split == "test" and i > 0)
    (root / "dataset.json").write_text(json.dumps({"name": "toy", "licence": "CC BY-NC test", "splits": splits}))
    return root




def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the collected tests in reverse order (CI's second pass, so an order dependence shows)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Slicer/Qt tests (``test_slicer*``) run with the cyclic garbage collector at its most eager (threshold 1), module
    fixtures included: a Python object that Qt or VTK still uses but nothing in Python keeps alive is then freed at
    once and crashes the run every time, instead of only when a collection happens to fall in between."""
    if not item.module.__name__.startswith("test_slicer"):
        return (yield)
    before = gc.get_threshold()
    gc.set_threshold(1)
    try:
        return (yield)
    finally:
        gc.set_threshold(*before)

"""Training and cohort inference under torchrun: 2 CPU processes on gloo (``distributed_worker.py``), against the same
commands in one process."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedicalAnomalyDetectionLib import cli as detect_cli
from MedicalAnomalyDetectionLib.bundle import save_bundle
from MedicalAnomalyDetectionLib.distributed import World
from MedicalAnomalyDetectionLib.networks.autoencoder import ConvAutoencoder
from MedicalAnomalyDetectionLib.networks.unet import Reconstructor
from training import cli as training_cli
from training.slice_set import SliceSet

from conftest import TINY_CONFIG, head_array, make_image, tiny_card

WORKER = Path(__file__).with_name("distributed_worker.py")
REPO = Path(__file__).resolve().parents[2]  # where `training` is found (it is not installed)


def _weights(run: Path, module: str) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["modules"][module]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Data, a bundle and a cohort; then the worker's commands under torch.distributed.run with 2 processes."""
    work = tmp_path_factory.mktemp("ddp")
    smooth = np.cumsum(np.cumsum(np.random.default_rng(0).standard_normal((16, 32, 32)), axis=1), axis=2)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    SliceSet(slices=smooth.astype(np.float16), masks=np.ones((16, 32, 32), bool), case_ids=["a"] * 16,
             source={"dataset": "toy", "modality": "flair"}).save(work / "slices.npz")
    torch.manual_seed(0)
    state = {f"reconstructor.{k}": v for k, v in Reconstructor(TINY_CONFIG.widths).state_dict().items()}
    save_bundle(work / "bundle", tiny_card(), state)
    (work / "volumes").mkdir()
    for seed in range(5):
        sitk.WriteImage(make_image(head_array(seed=seed)), str(work / "volumes" / f"case{seed}.nii.gz"))
    completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                str(WORKER), str(work), str(work / "bundle")], capture_output=True, text=True,
                               timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return work


def test_two_processes_train_as_one_with_the_same_global_batch(work, tmp_path):
    """The autoencoder's step draws no random numbers, so 2 processes x 4 slices must match 1 process x 8 slices up
    to floating-point noise (bf16 autocast where the CPU has it); without gradient averaging they would not."""
    assert training_cli.main(["fit", "--method", "ae", "--data", str(work / "slices.npz"), "--epochs", "2",
                              "--batch-size", "8", "--widths", "4", "8", "--device", "cpu", "--run-dir",
                              str(tmp_path / "one")]) == 0
    one, two = _weights(tmp_path / "one", "autoencoder"), _weights(work / "ae", "autoencoder")
    torch.manual_seed(0)  # the initial weights, as the recipe seeds them
    initial = ConvAutoencoder((4, 8), 16).state_dict()
    for key in one:
        moved = (one[key].float() - initial[key].float()).abs().max()
        assert moved > 0, key
        assert (one[key].float() - two[key].float()).abs().max() <= 0.02 * moved, key
    record = (work / "ae" / "run.json").read_text()
    assert '"device": "2 x cpu"' in record


def test_resumed_two_process_training_equals_uninterrupted(work):
    straight, split = _weights(work / "straight", "reconstructor"), _weights(work / "split", "reconstructor")
    assert torch.load(work / "split" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    for key in straight:
        assert torch.equal(straight[key], split[key]), key


def test_two_process_cohort_writes_one_merged_table(work, tmp_path):
    assert detect_cli.main([str(work / "volumes"), "--model", str(work / "bundle"), "--output-dir",
                            str(tmp_path / "one"), "--device", "cpu"]) == 0
    read = lambda path: list(csv.DictReader(open(path)))  # noqa: E731
    two, one = read(work / "cohort" / "cohort.csv"), read(tmp_path / "one" / "cohort.csv")
    assert [row["volume"] for row in two] == [f"case{i}" for i in range(5)]
    assert [row["status"] for row in two] == ["done"] * 5
    assert [float(row["volume_score"]) for row in two] == pytest.approx([float(r["volume_score"]) for r in one])


def test_shards_cover_the_cohort_once():
    items = list(range(7))
    shards = [World(rank, 3).shard(items) for rank in range(3)]
    assert sorted(sum(shards, [])) == items and [len(s) for s in shards] == [3, 2, 2]

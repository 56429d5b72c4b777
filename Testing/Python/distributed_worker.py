"""Run by test_distributed.py under ``torch.distributed.run`` (2 processes, gloo): the commands a user would run
under torchrun, one after another in one process group (a process joins its group once)."""

import sys
from pathlib import Path

import torch

from MedicalAnomalyDetectionLib import cli as detect_cli
from MedicalAnomalyDetectionLib.distributed import launched_world, process_group
from training import cli as training_cli


def main(work: Path, bundle: Path) -> int:
    world = launched_world()
    fit = ["fit", "--data", str(work / "slices.npz"), "--epochs", "2", "--batch-size", "8", "--widths", "4", "8",
           "--device", "cpu"]
    patchgan = [*fit, "--method", "patchgan", "--hole", "8"]
    codes = []
    with process_group(world, torch.device("cpu")):
        codes.append(training_cli.main([*fit, "--method", "ae", "--run-dir", str(work / "ae")]))
        codes.append(training_cli.main([*patchgan, "--run-dir", str(work / "straight")]))
        codes.append(training_cli.main([*patchgan, "--run-dir", str(work / "split"), "--stop-after", "1"]))
        codes.append(training_cli.main([*patchgan, "--run-dir", str(work / "split"), "--resume"]))
        codes.append(detect_cli.main([str(work / "volumes"), "--model", str(bundle), "--output-dir",
                                      str(work / "cohort"), "--device", "cpu"]))
    (work / f"codes-{world.rank}.txt").write_text(" ".join(map(str, codes)))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))

"""Peak memory of one ``mad-detect`` run on a large synthetic volume (the bad-input table's 512x512x400 row).

    python docs/measure_peak_rss.py --size 512 512 400 --spacing 0.5 --model patchgan-flair

writes a synthetic skull-stripped head (int16, an ellipsoid of textured tissue with a bright blob) of that size into a
temporary folder, runs ``mad-detect`` on it in a child process and prints one JSON line: voxels, the child's peak
resident memory (MiB), its seconds and the input file's size. The child is the only process this one waits for, so
the peak is mad-detect's own. ``Testing/Python/test_bad_inputs.py`` runs it on a thinner volume of the same slice size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def synthetic_head(size: tuple[int, int, int], spacing: float, path: Path) -> None:
    """An int16 skull-stripped head of ``size`` (x, y, z) voxels written to ``path``: an ellipsoid brain of 130 x 160 x
    120 mm (1.3 L, cut to the field of view) with a bright blob, built slice by slice to stay small here."""
    nx, ny, nz = size
    rng = np.random.default_rng(0)
    y, x = np.meshgrid((np.arange(ny) - ny / 2) * spacing, (np.arange(nx) - nx / 2) * spacing, indexing="ij")
    volume = np.zeros((nz, ny, nx), np.int16)
    for k in range(nz):
        z = (k - nz / 2) * spacing
        inside = (x / 65) ** 2 + (y / 80) ** 2 + (z / 60) ** 2 < 1
        tissue = 400 + 40 * rng.standard_normal((ny, nx))
        tissue[(np.abs(x - 30) < 6) & (np.abs(y) < 6) & (abs(z) < 6)] = 1000
        volume[k] = np.where(inside, tissue, 0)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((spacing,) * 3)
    sitk.WriteImage(image, str(path), useCompression=True)


def measure(size: tuple[int, int, int], spacing: float, model: str, folder: Path) -> dict:
    """Run mad-detect on a synthetic head of ``size`` in ``folder``; its peak RSS, seconds and file size."""
    volume = folder / "head.nii.gz"
    synthetic_head(size, spacing, volume)
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "MedicalAnomalyDetectionLib", str(volume), "--model", model,
                          "--output-dir", str(folder / "out"), "--device", "cpu"], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"mad-detect failed: {run.stderr.strip().splitlines()[-1]}")
    return {"size": list(size), "voxels": int(np.prod(size)), "model": model,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "seconds": round(time.perf_counter() - started, 1), "input_mib": round(volume.stat().st_size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 400], metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, default=0.5, help="isotropic voxel spacing in mm")
    parser.add_argument("--model", default="patchgan-flair")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(measure(tuple(args.size), args.spacing, args.model, Path(folder))))


if __name__ == "__main__":
    main()

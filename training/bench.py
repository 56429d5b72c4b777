"""Benchmark of the inference path on a 240 x 240 x 155 volume: seconds, slices/s, peak memory, and achieved
GFLOP/s as a share of this machine's matrix-multiply GFLOP/s measured in the same run."""

from __future__ import annotations

import platform
import resource
import time

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.flop_counter import FlopCounterMode

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for, choose_device


def synthetic_head(size: tuple[int, int, int] = (240, 240, 155), seed: int = 0) -> sitk.Image:
    """A 1 mm ellipsoidal 'brain' with smooth texture and a bright blob, on a zero background."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in size[::-1]), indexing="ij")
    inside = (x / 0.75) ** 2 + (y / 0.85) ** 2 + (z / 0.8) ** 2 < 1
    texture = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=inside.shape).astype(np.float32)), 2.0))
    volume = (100 + 400 * texture) * inside
    volume[((x - 0.3) ** 2 + (y - 0.2) ** 2 + (z - 0.1) ** 2) < 0.01] += 80
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetSpacing((1.0, 1.0, 1.0))
    return image


def matmul_gflops(device: torch.device, seconds: float = 2.0) -> float:
    """Sustained GFLOP/s of a square matrix product in the precision the network runs in on ``device``."""
    n = 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    with autocast_for(device):
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            torch.matmul(a, b)
            count += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * n ** 3 * count / (time.perf_counter() - started) / 1e9


def network_flops_per_slice(method, height: int, width: int) -> float:
    """FLOPs of scoring one slice (all its in-painting passes), counted by PyTorch's FlopCounterMode."""
    slices = torch.rand(2, height, width)
    mask = torch.ones(2, height, width, dtype=torch.bool)
    with FlopCounterMode(display=False) as counter:
        method.score(slices, mask)
    return counter.get_total_flops() / 2


def run_benchmark(model: str, device_name: str = "auto", repeats: int = 3) -> dict:
    """Time ``detect`` end to end (best of ``repeats`` after a warm-up) on a synthetic 240 x 240 x 155 volume."""
    device = choose_device(device_name)
    bundle = load_bundle(model)
    method = build_method(bundle, device)
    image = synthetic_head()
    detect(image, bundle, method=method)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = detect(image, bundle, method=method)
        times.append(time.perf_counter() - started)
    seconds = min(times)
    scored_slices = int((result.slice_scores > 0).sum())
    height, width = bundle.card.preprocessing.size
    flops = network_flops_per_slice(method, height, width) if bundle.state_dict is not None else 0.0
    peak = matmul_gflops(device)
    achieved = flops * scored_slices / seconds / 1e9
    return {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "volume": "synthetic 240x240x155 at 1 mm", "seconds": round(seconds, 3),
            "seconds_all": [round(t, 3) for t in times], "slices_scored": scored_slices,
            "slices_per_second": round(scored_slices / seconds, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if device.type == "cuda" else None,
            "gflop_per_slice": round(flops / 1e9, 3), "achieved_gflops": round(achieved, 1),
            "matmul_gflops": round(peak, 1), "fraction_of_matmul": round(achieved / peak, 3) if peak else None,
            "torch": torch.__version__}

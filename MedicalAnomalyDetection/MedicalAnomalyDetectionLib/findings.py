"""Findings: the label map as a list of regions a clinician can step through, one per connected labelled region
(26-connected, in the input's voxels) of at least a minimum volume; smaller specks are not findings."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

MIN_FINDING_ML = 0.02  # 20 mm³: a lesion of about 3.4 mm across; speckle below this is not a finding


@dataclass(frozen=True)
class Region:
    """One finding. ``centroid_*_mm``: its centre in the input's physical coordinates (LPS, as ITK and SimpleITK
    write them; Slicer shows RAS, with L and P negated); ``first_slice``/``last_slice``: input voxel indices along the
    detection's slice axis; ``peak_score``/``mean_score``: of the anomaly map over the region."""

    id: int
    voxels: int
    ml: float
    centroid_l_mm: float
    centroid_p_mm: float
    centroid_s_mm: float
    first_slice: int
    last_slice: int
    peak_score: float
    mean_score: float


COLUMNS = tuple(Region.__dataclass_fields__)


def find_regions(label_map: sitk.Image, anomaly_map: sitk.Image, slice_axis: int,
                 min_ml: float = MIN_FINDING_ML) -> list[Region]:
    """The connected regions of ``label_map`` (non-zero voxels) of at least ``min_ml`` millilitres, largest first,
    numbered from 1; ``slice_axis`` is the input IJK axis the detection's slices step along."""
    components = sitk.ConnectedComponent(sitk.Cast(sitk.NotEqual(label_map, 0), sitk.sitkUInt8), True)
    labels = sitk.GetArrayViewFromImage(components)  # (K, J, I)
    if not labels.any():
        return []
    scores = sitk.GetArrayViewFromImage(anomaly_map)
    voxel_ml = float(np.prod(label_map.GetSpacing())) / 1000.0
    found = []
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, int(flat.max()) + 2))
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if (stop - start) * voxel_ml < min_ml:
            continue
        kji = np.array(np.unravel_index(order[start:stop], labels.shape))  # (3, voxels)
        values = scores[tuple(kji)]
        centre = label_map.TransformContinuousIndexToPhysicalPoint(kji[::-1].mean(axis=1).tolist())
        along = kji[2 - slice_axis]
        found.append((int(stop - start), centre, int(along.min()), int(along.max()), float(values.max()),
                      float(values.mean())))
    found.sort(key=lambda f: (-f[0], f[2]))
    return [Region(id=number, voxels=voxels, ml=round(voxels * voxel_ml, 4), centroid_l_mm=round(centre[0], 2),
                   centroid_p_mm=round(centre[1], 2), centroid_s_mm=round(centre[2], 2), first_slice=first,
                   last_slice=last, peak_score=round(peak, 6), mean_score=round(mean, 6))
            for number, (voxels, centre, first, last, peak, mean) in enumerate(found, start=1)]


def write_regions(regions: list[Region], path: Path, delimiter: str = ",") -> None:
    """The findings as a table with a header row (only the header when there are none)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(COLUMNS)
        for region in regions:
            writer.writerow(asdict(region).values())


def summary(regions: list[Region]) -> dict:
    """Count and total volume of the findings (for the report and the cohort table)."""
    return {"region_count": len(regions), "regions_ml": round(sum(region.ml for region in regions), 4)}

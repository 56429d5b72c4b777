"""Findings: connected regions of the label map, their sizes, places and scores, checked against brute force."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedicalAnomalyDetectionLib.cli import main
from MedicalAnomalyDetectionLib.findings import COLUMNS, find_regions, write_regions

from conftest import head_array, make_image

SPACING = (0.5, 1.0, 2.0)  # I, J, K: one voxel is 1 mm³
ORIGIN = (10.0, -20.0, 30.0)
OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # the I and J axes turned by 90° about S


def _maps(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    label = np.zeros((20, 30, 40), np.uint8)
    label[2:6, 3:8, 4:9] = 1  # 100 voxels
    label[10:12, 20:25, 30:34] = 1  # 40 voxels
    label[15, 15, 15] = 1  # a speck of 1 voxel (1 mm³ < 0.02 mL)
    label[12, 25, 34] = 1  # touches the second region by a corner only: 26-connected, so part of it
    scores = np.random.default_rng(0).random(label.shape).astype(np.float32) + 5 * label
    return (make_image(label, SPACING, ORIGIN, direction), make_image(scores, SPACING, ORIGIN, direction),
            label, scores)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), OBLIQUE])
def test_regions_match_brute_force(direction):
    label_image, score_image, label, scores = _maps(direction)
    regions = find_regions(label_image, score_image, slice_axis=2)
    components, count = ndimage.label(label, structure=np.ones((3, 3, 3)))
    sizes = sorted(((components == c).sum(), c) for c in range(1, count + 1))[::-1]
    kept = [(size, c) for size, c in sizes if size * 1.0 / 1000 >= 0.02]
    assert [r.voxels for r in regions] == [size for size, _ in kept] == [100, 41]
    assert [r.id for r in regions] == [1, 2]
    for region, (size, c) in zip(regions, kept):
        inside = components == c
        assert region.ml == pytest.approx(size / 1000)
        assert region.peak_score == pytest.approx(scores[inside].max(), rel=1e-5)
        assert region.mean_score == pytest.approx(scores[inside].mean(), rel=1e-5)
        k = np.nonzero(inside.any(axis=(1, 2)))[0]
        assert (region.first_slice, region.last_slice) == (k.min(), k.max())
        centre = np.argwhere(inside).mean(axis=0)[::-1]  # (i, j, k)
        expected = label_image.TransformContinuousIndexToPhysicalPoint(centre.tolist())
        assert (region.centroid_l_mm, region.centroid_p_mm, region.centroid_s_mm) == pytest.approx(expected, abs=0.01)
    assert regions[0].first_slice == 2 and regions[0].last_slice == 5


def test_slice_range_follows_the_slice_axis():
    label_image, score_image, _, _ = _maps()
    along_i = find_regions(label_image, score_image, slice_axis=0)
    assert (along_i[0].first_slice, along_i[0].last_slice) == (4, 8)
    assert (along_i[1].first_slice, along_i[1].last_slice) == (30, 34)


def test_an_empty_label_map_has_no_findings_and_a_table_with_its_header(tmp_path):
    empty = make_image(np.zeros((8, 16, 16), np.uint8))
    assert find_regions(empty, make_image(np.zeros((8, 16, 16), np.float32)), 2) == []
    write_regions([], tmp_path / "regions.csv")
    assert (tmp_path / "regions.csv").read_text() == ",".join(COLUMNS) + "\n"


def test_mad_detect_writes_the_findings(tmp_path, intensity_bundle):
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(make_image(head_array()), str(path))
    out = tmp_path / "out"
    assert main([str(path), "--model", str(intensity_bundle.path), "--output-dir", str(out), "--brain-mask",
                 "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = list(csv.DictReader(open(out / "regions.csv")))
    assert report["region_count"] == len(rows) == len(report["regions"]) >= 1
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "anomaly_label.nii.gz")))
    lesion = rows[0]  # the largest region is head_array()'s bright cube (5 x 7 x 7 voxels of 27 mm³)
    assert int(lesion["first_slice"]) <= 12 <= int(lesion["last_slice"])
    assert int(lesion["voxels"]) <= int(label.sum())
    assert report["regions_ml"] == pytest.approx(sum(float(r["ml"]) for r in rows), abs=1e-3)
    assert [float(r["peak_score"]) for r in rows] == pytest.approx([r["peak_score"] for r in report["regions"]])

"""What the clinician sees: the module's real outputs drawn by Slicer's own slice pipeline (``vtkMRMLSliceLogic`` from
``slicer-core``), read back as numpy from the blended slice image; no OpenGL involved."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

slicer = pytest.importorskip("slicer")

from conftest import head_array  # noqa: E402
from slicer_fixtures import add_volume, blended, new_scene, pixel_voxels, slice_view  # noqa: E402

from MedicalAnomalyDetectionSlicer.display import HEAT_COLOR_NODE_ID, LABEL_RGBA, showInSliceView  # noqa: E402
from MedicalAnomalyDetectionSlicer.logic import MedicalAnomalyDetectionLogic  # noqa: E402

BLOB = (12, 20, 26)
CYAN = tuple(int(255 * c) for c in LABEL_RGBA[:3])


def _view(scene, outputs):
    """The axial view through the lesion as the results view shows it, the same view of the input alone, the voxel
    under each pixel, and how many pixels one voxel spans."""
    logic, application = slice_view(scene)
    volume = outputs.inputVolume
    volume.CreateDefaultDisplayNodes()
    showInSliceView(logic.GetSliceNode(), logic.GetSliceCompositeNode(), volume, outputs.anomalyMap,
                    outputs.anomalyLabel)
    logic.FitSliceToBackground()
    logic.SetSliceOffset(MedicalAnomalyDetectionLogic.sliceCenterRAS(volume, 2, BLOB[0])[2])
    shown = blended(logic)
    composite = logic.GetSliceCompositeNode()
    composite.SetForegroundVolumeID(None)
    composite.SetLabelVolumeID(None)
    pixels_per_voxel = volume.GetSpacing()[0] / abs(logic.GetSliceNode().GetXYToRAS().GetElement(0, 0))
    return shown, blended(logic), pixel_voxels(logic, volume), int(np.ceil(pixels_per_voxel)), (logic, application)


def _sample(array: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """``array`` (K, J, I) under each pixel; -1 outside the volume."""
    inside = np.all((voxels >= 0) & (voxels < array.shape), axis=-1)
    values = np.full(voxels.shape[:2], -1.0)
    k, j, i = (voxels[inside][:, axis] for axis in range(3))
    values[inside] = array[k, j, i]
    return values


@pytest.mark.parametrize("colours", ["Slicer's default colour nodes", "no heat or label colour node in the scene"])
def test_heat_over_the_lesion_outline_drawn_nothing_over_healthy_tissue(intensity_bundle, colours):
    scene, colour_logic = new_scene()
    if colours.startswith("no"):  # a Slicer build or wheel that lacks them: the module must bring its own
        for node_id in (HEAT_COLOR_NODE_ID, "vtkMRMLColorTableNodeLabels"):
            scene.RemoveNode(scene.GetNodeByID(node_id))
    volume = add_volume(scene, head_array(), "FLAIR", origin_ras=(90.0, 120.0, -30.0),
                        directions_ras=np.diag([-1.0, -1.0, 1.0]))
    outputs = MedicalAnomalyDetectionLogic().process(volume, model=intensity_bundle.path, device="cpu")
    shown, background, voxels, voxel, keep = _view(scene, outputs)
    anomaly = _sample(slicer.util.arrayFromVolume(outputs.anomalyMap), voxels)
    label = _sample(slicer.util.arrayFromVolume(outputs.anomalyLabel), voxels) > 0
    threshold = outputs.threshold
    rgb, base = shown[..., :3].astype(int), background[..., :3].astype(int)

    # Healthy tissue (the map under half the threshold, two pixels around): exactly the input's grey, nothing over it.
    healthy = ndimage.binary_erosion((anomaly >= 0) & (anomaly < 0.5 * threshold) & ~label, iterations=2)
    assert healthy.sum() > 1000
    np.testing.assert_array_equal(rgb[healthy], base[healthy])
    assert np.all(rgb[healthy].max(axis=1) == rgb[healthy].min(axis=1))  # grey

    # Where the map is high (inside the label, more than a voxel from its outline): heat colours over the input.
    hot = ndimage.binary_erosion(label, iterations=voxel + 1) & (anomaly >= threshold)
    assert hot.sum() > 20
    assert np.all(np.any(rgb[hot] != base[hot], axis=1))
    red, green, blue = rgb[hot].T
    assert np.all((red >= green) & (green >= blue) & (red > blue))  # the input under it is grey: R = G = B

    # The label map is an outline in its own colour, one voxel wide: on the label's rim, never deeper inside it,
    # never on healthy tissue.
    cyan = np.all(rgb == CYAN, axis=-1)
    rim = ndimage.binary_dilation(label, iterations=1) & ~ndimage.binary_erosion(label, iterations=voxel + 1)
    assert cyan.sum() > 20 and np.all(rim[cyan]) and not np.any(cyan[hot]) and not np.any(cyan[healthy])
    assert outputs.anomalyLabel.GetDisplayNode().GetColorNode().GetNumberOfColors() == 2
    assert scene.GetNodeByID(HEAT_COLOR_NODE_ID) is not None
    del colour_logic, keep


def test_raising_the_threshold_clears_the_overlay(intensity_bundle):
    """After relabel() above the map's maximum, the view shows the input alone: no heat, no outline."""
    scene, colour_logic = new_scene()
    volume = add_volume(scene, head_array(), "FLAIR")
    logic = MedicalAnomalyDetectionLogic()
    outputs = logic.process(volume, model=intensity_bundle.path, device="cpu")
    highest = float(slicer.util.arrayFromVolume(outputs.anomalyMap).max())
    logic.relabel(2.5 * highest)  # the display threshold (half the threshold) is above every map value
    shown, background, _, _, keep = _view(scene, outputs)
    np.testing.assert_array_equal(shown[..., :3], background[..., :3])
    del colour_logic, keep

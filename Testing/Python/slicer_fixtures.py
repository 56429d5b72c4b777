"""Helpers for the Slicer-face tests: a real MRML scene (from the ``slicer-core`` wheel) and volume nodes in it.

Import only after ``pytest.importorskip("slicer")``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import slicer
import vtk

MODULE_DIR = Path(__file__).resolve().parents[2] / "MedicalAnomalyDetection"
if str(MODULE_DIR) not in sys.path:  # where Slicer finds the module's packages too
    sys.path.insert(0, str(MODULE_DIR))


def new_scene() -> tuple[slicer.vtkMRMLScene, slicer.vtkMRMLColorLogic]:
    """A scene with Slicer's default colour nodes, as the application has; keep the logic alive with the scene."""
    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # as Slicer's Colors module does
    colours = slicer.vtkMRMLColorLogic()
    colours.SetMRMLScene(scene)
    return scene, colours


def add_volume(scene: slicer.vtkMRMLScene, array: np.ndarray, name: str = "flair",
               spacing=(3.0, 3.0, 3.0), origin_ras=(0.0, 0.0, 0.0), directions_ras=np.eye(3),
               class_name: str = "vtkMRMLScalarVolumeNode") -> slicer.vtkMRMLScalarVolumeNode:
    """A volume node holding ``array`` (K, J, I) with the given RAS geometry."""
    node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin_ras)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(directions_ras[r][c]))
    node.SetIJKToRASDirectionMatrix(matrix)
    return node


def ijk_to_ras(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def node_ids(scene: slicer.vtkMRMLScene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def slice_view(scene: slicer.vtkMRMLScene, size: tuple[int, int] = (160, 160),
               name: str = "Red") -> tuple[slicer.vtkMRMLSliceLogic, slicer.vtkMRMLApplicationLogic]:
    """Slicer's slice pipeline for one view of ``scene`` (axial, patient right on screen left, as in Slicer); keep
    the application logic alive with the slice logic."""
    application = slicer.vtkMRMLApplicationLogic()
    application.SetMRMLScene(scene)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(application)
    logic.SetMRMLScene(scene)
    logic.AddSliceNode(name).SetOrientation("Axial")
    logic.ResizeSliceNode(*size)
    return logic, application


def blended(logic: slicer.vtkMRMLSliceLogic) -> np.ndarray:
    """The view's blended slice image (rows from the top of the view, columns, RGBA uint8), as Slicer draws it."""
    from vtk.util.numpy_support import vtk_to_numpy

    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1].copy()


def pixel_voxels(logic: slicer.vtkMRMLSliceLogic, volume: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """(rows, columns, 3) nearest K, J, I voxel of ``volume`` under each pixel of :func:`blended`'s image."""
    xy_to_ras = slicer.util.arrayFromVTKMatrix(logic.GetSliceNode().GetXYToRAS())
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    width, height = logic.GetSliceNode().GetDimensions()[:2]
    x, y = np.meshgrid(np.arange(width), np.arange(height)[::-1])
    points = np.stack([x, y, np.zeros_like(x), np.ones_like(x)], axis=-1).astype(float)
    ijk = points @ (slicer.util.arrayFromVTKMatrix(ras_to_ijk) @ xy_to_ras).T
    return np.rint(ijk[..., [2, 1, 0]]).astype(int)

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

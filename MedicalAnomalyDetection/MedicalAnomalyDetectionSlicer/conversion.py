"""MRML volume nodes <-> SimpleITK images, without ``sitkUtils``.

MRML stores geometry as an IJK-to-RAS matrix; SimpleITK (like ITK and DICOM) uses LPS, so the first two physical axes
flip sign. Voxel arrays are copied both ways: the core never sees a node's memory, so it cannot modify an input.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from MedicalAnomalyDetectionLib.errors import InputError

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def ijkToRASDirections(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The 3x3 matrix whose columns are the unit directions of the I, J and K axes in RAS."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])


def imageFromVolume(node: slicer.vtkMRMLScalarVolumeNode) -> sitk.Image:
    """A SimpleITK copy of a scalar volume node's voxels, with its geometry in LPS."""
    if node.GetImageData() is None:
        raise InputError(f"volume {node.GetName()} holds no image data")
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume {node.GetName()} has {node.GetImageData().GetNumberOfScalarComponents()} "
                         "components per voxel; a scalar (single-channel) volume is needed")
    spacing = tuple(float(s) for s in node.GetSpacing())
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"volume {node.GetName()} has voxel spacing {spacing} mm; a spacing must be a positive number")
    image = sitk.GetImageFromArray(np.array(slicer.util.arrayFromVolume(node), copy=True))
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(float(v) for v in LPS_FROM_RAS @ np.array(node.GetOrigin())))
    try:
        image.SetDirection(tuple(float(v) for v in (LPS_FROM_RAS @ ijkToRASDirections(node)).ravel()))
    except RuntimeError:  # SimpleITK refuses a singular direction matrix
        raise InputError(f"volume {node.GetName()} has a degenerate direction matrix (two axes coincide)") from None
    return image


def updateVolumeFromImage(node: slicer.vtkMRMLVolumeNode, image: sitk.Image,
                          reference: slicer.vtkMRMLVolumeNode) -> None:
    """Write ``image``'s voxels into ``node`` and give it ``reference``'s exact geometry (and parent transform)."""
    size = tuple(int(n) for n in image.GetSize())
    expected = tuple(int(n) for n in reference.GetImageData().GetDimensions())
    if size != expected:
        raise ValueError(f"result size {size} differs from the input's {expected}")
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.CopyOrientation(reference)
    node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())


def maskFromNode(maskNode: slicer.vtkMRMLNode, reference: slicer.vtkMRMLScalarVolumeNode) -> sitk.Image:
    """A brain mask image from a label map (or scalar) volume node, or from a segmentation node exported on
    ``reference``'s grid. A volume node on another grid is passed as is, so the core reports the mismatch."""
    if isinstance(maskNode, slicer.vtkMRMLSegmentationNode):
        return _exportSegmentation(maskNode, reference)
    if isinstance(maskNode, slicer.vtkMRMLScalarVolumeNode):
        return imageFromVolume(maskNode)
    raise InputError(f"brain mask {maskNode.GetName()} must be a label map volume or a segmentation")


def _exportSegmentation(segmentation: slicer.vtkMRMLSegmentationNode,
                        reference: slicer.vtkMRMLScalarVolumeNode) -> sitk.Image:
    """Union of all segments on ``reference``'s grid, through a temporary label map node removed afterwards."""
    segmentIds = segmentation.GetSegmentation().GetSegmentIDs()
    if not segmentIds:
        raise InputError(f"brain mask segmentation {segmentation.GetName()} has no segments")
    scene = reference.GetScene()
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__brain_mask_export__")
    try:
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ExportSegmentsToLabelmapNode(segmentation, segmentIds, temporary, reference,
                                                  slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            raise InputError(f"could not export segmentation {segmentation.GetName()} onto the input's grid")
        image = imageFromVolume(temporary)
    finally:
        display = temporary.GetDisplayNode()
        colour = display.GetColorNode() if display is not None else None
        scene.RemoveNode(temporary)
        if display is not None:
            scene.RemoveNode(display)
        if colour is not None and not colour.GetSingletonTag():
            scene.RemoveNode(colour)
    return image

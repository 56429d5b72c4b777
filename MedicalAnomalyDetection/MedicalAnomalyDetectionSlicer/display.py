"""How the outputs are drawn: their colour nodes (added to the scene when it lacks them) and the slice-view layers of
the results view (input as background, heat map as foreground, label map as an outline, a colour legend).

Needs only MRML (``slicer-core`` suffices), so the tests and ``docs/images/render_slicer.py`` draw the results view
through Slicer's own slice pipeline exactly as the module sets it up.
"""

from __future__ import annotations

import slicer

HEAT_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"
LABEL_COLOR_TAG = "MedicalAnomalyDetectionLabel"
LABEL_RGBA = (0.0, 1.0, 1.0, 1.0)  # cyan: stands out against the red-yellow-white heat scale
FOREGROUND_OPACITY = 0.5


def heatColorNode(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorNode:
    """Slicer's PET heat scale; added (under the ID Slicer's colour logic gives it) where the scene has none."""
    node = scene.GetNodeByID(HEAT_COLOR_NODE_ID)
    if node is None:
        node = slicer.vtkMRMLPETProceduralColorNode()
        node.SetTypeToHeat()
        node.SetName("PET-Heat")
        node.SetSingletonTag("PET-Heat")
        scene.AddNode(node)
    return node


def labelColorNode(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorTableNode:
    """The label map's own two-entry table (0 transparent, 1 "anomaly" in cyan), one per scene. Set explicitly: the
    default label table of a Slicer build may be missing (the ``slicer-core`` wheel ships no colour files), and a
    label map on a missing table draws nothing."""
    node = scene.GetSingletonNode(LABEL_COLOR_TAG, "vtkMRMLColorTableNode")
    if node is None:
        node = slicer.vtkMRMLColorTableNode()
        node.SetTypeToUser()
        node.SetNumberOfColors(2)
        node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        node.SetColor(1, "anomaly", *LABEL_RGBA)
        node.SetName("Anomaly label")
        node.SetSingletonTag(LABEL_COLOR_TAG)
        node.SetHideFromEditors(True)
        scene.AddNode(node)
    return node


def showHeatMap(anomalyMap: slicer.vtkMRMLScalarVolumeNode, threshold: float) -> None:
    """Heat colours from 0 to twice the threshold; values under half the threshold drawn transparent."""
    anomalyMap.CreateDefaultDisplayNodes()
    display = anomalyMap.GetDisplayNode()
    display.SetAndObserveColorNodeID(heatColorNode(anomalyMap.GetScene()).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 2.0 * threshold)
    display.AutoThresholdOff()
    highest = float(anomalyMap.GetImageData().GetScalarRange()[1])
    display.SetThreshold(0.5 * threshold, max(2.0 * threshold, highest))
    display.ApplyThresholdOn()


def showLabelMap(anomalyLabel: slicer.vtkMRMLLabelMapVolumeNode) -> None:
    """The label map in its own colour table (:func:`labelColorNode`)."""
    anomalyLabel.CreateDefaultDisplayNodes()
    anomalyLabel.GetDisplayNode().SetAndObserveColorNodeID(labelColorNode(anomalyLabel.GetScene()).GetID())


def showInSliceView(sliceNode: slicer.vtkMRMLSliceNode, compositeNode: slicer.vtkMRMLSliceCompositeNode,
                    inputVolume: slicer.vtkMRMLScalarVolumeNode, anomalyMap: slicer.vtkMRMLScalarVolumeNode,
                    anomalyLabel: slicer.vtkMRMLLabelMapVolumeNode) -> None:
    """One slice view as the results view: the input under the half-transparent heat map, the label map outlined."""
    compositeNode.SetBackgroundVolumeID(inputVolume.GetID())
    compositeNode.SetForegroundVolumeID(anomalyMap.GetID())
    compositeNode.SetForegroundOpacity(FOREGROUND_OPACITY)
    compositeNode.SetLabelVolumeID(anomalyLabel.GetID())
    compositeNode.SetLabelOpacity(1.0)
    sliceNode.SetUseLabelOutline(True)


def showInSliceViews(scene: slicer.vtkMRMLScene, inputVolume: slicer.vtkMRMLScalarVolumeNode,
                     anomalyMap: slicer.vtkMRMLScalarVolumeNode,
                     anomalyLabel: slicer.vtkMRMLLabelMapVolumeNode) -> None:
    """Every slice view of ``scene`` as :func:`showInSliceView` says, and the heat map's colour legend shown."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        compositeNode = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        sliceNode = scene.GetSingletonNode(compositeNode.GetLayoutName(), "vtkMRMLSliceNode")
        if sliceNode is not None:
            showInSliceView(sliceNode, compositeNode, inputVolume, anomalyMap, anomalyLabel)
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(anomalyMap)
    if legend is None:
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(anomalyMap)
    legend.SetTitleText("anomaly")
    legend.SetVisibility(True)

"""The module's parameter node (needs a running Slicer: ``parameterNodeWrapper``, ``slicer.mrmlScene``).

Fields with a widget carry the same name as the widget's ``SlicerParameterName`` property in the .ui file.
"""

from typing import Annotated, Optional, Union

import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from MedicalAnomalyDetectionLib.bundle import DEFAULT_MODEL

DEVICES = {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"}  # combo box text -> core device


@parameterNodeWrapper
class MedicalAnomalyDetectionParameterNode:
    """What the panel shows; saved with the scene."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    # the classes the brain-mask selector offers: connectGui instantiates them to set its nodeTypes (an abstract
    # vtkMRMLNode here stopped the panel from building)
    brainMask: Optional[Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]]
    model: str = DEFAULT_MODEL
    device: Annotated[str, Choice(list(DEVICES))] = "Auto"
    threshold: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0  # 0: not chosen yet, the card's is used
    outputMap: slicer.vtkMRMLScalarVolumeNode
    outputLabel: slicer.vtkMRMLLabelMapVolumeNode
    outputTable: slicer.vtkMRMLTableNode


def parameterNode() -> MedicalAnomalyDetectionParameterNode:
    """The scene's (singleton) parameter node of this module, created on first use."""
    node = slicer.mrmlScene.GetSingletonNode("MedicalAnomalyDetection", "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag("MedicalAnomalyDetection")
        node.SetModuleName("MedicalAnomalyDetection")
        node.SetName(slicer.mrmlScene.GenerateUniqueName("MedicalAnomalyDetection"))
        node = slicer.mrmlScene.AddNode(node)
    return MedicalAnomalyDetectionParameterNode(node)

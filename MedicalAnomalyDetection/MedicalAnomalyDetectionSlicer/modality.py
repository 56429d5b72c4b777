"""The contrast warning of the core (``MedicalAnomalyDetectionLib.modality``) for a node: its name and attributes."""

from __future__ import annotations

import slicer

from MedicalAnomalyDetectionLib.modality import modality_warning


def modalityWarning(node: slicer.vtkMRMLNode, modality: str) -> str | None:
    """A warning when the node's name/attributes name other contrasts but not the model's ``modality``."""
    attributes = [node.GetAttribute(name) or "" for name in node.GetAttributeNames() or ()]
    return modality_warning(node.GetName() or "", modality, " ".join([node.GetName() or "", *attributes]))

"""Guessing an input's MR contrast from its node name and attributes, to warn when it differs from the model's."""

from __future__ import annotations

import re

import slicer

# How each contrast a model card may name tends to appear in series descriptions and file names.
MODALITY_PATTERNS = {
    "flair": re.compile(r"flair", re.IGNORECASE),
    "t1": re.compile(r"(?<![a-z0-9])t1(?!\d)|mprage|spgr", re.IGNORECASE),
    "t2": re.compile(r"(?<![a-z0-9])t2(?!\d)", re.IGNORECASE),
    "pd": re.compile(r"(?<![a-z0-9])pd(?![a-z0-9])", re.IGNORECASE),
}


def describedModalities(text: str) -> set[str]:
    """The contrasts ``text`` mentions."""
    return {name for name, pattern in MODALITY_PATTERNS.items() if pattern.search(text)}


def modalityWarning(node: slicer.vtkMRMLNode, modality: str) -> str | None:
    """A warning when the node's name/attributes name other contrasts but not the model's ``modality``."""
    attributes = [node.GetAttribute(name) or "" for name in node.GetAttributeNames() or ()]
    mentioned = describedModalities(" ".join([node.GetName() or "", *attributes]))
    if not mentioned or modality.lower() in mentioned:
        return None
    return (f"{node.GetName()} looks like {'/'.join(sorted(mentioned)).upper()} but the model was trained on "
            f"{modality.upper()}; results may be meaningless")

"""Guessing an input's MR contrast from its name (a file name, a series description), to warn when it is not the
contrast the model was trained on. A warning, never an error: names are often wrong or silent."""

from __future__ import annotations

import re

# How each contrast a model card may name tends to appear in series descriptions and file names.
MODALITY_PATTERNS = {
    "flair": re.compile(r"flair", re.IGNORECASE),
    "t1": re.compile(r"(?<![a-z0-9])t1(?!\d)|mprage|spgr", re.IGNORECASE),
    "t2": re.compile(r"(?<![a-z0-9])t2(?!\d)", re.IGNORECASE),
    "pd": re.compile(r"(?<![a-z0-9])pd(?![a-z0-9])", re.IGNORECASE),
}


def described_modalities(text: str) -> set[str]:
    """The contrasts ``text`` mentions."""
    return {name for name, pattern in MODALITY_PATTERNS.items() if pattern.search(text)}


def modality_warning(name: str, modality: str, description: str | None = None) -> str | None:
    """A warning when ``description`` (default: ``name``) names other contrasts but not the model's ``modality``."""
    mentioned = described_modalities(name if description is None else description)
    if not mentioned or modality.lower() in mentioned:
        return None
    return (f"{name} looks like {'/'.join(sorted(mentioned)).upper()} but the model was trained on "
            f"{modality.upper()}; results may be meaningless")

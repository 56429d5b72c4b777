"""The 3D Slicer face of MedicalAnomalyDetection.

``logic``, ``conversion``, ``modality`` and ``worker`` need only ``slicer`` MRML classes (the ``slicer-core`` wheel is
enough); ``widget``, ``parameters`` and ``dependencies`` need a running Slicer application (``qt``, ``slicer.app``).
"""

from pathlib import Path


def resourcePath(*parts: str) -> Path:
    """A file under the extension's ``Resources`` folder, which sits beside the module folder both in the source tree
    and in the installed extension (``lib/Slicer-X.Y/Resources``, where the core also looks for bundled models)."""
    return Path(__file__).resolve().parents[2].joinpath("Resources", *parts)

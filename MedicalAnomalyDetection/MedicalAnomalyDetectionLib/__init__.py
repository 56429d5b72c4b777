"""Slicer-free core of MedicalAnomalyDetection: volumes in, anomaly maps out.

Nothing in this package imports ``slicer`` or ``qt``; the Slicer module, the ``mad-detect`` command and the
``training`` package all call :func:`MedicalAnomalyDetectionLib.inference.detect`.
"""

__version__ = "0.2.0"

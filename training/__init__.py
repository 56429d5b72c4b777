"""Training, calibration, evaluation and export of MedicalAnomalyDetection models (``python -m training``).

Everything here goes through the core library ``MedicalAnomalyDetectionLib``: the same preprocessing, networks and
inference path as the Slicer module and ``mad-detect``.
"""

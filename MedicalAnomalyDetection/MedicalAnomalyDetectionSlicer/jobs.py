"""The panel's long jobs, converted away from MRML by the logic so that :meth:`run` is safe on a worker thread (only
the core, no MRML): a detection (downloading the model's weights first where the user agreed) and a few-shot fit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import slicer

from MedicalAnomalyDetectionLib.brain_extraction import deepbet_weights, looks_skull_stripped
from MedicalAnomalyDetectionLib.bundle import Bundle, load_bundle
from MedicalAnomalyDetectionLib.catalogue import Entry
from MedicalAnomalyDetectionLib.references import FittedModel, Reference, fit_references
from MedicalAnomalyDetectionLib.inference import Detection, detect
from MedicalAnomalyDetectionLib.progress import CancelCallback, ProgressCallback, check_cancel


@dataclass
class DetectionJob:
    """Everything one detection needs, already converted away from MRML; :meth:`run` is safe on a worker thread."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    image: sitk.Image
    mask: sitk.Image | None
    bundle: Bundle | None  # None until :meth:`run` has downloaded the weights (see ``download``)
    device: str
    threshold: float | None
    maskNode: slicer.vtkMRMLNode | None = None
    masking: str = "auto"
    warnings: list[str] = field(default_factory=list)
    model: str | Path | None = None  # the name or folder the bundle is loaded from
    download: Entry | None = None  # a catalogued model whose weights :meth:`run` downloads first (ask the user!)

    @property
    def needsBrainExtraction(self) -> bool:
        """True when the run will extract the brain (no mask, a skull-on input) and deepbet is not installed."""
        return (self.mask is None and self.masking == "auto" and deepbet_weights() is None
                and not looks_skull_stripped(self.image))

    def run(self, progress: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> Detection:
        """Run the core (downloading the model's weights first if needed); raises ``Cancelled`` when ``cancel()``
        turns True and ``InputError`` for unusable input or a failed download."""
        if self.bundle is None:
            self.bundle = self._loadBundle(progress, cancel)
        return detect(self.image, self.bundle, brain_mask=self.mask, device=self.device, threshold=self.threshold,
                      progress=progress, cancel=cancel, masking=self.masking)

    def _loadBundle(self, progress: ProgressCallback | None, cancel: CancelCallback | None) -> Bundle:
        """The bundle, its weights downloaded by the core into the user model folder; a cancel stops the transfer
        at its next chunk. The core stages a download in a hidden folder and moves the model into place only once
        its sha256 is checked, so a cancelled or failed download installs nothing (the partial file is resumed next
        time)."""
        check_cancel(cancel)

        def heard(fraction: float, stage: str) -> None:
            if progress is not None:
                progress(fraction, stage)
            check_cancel(cancel)

        return load_bundle(self.model, progress=heard)


@dataclass
class FitJob:
    """A few-shot fit of PathoSCOPE to reference volumes copied out of MRML; :meth:`run` is safe on a worker thread
    and writes only the new bundle folder."""

    references: list[Reference]
    name: str
    modality: str
    modelsDir: Path
    backbone: Path | None = None
    textureDir: Path | None = None
    options: dict = field(default_factory=dict)  # preprocessing, settings, config of fit_references
    warnings: list[str] = field(default_factory=list)

    def run(self, progress: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> FittedModel:
        """Fit and save; raises ``Cancelled`` (nothing saved) or ``InputError`` for unusable references."""
        fitted = fit_references(self.references, self.name, self.modelsDir, self.modality, backbone=self.backbone,
                                texture_dir=self.textureDir, progress=progress, cancel=cancel, **self.options)
        fitted.warnings = self.warnings + fitted.warnings
        return fitted

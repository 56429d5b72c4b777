"""The inference path every face calls: volume (+ optional brain mask) and a model bundle -> anomaly map, label map,
slice scores and a volume score, all on the input's grid."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from .brain_extraction import BrainMask, brain_mask_for
from .bundle import Bundle
from .methods import AnomalyMethod, build_method
from .methods.runtime import choose_device
from .operating_point import PER_SCAN, OperatingPoint, check_threshold, operating_point
from .pipeline import score_volume
from .preprocessing import PreparedVolume, prepare_validated, to_input_grid
from .progress import CancelCallback, ProgressCallback, check_cancel, sub_progress
from .volume_io import validate_volume

log = logging.getLogger(__name__)

@dataclass
class Detection:
    """What one run of :func:`detect` produces."""

    anomaly_map: sitk.Image  # float32, on the input grid
    label_map: sitk.Image  # uint8 (1 = anomalous), on the input grid
    slice_scores: np.ndarray  # (N,) one score per model-plane slice
    slice_index: np.ndarray  # (N,) the input's voxel index of each slice along slice_axis
    slice_axis: int  # input IJK axis the slices step along
    slice_eligible: np.ndarray  # (N,) bool: slices with enough brain to count (see scoring.MIN_BRAIN_SHARE)
    volume_score: float
    brain: BrainMask  # the brain mask the run used (on the input grid) and how it was made
    threshold: float  # the one that made label_map
    operating_point: str  # how it was chosen: "per-scan", "fixed" or "given" (operating_point.py)
    model: str
    device: str
    seconds: float
    warnings: list[str] = field(default_factory=list)  # what was done to the input to read it (e.g. NaN voxels)

    @property
    def most_anomalous_slice(self) -> int:
        """Input index (along slice_axis) of the eligible slice with the highest score."""
        scores = np.where(self.slice_eligible, self.slice_scores, -np.inf)
        return int(self.slice_index[int(np.argmax(scores))])

    def flagged_slices(self, slice_threshold: float | None) -> int | None:
        """How many eligible slices score at least ``slice_threshold`` (None without a threshold)."""
        if slice_threshold is None:
            return None
        return int(((self.slice_scores >= slice_threshold) & self.slice_eligible).sum())


def label_from_map(anomaly_map: sitk.Image, threshold: float) -> sitk.Image:
    """The label map (uint8, 1 where the map reaches ``threshold``); cheap, so a threshold slider can re-run it."""
    label = sitk.Cast(sitk.GreaterEqual(anomaly_map, check_threshold(threshold)), sitk.sitkUInt8)
    label.CopyInformation(anomaly_map)
    return label


@dataclass
class StagedVolume:
    """A volume made ready for scoring (validated, brain mask found, model-plane slices): the part of :func:`detect`
    that needs no network, so a cohort can prepare the next volume while the current one is scored."""

    prepared: PreparedVolume
    brain: BrainMask
    device: torch.device  # where the brain extraction ran and the method is to run
    seconds: float
    warnings: list[str] = field(default_factory=list)


def stage_volume(image: sitk.Image, bundle: Bundle, brain_mask: sitk.Image | None = None,
                 device: torch.device = torch.device("cpu"), masking: str = "auto",
                 progress: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> StagedVolume:
    """Validate ``image``, find its brain mask (as :func:`detect` says) and prepare it as ``bundle``'s card says."""
    started = time.perf_counter()
    report = sub_progress(progress, 0.0, 1.0)
    warnings: list[str] = []
    image = validate_volume(image, warnings=warnings)
    report(0.0, "finding the brain")
    brain = brain_mask_for(image, brain_mask, masking, device)
    check_cancel(cancel)
    report(0.5, "preparing volume")
    prepared = prepare_validated(image, bundle.card.preprocessing, brain.mask)
    return StagedVolume(prepared=prepared, brain=brain, device=device, seconds=time.perf_counter() - started,
                        warnings=warnings)


def score_staged(staged: StagedVolume, bundle: Bundle, method: AnomalyMethod, point: OperatingPoint,
                 batch_size: int = 16, progress: ProgressCallback | None = None,
                 cancel: CancelCallback | None = None) -> Detection:
    """Score a staged volume with ``method``, put the map back on the input grid and label it at ``point``'s
    threshold for this volume; ``seconds`` counts staging too. When the GPU runs out of memory, the volume is scored
    again on the CPU, with a logged warning and ``device`` saying so (for single runs and cohorts alike)."""
    try:
        return _score(staged, bundle, method, point, batch_size, progress, cancel)
    except torch.cuda.OutOfMemoryError:
        if method.device.type != "cuda":
            raise
    log.warning("the GPU ran out of memory; scoring again on the CPU")
    torch.cuda.empty_cache()
    detection = _score(staged, bundle, build_method(bundle, torch.device("cpu")), point, batch_size, progress, cancel)
    detection.device = "cpu (the GPU ran out of memory)"
    return detection


def _score(staged: StagedVolume, bundle: Bundle, method: AnomalyMethod, point: OperatingPoint, batch_size: int,
           progress: ProgressCallback | None, cancel: CancelCallback | None) -> Detection:
    started = time.perf_counter()
    report = sub_progress(progress, 0.0, 1.0)
    scores = score_volume(method, staged.prepared, batch_size, sub_progress(progress, 0.1, 0.9), cancel,
                          bundle.card.map_normalisation, bundle.card.slice_score)
    report(0.9, "resampling to the input grid")
    anomaly_map = to_input_grid(scores.maps, staged.prepared)
    brain = sitk.GetArrayViewFromImage(staged.brain.mask) > 0
    threshold = point.threshold(sitk.GetArrayViewFromImage(anomaly_map)[brain])
    check_cancel(cancel)
    report(1.0, "done")
    return Detection(anomaly_map=anomaly_map, label_map=label_from_map(anomaly_map, threshold),
                     slice_scores=scores.slice_scores, slice_index=staged.prepared.slice_index,
                     slice_axis=staged.prepared.slice_axis, slice_eligible=scores.eligible,
                     volume_score=scores.volume_score, brain=staged.brain, threshold=threshold,
                     operating_point=point.name, model=bundle.card.name, device=str(staged.device),
                     seconds=staged.seconds + time.perf_counter() - started, warnings=list(staged.warnings))


def detect(image: sitk.Image, bundle: Bundle, brain_mask: sitk.Image | None = None, device: str = "auto",
           threshold: float | None = None, batch_size: int = 16, progress: ProgressCallback | None = None,
           cancel: CancelCallback | None = None, method: AnomalyMethod | None = None,
           masking: str = "auto", operating: str = PER_SCAN) -> Detection:
    """Detect anomalies in ``image`` with ``bundle``'s model. ``image`` and ``brain_mask`` are never modified.

    Without ``brain_mask``, ``masking`` "auto" extracts the brain of a skull-on input (see ``brain_extraction``)
    and "none" uses the foreground. Without ``threshold`` the label map is made at the card's per-scan operating point
    (``operating`` "per-scan", where the card has one) or at its calibrated threshold ("fixed"); see
    ``operating_point``. ``progress(fraction, stage)`` is called as work
    advances; when ``cancel()`` returns True the run stops with :class:`~.progress.Cancelled`. Pass ``method`` to
    reuse an already built method (e.g. across many volumes). A GPU out of memory: see :func:`score_staged`.
    """
    point = operating_point(bundle.card, threshold, operating)
    run_device = choose_device(device) if method is None else method.device
    staged = stage_volume(image, bundle, brain_mask, run_device, masking, sub_progress(progress, 0.0, 0.1), cancel)
    if method is None:
        if progress is not None:
            progress(0.08, "loading model")
        method = build_method(bundle, run_device)
    return score_staged(staged, bundle, method, point, batch_size, progress, cancel)


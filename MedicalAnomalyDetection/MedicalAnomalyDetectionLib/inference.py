"""The inference path every face calls: volume (+ optional brain mask) and a model bundle -> anomaly map, label map,
slice scores and a volume score, all on the input's grid."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from .bundle import Bundle
from .errors import InputError
from .methods import AnomalyMethod, build_method
from .methods.runtime import choose_device
from .preprocessing import PreparedVolume, prepare_volume, to_input_grid
from .scoring import eligible_slices, volume_score

ProgressCallback = Callable[[float, str], None]


class Cancelled(Exception):
    """Raised inside :func:`detect` when its ``cancel`` callable returns True; nothing has been written."""


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
    threshold: float
    model: str
    device: str
    seconds: float

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


@dataclass
class ScoredVolume:
    """Model-grid maps and slice scores of a prepared volume."""

    maps: np.ndarray  # (N, H, W) float32
    scores: np.ndarray  # (N,) float32


def score_prepared(method: AnomalyMethod, prepared: PreparedVolume, batch_size: int = 16,
                   progress: ProgressCallback | None = None,
                   cancel: Callable[[], bool] | None = None) -> ScoredVolume:
    """Run ``method`` over the slices that hold brain, in batches; empty slices score 0."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, not {batch_size}")
    count = prepared.slices.shape[0]
    maps = np.zeros(prepared.slices.shape, dtype=np.float32)
    scores = np.zeros(count, dtype=np.float32)
    todo = np.flatnonzero(prepared.mask.any(axis=(1, 2)))
    for start in range(0, len(todo), batch_size):
        if cancel is not None and cancel():
            raise Cancelled()
        chosen = todo[start:start + batch_size]
        result = method.score(torch.from_numpy(prepared.slices[chosen]), torch.from_numpy(prepared.mask[chosen]))
        maps[chosen] = result.maps.numpy()
        scores[chosen] = result.scores.numpy()
        if progress is not None:
            progress(min(1.0, (start + len(chosen)) / max(1, len(todo))), "scoring slices")
    return ScoredVolume(maps=maps, scores=scores)


def label_from_map(anomaly_map: sitk.Image, threshold: float) -> sitk.Image:
    """The label map (uint8, 1 where the map reaches ``threshold``); cheap, so a threshold slider can re-run it."""
    if not np.isfinite(threshold) or threshold <= 0:
        raise InputError(f"threshold must be a positive number, not {threshold}")
    label = sitk.Cast(sitk.GreaterEqual(anomaly_map, float(threshold)), sitk.sitkUInt8)
    label.CopyInformation(anomaly_map)
    return label


def detect(image: sitk.Image, bundle: Bundle, brain_mask: sitk.Image | None = None, device: str = "auto",
           threshold: float | None = None, batch_size: int = 16, progress: ProgressCallback | None = None,
           cancel: Callable[[], bool] | None = None, method: AnomalyMethod | None = None) -> Detection:
    """Detect anomalies in ``image`` with ``bundle``'s model. ``image`` and ``brain_mask`` are never modified.

    ``threshold`` defaults to the card's calibrated pixel threshold. ``progress(fraction, stage)`` is called as work
    advances; when ``cancel()`` returns True the run stops with :class:`Cancelled`. Pass ``method`` to reuse an
    already built method (e.g. across many volumes).
    """
    started = time.perf_counter()
    report = progress or (lambda fraction, stage: None)
    threshold = bundle.card.thresholds.get("pixel") if threshold is None else threshold
    if threshold is None:
        raise InputError(f"model {bundle.card.name} has no calibrated threshold; pass one")
    if not np.isfinite(threshold) or threshold <= 0:
        raise InputError(f"threshold must be a positive number, not {threshold}")
    report(0.0, "preparing volume")
    prepared = prepare_volume(image, bundle.card.preprocessing, brain_mask)
    if method is None:
        report(0.05, "loading model")
        method = build_method(bundle, choose_device(device))
    scored = score_prepared(method, prepared, batch_size,
                            progress=lambda f, stage: report(0.1 + 0.8 * f, stage), cancel=cancel)
    if cancel is not None and cancel():
        raise Cancelled()
    report(0.9, "resampling to the input grid")
    anomaly_map = to_input_grid(scored.maps, prepared)
    label_map = label_from_map(anomaly_map, threshold)
    eligible = eligible_slices(prepared.mask.sum(axis=(1, 2)))
    report(1.0, "done")
    return Detection(anomaly_map=anomaly_map, label_map=label_map, slice_scores=scored.scores,
                     slice_index=prepared.slice_index, slice_axis=prepared.slice_axis, slice_eligible=eligible,
                     volume_score=volume_score(scored.scores, eligible), threshold=float(threshold),
                     model=bundle.card.name, device=str(getattr(method, "device", "cpu")),
                     seconds=time.perf_counter() - started)

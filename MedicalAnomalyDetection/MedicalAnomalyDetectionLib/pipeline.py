"""The one scoring pipeline: a prepared volume and a method -> model-grid maps, slice scores, the slices that count,
and the volume score. :func:`~.inference.detect`, ``training`` evaluation and the few-shot reference check all call
:func:`score_volume`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .methods import AnomalyMethod
from .preprocessing import PreparedVolume
from .progress import CancelCallback, ProgressCallback, check_cancel
from .scoring import eligible_slices, normalise_maps, peak_z_scores, volume_score


@dataclass
class VolumeScores:
    """What a method says about one prepared volume, on the model grid."""

    maps: np.ndarray  # (N, H, W) float32
    slice_scores: np.ndarray  # (N,) float32; slices without brain score 0
    eligible: np.ndarray  # (N,) bool: slices with enough brain to count (scoring.MIN_BRAIN_SHARE)
    volume_score: float  # the highest score among eligible slices

    @property
    def most_anomalous(self) -> int:
        """Model-grid index of the eligible slice with the highest score."""
        return int(np.argmax(np.where(self.eligible, self.slice_scores, -np.inf)))


def score_volume(method: AnomalyMethod, prepared: PreparedVolume, batch_size: int = 16,
                 progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
                 map_normalisation: str = "none", slice_score: str = "method") -> VolumeScores:
    """Run ``method`` over the slices of ``prepared`` that hold brain, in batches of ``batch_size``; the maps are
    then normalised as the model card says (``scoring.normalise_maps``, over the brain of the eligible slices), and
    the slice scores are the method's own or, with ``slice_score`` "peak-z", ``scoring.peak_z_scores`` of its
    evidence map."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, not {batch_size}")
    count = prepared.slices.shape[0]
    maps = np.zeros(prepared.slices.shape, dtype=np.float32)
    scores = np.zeros(count, dtype=np.float32)
    evidence = np.zeros(prepared.slices.shape, dtype=np.float32) if slice_score == "peak-z" else None
    todo = np.flatnonzero(prepared.mask.any(axis=(1, 2)))
    for start in range(0, len(todo), batch_size):
        check_cancel(cancel)
        chosen = todo[start:start + batch_size]
        result = method.score(torch.from_numpy(prepared.slices[chosen]), torch.from_numpy(prepared.mask[chosen]))
        maps[chosen] = result.maps.numpy()
        scores[chosen] = result.scores.numpy()
        if evidence is not None:
            evidence[chosen] = (result.evidence if result.evidence is not None else result.maps).numpy()
        if progress is not None:
            progress(min(1.0, (start + len(chosen)) / max(1, len(todo))), "scoring slices")
    check_cancel(cancel)
    eligible = eligible_slices(prepared.brain_area)
    if evidence is not None:
        scores = peak_z_scores(evidence, prepared.mask, eligible)
    maps = normalise_maps(maps, prepared.mask & eligible[:, None, None], map_normalisation, prepared.mask)
    return VolumeScores(maps=maps, slice_scores=scores, eligible=eligible, volume_score=volume_score(scores, eligible))

"""The operating point: which threshold turns a volume's anomaly map into its label map.

A fixed threshold (the card's ``thresholds.pixel``, calibrated to flag a stated share of healthy brain voxels on the
validation scanners) is right for one scanner and one lesion load and wrong for others. The default is **per scan**:
the threshold comes from the volume's own map, as ``median + k·σ`` of its healthy bulk, where the bulk's median and
spread (from its quartiles) are taken as if the lesion voxels were removed; the lesion share is estimated as the
share of brain voxels above the fixed threshold beyond its calibrated rate (at most ``MAX_LESION_SHARE``). ``k`` is
the card's ``thresholds.per_scan_k``, chosen per model on the validation splits
(docs/analysis/per_scan_threshold.md). A map without a tail (a healthy scan) then gets a threshold above its values
and an empty or near-empty label map; a scan with a large lesion load still gets a threshold on its healthy tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .card import ModelCard
from .errors import InputError

PER_SCAN, FIXED, GIVEN = "per-scan", "fixed", "given"
MODES = (PER_SCAN, FIXED)
MAX_LESION_SHARE = 0.3
GAUSSIAN_QUARTILE = 0.6745  # a normal distribution's third quartile, in standard deviations
PER_SCAN_MEANING = ("default label maps: per scan, threshold = median + per_scan_k x sigma of the volume's healthy "
                    "bulk inside the brain (quartiles read as if the estimated lesion share, the share above the "
                    "pixel threshold beyond pixel_fpr, were removed); the pixel threshold is --operating-point fixed")


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float, or an InputError unless it is a positive finite number."""
    if not np.isfinite(threshold) or threshold <= 0:
        raise InputError(f"threshold must be a positive number, not {threshold}")
    return float(threshold)


def per_scan_threshold(values: np.ndarray, fixed: float, rate: float, k: float) -> float:
    """The per-scan threshold of a map whose brain voxels hold ``values`` (see the module docstring); ``fixed`` and
    ``rate`` are the card's calibrated threshold and the healthy share it flags. Falls back to ``fixed`` when the
    bulk has no spread or the result is not a positive number."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return fixed
    lesion_share = min(max(float(np.mean(values >= fixed)) - rate, 0.0), MAX_LESION_SHARE)
    median, upper = np.quantile(values, [0.5 * (1.0 - lesion_share), 0.75 * (1.0 - lesion_share)])
    sigma = (upper - median) / GAUSSIAN_QUARTILE
    threshold = median + k * sigma
    return float(threshold) if sigma > 0 and math.isfinite(threshold) and threshold > 0 else fixed


@dataclass(frozen=True)
class OperatingPoint:
    """How label maps are made: ``given`` (a threshold the user chose), else ``mode`` (per-scan or fixed, as the card
    allows: a card without ``per_scan_k`` is always fixed)."""

    mode: str
    calibrated: float | None  # the card's fixed threshold
    rate: float | None  # the healthy share it flags
    k: float | None  # the card's per-scan factor
    given: float | None = None

    @property
    def name(self) -> str:
        """What report.json says: "given", "per-scan" or "fixed"."""
        return GIVEN if self.given is not None else self.mode

    @property
    def preset(self) -> float | None:
        """The threshold every volume gets (given or fixed); None per scan."""
        if self.given is not None:
            return self.given
        return None if self.mode == PER_SCAN else self.calibrated

    def threshold(self, brain_values: np.ndarray) -> float:
        """The threshold for a volume whose map holds ``brain_values`` inside the brain."""
        if self.preset is not None:
            return self.preset
        return per_scan_threshold(brain_values, self.calibrated, self.rate, self.k)


def operating_point(card: ModelCard, threshold: float | None = None, mode: str = PER_SCAN) -> OperatingPoint:
    """The operating point of ``card``'s model: ``threshold`` when given, else ``mode`` where the card supports it
    (per-scan needs ``thresholds.per_scan_k``; a model without it runs at its fixed threshold); an InputError when
    neither a threshold is given nor one calibrated, or the mode is unknown."""
    if mode not in MODES:
        raise InputError(f"unknown operating point {mode!r} (choose {' or '.join(MODES)})")
    thresholds = card.thresholds
    calibrated = thresholds.get("pixel")
    if threshold is None and calibrated is None:
        raise InputError(f"model {card.name} has no calibrated threshold; pass one")
    k = thresholds.get("per_scan_k")
    rate = thresholds.get("pixel_fpr")
    per_scan = mode == PER_SCAN and k is not None and rate is not None
    return OperatingPoint(mode=PER_SCAN if per_scan else FIXED,
                          calibrated=check_threshold(calibrated) if calibrated is not None else None,
                          rate=rate, k=k, given=check_threshold(threshold) if threshold is not None else None)

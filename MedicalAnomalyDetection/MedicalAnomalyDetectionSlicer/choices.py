"""The panel's rules for what the user types and chooses, kept out of the Qt widget so they are tested: the slice
range of the references, and the threshold slider's range and starting value for a model."""

from __future__ import annotations

from dataclasses import dataclass

from MedicalAnomalyDetectionLib.errors import InputError


def parseSliceRange(text: str) -> tuple[int, int] | None:
    """``"40-90"`` -> (40, 90); empty or ``"all"`` -> None (every slice); anything else an InputError."""
    text = text.strip()
    if not text or text.lower() == "all":
        return None
    try:
        first, last = (int(part) for part in text.replace(" ", "").split("-"))
    except ValueError:
        raise InputError(f"slices must be 'all' or first-last, e.g. 40-90, not {text!r}") from None
    if first > last or first < 0:
        raise InputError(f"slice range {text} must run from a first to a later slice, from 0 on")
    return first, last


@dataclass(frozen=True)
class SliderRange:
    minimum: float
    maximum: float
    step: float


def thresholdSliderRange(calibrated: float) -> SliderRange:
    """From 1 % to 3 times the model's calibrated threshold, in steps of 1 % of it."""
    return SliderRange(minimum=calibrated / 100.0, maximum=3.0 * calibrated, step=calibrated / 100.0)


def startingThreshold(newModel: str, previousModel: str, current: float, calibrated: float | None) -> float:
    """The threshold to show after choosing ``newModel``: its calibrated one when the model changed or none was set
    yet (0); the user's own value when the same model is chosen again (re-entering the module)."""
    if calibrated and (newModel != previousModel or current == 0.0):
        return float(calibrated)
    return current

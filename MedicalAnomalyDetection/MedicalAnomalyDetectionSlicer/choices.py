"""The panel's rules for what the user types and chooses, kept out of the Qt widget so they are tested: the slice
range of the references, the threshold slider's range and starting value for a model, and how a result's threshold and
findings are put in words."""

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

    def including(self, *values: float) -> "SliderRange":
        """This range, widened where a (positive) value falls outside it: down to half of it, up to 1.5 times it."""
        low, high = self.minimum, self.maximum
        for value in values:
            if value and value > 0:
                low = value / 2.0 if value < low else low
                high = 1.5 * value if value > high else high
        return SliderRange(minimum=low, maximum=high, step=self.step)


def thresholdSliderRange(calibrated: float, *include: float) -> SliderRange:
    """From 1 % to 3 times the model's calibrated threshold, in steps of 1 % of it, widened to contain ``include``
    (e.g. the per-scan threshold a run chose, or the user's own value)."""
    bounds = SliderRange(minimum=calibrated / 100.0, maximum=3.0 * calibrated, step=calibrated / 100.0)
    return bounds.including(*include)


def startingThreshold(newModel: str, previousModel: str, current: float, calibrated: float | None) -> float:
    """The threshold to show after choosing ``newModel``: its calibrated one when the model changed or none was set
    yet (0); the user's own value when the same model is chosen again (re-entering the module)."""
    if calibrated and (newModel != previousModel or current == 0.0):
        return float(calibrated)
    return current


OPERATING_POINT_TEXT = {"per-scan": "(per scan)", "fixed": "(fixed)", "given": "(your threshold)"}


def operatingPointText(operatingPoint: str) -> str:
    """How a result's threshold was chosen, as the results box says it after the threshold."""
    return OPERATING_POINT_TEXT.get(operatingPoint, f"({operatingPoint})")


def findingsSummary(findings) -> str:
    """``"3 findings, 12.4 mL"``; without findings, that there are none at this threshold."""
    if not findings:
        return "No findings at this threshold"
    total = sum(region.ml for region in findings)
    return f"{len(findings)} finding{'' if len(findings) == 1 else 's'}, {total:.3g} mL"


def findingRow(region) -> tuple[str, str, str, str]:
    """A finding's row in the panel: id, mL, slices first–last, peak score."""
    slices = str(region.first_slice) if region.first_slice == region.last_slice else (
        f"{region.first_slice}–{region.last_slice}")
    return str(region.id), f"{region.ml:.3g}", slices, f"{region.peak_score:.3g}"

"""The model card: what a bundle's model is, expects and was measured to do (pure data, JSON round trip)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .errors import InputError
from .serialise import DictSerialisable

CARD_FORMAT = 1

# Orientation codes (SimpleITK/DICOM convention: the direction each index axis increases toward) whose third axis
# steps through the slices of the plane and whose first two give rows/columns in the usual radiological display.
PLANE_ORIENTATION = {"axial": "LPS", "coronal": "LIP", "sagittal": "PIL"}
MAP_NORMALISATIONS = ("none", "volume")
SLICE_SCORES = ("method", "peak-z")  # as scoring.SLICE_SCORES (the card imports nothing of torch)


@dataclass(frozen=True)
class Preprocessing(DictSerialisable):
    """What a model expects of its input; read from and written to the model card."""

    required_keys: ClassVar[tuple[str, ...]] = ("plane", "size", "spacing_mm", "normalisation", "clip")

    plane: str = "axial"
    size: tuple[int, int] = (128, 128)  # rows (H), columns (W)
    spacing_mm: float = 1.875
    normalisation: str = "percentile"  # "percentile": p1 -> 0, brain median -> 0.5; "zscore": robust z-score
    clip: tuple[float, float] = (-1.0, 3.0)

    def __post_init__(self) -> None:
        if self.plane not in PLANE_ORIENTATION:
            raise InputError(f"unknown plane {self.plane!r}; one of {sorted(PLANE_ORIENTATION)}")
        if self.normalisation not in ("percentile", "zscore"):
            raise InputError(f"unknown normalisation {self.normalisation!r}")
        if len(self.size) != 2 or min(self.size) < 8:
            raise InputError(f"model input size must be two sizes of at least 8 pixels, not {self.size}")
        if not 0 < self.spacing_mm < 20:
            raise InputError(f"model spacing {self.spacing_mm} mm is out of range")
        if len(self.clip) != 2 or self.clip[0] >= self.clip[1]:
            raise InputError(f"intensity clip range {self.clip} is not (low, high)")


@dataclass
class ModelCard(DictSerialisable):
    """Everything a user and the code need to know about a bundle; see README "Model bundles"."""

    name: str
    method: str
    version: str
    modality: str
    preprocessing: Preprocessing
    hyperparameters: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)  # {"pixel": .., "slice": .., how they were calibrated}
    map_normalisation: str = "none"  # "volume": maps in robust SDs of the volume's own brain (scoring.normalise_maps)
    slice_score: str = "method"  # "peak-z": scoring.peak_z_scores of the method's evidence map, per volume
    training: dict = field(default_factory=dict)  # data, command, epochs, seed, seconds, device
    licence: dict = field(default_factory=dict)  # {"weights": .., "training_data": .., "non_commercial": bool}
    metrics: dict = field(default_factory=dict)  # written by `python -m training evaluate`
    benchmark: dict = field(default_factory=dict)  # written by `python -m training bench`
    sha256: str | None = None  # of weights.pt; None for methods without weights
    card_format: int = CARD_FORMAT

    def __post_init__(self) -> None:
        if self.map_normalisation not in MAP_NORMALISATIONS:
            raise InputError(f"unknown map normalisation {self.map_normalisation!r}; one of {MAP_NORMALISATIONS}")
        if self.slice_score not in SLICE_SCORES:
            raise InputError(f"unknown slice score {self.slice_score!r}; one of {SLICE_SCORES}")

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        """A card from its JSON, or an InputError saying what is malformed."""
        try:
            return super().from_dict(data)
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"model card is malformed: {error}") from None

"""The intensity baseline's recipe: nothing to learn, so its "fit" only records the preprocessing (robust z-score)
and the sign of the modality's lesions, and export turns that into a weight-free bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from MedicalAnomalyDetectionLib.card import Preprocessing
from MedicalAnomalyDetectionLib.methods.intensity import IntensityBaseline, IntensityConfig
from MedicalAnomalyDetectionLib.run_record import RunRecord

from ..slice_set import SliceSet
from . import Recipe, register
from .base import RecipeSettings, RunOptions
from .settings import option, sign_option


@dataclass(frozen=True, kw_only=True)
class IntensitySettings(RecipeSettings):
    """What the intensity baseline's bundle is for: the modality, the sign of its lesions, and the model grid."""

    modality: str = option(help="the contrast the bundle is for, e.g. flair or t1")
    sign: str = sign_option(IntensityConfig.sign, "z-scores")
    plane: str = option(Preprocessing.plane, choices=("axial", "coronal", "sagittal"))
    size: tuple[int, ...] = option((128,), "slice size in px: N or H W")
    spacing: float = option(Preprocessing.spacing_mm, "in-plane spacing in mm")


@register
class IntensityRecipe(Recipe):
    name = IntensityBaseline.name
    needs_data = False
    help = "robust z-score of the intensity (no training; needs no --data)"
    Settings = IntensitySettings

    @classmethod
    def fit(cls, settings: IntensitySettings, data: SliceSet | None, run_dir: Path, run: RunOptions = RunOptions(),
            command: str = "") -> RunRecord:
        size = settings.size * 2 if len(settings.size) == 1 else settings.size
        pre = Preprocessing(plane=settings.plane, size=size, spacing_mm=settings.spacing, normalisation="zscore",
                            clip=(-10.0, 10.0))  # z-scores: clip only absurd values
        return RunRecord(method=cls.name, config=IntensityConfig(sign=settings.sign).to_dict(),
                         settings={}, source={"modality": settings.modality.lower(), "preprocessing": pre.to_dict()},
                         data="none (no training: robust z-score of the intensity)", seed=settings.seed, device="none",
                         seconds=0.0, done=0, planned=0, command=command)

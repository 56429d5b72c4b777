"""The intensity baseline's recipe: nothing to learn, so its "fit" only records the preprocessing (robust z-score)
and the sign of the modality's lesions, and export turns that into a weight-free bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from MedicalAnomalyDetectionLib.card import Preprocessing
from MedicalAnomalyDetectionLib.methods.intensity import IntensityBaseline, IntensityConfig
from MedicalAnomalyDetectionLib.run_record import RunRecord

from ..slice_set import SliceSet
from . import Recipe, register
from .base import add_sign_argument


@register
class IntensityRecipe(Recipe):
    name = IntensityBaseline.name
    needs_data = False
    help = "robust z-score of the intensity (no training; needs no --data)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--modality", required=True, help="the contrast the bundle is for, e.g. flair or t1")
        add_sign_argument(parser, "z-scores")
        parser.add_argument("--plane", default="axial", choices=("axial", "coronal", "sagittal"))
        parser.add_argument("--size", type=int, nargs="+", default=[128], help="slice size in px: N or H W")
        parser.add_argument("--spacing", type=float, default=1.875, help="in-plane spacing in mm")

    @classmethod
    def fit(cls, args: argparse.Namespace, data: SliceSet | None, run_dir: Path, command: str) -> RunRecord:
        size = tuple(args.size) * 2 if len(args.size) == 1 else tuple(args.size)
        pre = Preprocessing(plane=args.plane, size=size, spacing_mm=args.spacing, normalisation="zscore",
                            clip=(-10.0, 10.0))  # z-scores: clip only absurd values
        return RunRecord(method=cls.name, config=IntensityConfig(sign=args.sign).to_dict(),
                         settings={}, source={"modality": args.modality.lower(), "preprocessing": pre.to_dict()},
                         data="none (no training: robust z-score of the intensity)", seed=args.seed, device="none",
                         seconds=0.0, done=0, planned=0, command=command)

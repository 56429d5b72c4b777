"""What a training recipe provides (see the package docstring)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import ClassVar

from MedicalAnomalyDetectionLib.bundle import Bundle
from MedicalAnomalyDetectionLib.run_record import RunRecord

from ..slice_set import SliceSet


def add_sign_argument(parser: argparse.ArgumentParser, what: str = "residuals") -> None:
    """``--sign``: which side of a map is anomalous for the modality (FLAIR lesions are bright: positive)."""
    parser.add_argument("--sign", default="positive", choices=("positive", "negative", "absolute"),
                        help=f"which {what} are anomalous (FLAIR lesions: positive; T1: negative)")


class Recipe:
    """How one method is trained. ``name`` is the method's registered name (a card's ``method``)."""

    name: ClassVar[str]
    needs_data: ClassVar[bool] = True  # False: fit takes no slice cache (e.g. the intensity baseline)
    help: ClassVar[str] = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this method's ``fit`` options (``--data``, ``--run-dir``, ``--seed`` are common to all)."""

    @classmethod
    def fit(cls, args: argparse.Namespace, data: SliceSet | None, run_dir: Path, command: str) -> RunRecord:
        """Fit on ``data``, leave the trained modules in ``run_dir/checkpoint.pt`` and return the run record."""
        raise NotImplementedError


class FewShotRecipe(Recipe):
    """A method fitted to K reference cases; the few-shot tables (``python -m training fewshot``) use it.
    ``variants`` maps an ablation's name to the settings it changes (the full method is ``full_variant``)."""

    label: ClassVar[str] = ""  # the method's name in the tables
    variants: ClassVar[dict[str, dict]] = {}
    full_variant: ClassVar[str] = ""

    @classmethod
    def fit_shots(cls, data: SliceSet, shots: int, seed: int, settings: dict) -> tuple[Bundle, list[str], float]:
        """Fit in memory to ``shots`` cases of ``data`` drawn with ``seed``, with ``settings`` changed from the
        method's defaults (a variant's changes included): (unsaved bundle, drawn case ids, fit seconds)."""
        raise NotImplementedError

    @classmethod
    def settings_key(cls, settings: dict) -> dict:
        """The fit settings a table's entries must share (a rerun with others is refused)."""
        raise NotImplementedError

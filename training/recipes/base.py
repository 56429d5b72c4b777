"""What a training recipe provides (see the package docstring): its settings dataclass and its fit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from MedicalAnomalyDetectionLib.bundle import Bundle
from MedicalAnomalyDetectionLib.methods.runtime import DEVICE_CHOICES
from MedicalAnomalyDetectionLib.run_record import RunRecord
from MedicalAnomalyDetectionLib.serialise import DictSerialisable

from ..slice_set import SliceSet
from .settings import option


@dataclass(frozen=True, kw_only=True)
class RecipeSettings(DictSerialisable):
    """What every fit is told: its random seed. A recipe's ``Settings`` extend this with everything that decides
    what the fit learns (each default written once, there); written to the run record."""

    seed: int = option(0, "random seed of the fit")


@dataclass(frozen=True, kw_only=True)
class RunOptions(DictSerialisable):
    """How a fit runs, which does not change what it learns (never part of a run's identity). A recipe names the
    ones it honours in ``Recipe.run_options``; only those are offered on its command line."""

    device: str = option("auto", "auto: CUDA when usable, else the CPU", choices=DEVICE_CHOICES)
    resume: bool = option(False, "continue from the run's checkpoint")
    stop_after: int | None = option(None, "stop after this many epochs in this session (resume later)")
    threads: int | None = option(None, "torch CPU threads")
    quiet: bool = option(False, "no progress bars")


class Recipe:
    """How one method is trained: ``fit(Settings(...), data, run_dir)`` from Python, or ``python -m training fit
    --method NAME`` with options generated from ``Settings``. ``name`` is the method's registered name (a card's
    ``method``)."""

    name: ClassVar[str]
    Settings: ClassVar[type[RecipeSettings]] = RecipeSettings
    run_options: ClassVar[tuple[str, ...]] = ()  # the RunOptions fields this recipe honours
    needs_data: ClassVar[bool] = True  # False: fit takes no slice cache (e.g. the intensity baseline)
    help: ClassVar[str] = ""

    @classmethod
    def fit(cls, settings: RecipeSettings, data: SliceSet | None, run_dir: Path, run: RunOptions = RunOptions(),
            command: str = "") -> RunRecord:
        """Fit on ``data``, leave the trained modules in ``run_dir/checkpoint.pt`` and return the run record
        (``command``: how the fit was asked for, recorded in the card)."""
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

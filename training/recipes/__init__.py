"""Training recipes, one module per method: its settings dataclass (every option of its fit, each default written
once; the ``fit`` command line is generated from it), its fit (settings + data -> checkpoint + run record, callable
from Python) and, for few-shot methods, its in-memory fit for the few-shot tables. Each module registers its recipe
with :func:`register`; every module of this package is imported on first look-up, so adding a method means adding
its method file in the core and its recipe file here, nothing else."""

from __future__ import annotations

import importlib
import pkgutil

from MedicalAnomalyDetectionLib.errors import InputError

from .base import FewShotRecipe, Recipe

_RECIPES: dict[str, type[Recipe]] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: make a recipe known under its method's name."""
    if _RECIPES.get(cls.name, cls) is not cls:
        raise ValueError(f"two recipes are named {cls.name!r}")
    _RECIPES[cls.name] = cls
    return cls


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def recipe_names(few_shot: bool = False) -> list[str]:
    """The methods that can be trained (only the few-shot ones with ``few_shot``), sorted."""
    _discover()
    return sorted(name for name, cls in _RECIPES.items() if not few_shot or issubclass(cls, FewShotRecipe))


def recipe(name: str) -> type[Recipe]:
    """The recipe of method ``name``."""
    _discover()
    if name not in _RECIPES:
        raise InputError(f"no training recipe for method {name!r} (known: {', '.join(sorted(_RECIPES))})")
    return _RECIPES[name]


__all__ = ["FewShotRecipe", "Recipe", "recipe", "recipe_names", "register"]

"""The one table of method plug-ins. A module of this package registers its method class with :func:`register`;
every module is imported on first look-up, so adding a method means adding its file and nothing else."""

from __future__ import annotations

import copy
import importlib
import pkgutil

import torch

from ..bundle import Bundle
from ..errors import InputError
from .base import AnomalyMethod

_METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` (an :class:`AnomalyMethod`) known under ``cls.name``."""
    if _METHODS.get(cls.name, cls) is not cls:
        raise ValueError(f"two method classes are named {cls.name!r}")
    cls.ablations = dict(getattr(cls, "ablations", {}))
    _METHODS[cls.name] = cls
    return cls


def _discover() -> None:
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")


def method_names() -> list[str]:
    """Every registered method's name, sorted."""
    _discover()
    return sorted(_METHODS)


def method_class(name: str) -> type:
    """The plug-in class registered as ``name``, or an InputError listing the known ones."""
    _discover()
    if name not in _METHODS:
        raise InputError(f"unknown method {name!r} (known: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]


def build_method(bundle: Bundle, device: torch.device) -> AnomalyMethod:
    """Instantiate the plug-in named by the bundle's card."""
    try:
        method = method_class(bundle.card.method)
    except InputError as error:
        raise InputError(f"model {bundle.card.name}: {error}") from None
    try:
        return method.from_bundle(bundle, device)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"model card of {bundle.card.name} has malformed hyper-parameters: {error!r}") from None


def with_overrides(bundle: Bundle, overrides: dict) -> Bundle:
    """A copy of ``bundle`` whose card hyper-parameters are deep-merged with ``overrides`` (an ablation variant)."""
    variant = copy.deepcopy(bundle)
    _merge(variant.card.hyperparameters, overrides)
    return variant


def applicable_ablations(bundle: Bundle) -> dict[str, dict]:
    """The ablations of ``bundle``'s method that change what this model does (not, e.g., "no intensity prior" on a
    model without one, nor the patch ranking of a model whose card scores slices by peak z), by name: the rows
    ``compare`` and ``evaluate --ablation`` may score."""
    base = _settings(bundle)
    ranked = bundle.card.slice_score == "method"
    return {name: change for name, change in method_class(bundle.card.method).ablations.items()
            if (ranked or set(change) != {"ranking"}) and _settings(with_overrides(bundle, change)) != base}


def _settings(bundle: Bundle) -> object:
    """What a bundle's method is set to: its built config where it has one (defaults filled in), else its card's."""
    config = getattr(build_method(bundle, torch.device("cpu")), "config", None)
    return config if config is not None else bundle.card.hyperparameters


def _merge(target: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)

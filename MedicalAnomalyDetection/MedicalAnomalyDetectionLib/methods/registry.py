"""The one table of method plug-ins. A module of this package registers its method class with :func:`register`;
every module is imported on first look-up, so adding a method means adding its file and nothing else."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pkgutil

import torch

from ..bundle import Bundle
from ..errors import InputError
from .base import AnomalyMethod

_METHODS: dict[str, type[AnomalyMethod]] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` (an :class:`AnomalyMethod` subclass) known under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, AnomalyMethod)):
        raise TypeError(f"{cls!r} is not an AnomalyMethod")
    if _METHODS.get(cls.name, cls) is not cls:
        raise ValueError(f"two method classes are named {cls.name!r}")
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


def method_class(name: str) -> type[AnomalyMethod]:
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
    """``bundle`` with a copy of its card whose hyper-parameters are deep-merged with ``overrides`` (an ablation
    variant); the weights are shared, not copied."""
    card = copy.deepcopy(bundle.card)
    _merge(card.hyperparameters, overrides)
    return dataclasses.replace(bundle, card=card)


def applicable_ablations(bundle: Bundle) -> dict[str, dict]:
    """The ablations of ``bundle``'s method that change what this model does (not, e.g., "no intensity prior" on a
    model without one, nor the patch ranking of a model whose card scores slices by peak z), by name: the rows
    ``compare`` and ``evaluate --ablation`` may score. Compared as configurations: nothing is built."""
    method = method_class(bundle.card.method)
    base = method.configure(bundle.card.hyperparameters)
    ranked = bundle.card.slice_score == "method"
    return {name: change for name, change in method.ablations.items()
            if (ranked or set(change) != {"ranking"})
            and method.configure(merged(bundle.card.hyperparameters, change)) != base}


def merged(hyperparameters: dict, overrides: dict) -> dict:
    """A deep copy of ``hyperparameters`` deep-merged with ``overrides``."""
    result = copy.deepcopy(hyperparameters)
    _merge(result, overrides)
    return result


def _merge(target: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)

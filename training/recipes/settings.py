"""Typed fit settings: each recipe declares one dataclass of its options, with each default written once; the
``fit`` command line is generated from its fields, and Python code builds the dataclass and calls ``fit`` directly.

A field's flag is ``--`` + its name with dashes (``flag=`` in :func:`option` for another); ``help``, ``choices`` and
``metavar`` go to argparse as they are. A ``bool`` field that defaults to False is a switch that turns it on; one
that defaults to True needs a ``flag`` (e.g. ``--no-local-contrastive``) that turns it off. Tuples take one or more
values, ``X | None`` fields default to None.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from MedicalAnomalyDetectionLib.errors import InputError

S = TypeVar("S")
SIGNS = ("positive", "negative", "absolute")


def option(default: Any = dataclasses.MISSING, help: str = "", flag: str | None = None,
           choices: tuple | None = None, metavar: str | None = None) -> Any:
    """A settings field with its command-line help (and, where the flag is not the field's name, its flag)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "choices": choices,
                                                        "metavar": metavar})


def sign_option(default: str, what: str = "residuals") -> Any:
    """``--sign``: which side of a map is anomalous for the modality (FLAIR lesions are bright: positive)."""
    return option(default, f"which {what} are anomalous (FLAIR lesions: positive; T1: negative)", choices=SIGNS)


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _inner(hint: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [argument for argument in typing.get_args(hint) if argument is not type(None)]
        return inner[0], True
    return hint, False


def add_settings_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings: type,
                           only: tuple[str, ...] | None = None) -> None:
    """One option per field of the ``settings`` dataclass (or per field named in ``only``), its default the
    field's."""
    hints = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        if only is not None and field.name not in only:
            continue
        hint, _ = _inner(hints[field.name])
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else (field.default if field.default is not dataclasses.MISSING
                                         else field.default_factory())
        kwargs: dict[str, Any] = {"dest": field.name, "help": field.metadata.get("help", "")}
        if field.metadata.get("metavar"):
            kwargs["metavar"] = field.metadata["metavar"]
        if hint is bool:
            kwargs["action"] = "store_false" if default else "store_true"
            if default and not field.metadata.get("flag"):
                raise TypeError(f"{settings.__name__}.{field.name} defaults to True: give it a --no-... flag")
        else:
            if typing.get_origin(hint) is tuple:
                kwargs.update(nargs="+", type=typing.get_args(hint)[0])
                default = None if default is None else list(default)
            else:
                kwargs["type"] = hint if hint in (int, float, str, Path) else str
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
            if required:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
        parser.add_argument(_flag(field), **kwargs)


def settings_from_args(settings: type[S], args: argparse.Namespace) -> S:
    """The ``settings`` dataclass from the options :func:`add_settings_arguments` added (lists back to tuples)."""
    values = {}
    for field in dataclasses.fields(settings):
        value = getattr(args, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    try:
        return settings(**values)
    except (TypeError, ValueError) as error:
        raise InputError(f"fit settings: {error}") from None

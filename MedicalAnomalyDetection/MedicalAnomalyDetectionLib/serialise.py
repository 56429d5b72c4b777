"""One serialiser for the configuration dataclasses of cards, methods and recipes: JSON-ready dicts and back.

:class:`DictSerialisable` gives a dataclass ``to_dict()`` and ``from_dict(data)``, driven by its field types: nested
dataclasses become dicts, tuples lists, and back; numbers are converted to the field's type; a missing key takes the
field's default, except the keys a class lists in ``required_keys`` (e.g. a network's shape, which no default can
guess for a card written without it). A key that is not a field is refused unless the class lists it in
``ignored_keys`` (a card's hyper-parameters may keep, e.g., the fit's own settings beside a method's).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="DictSerialisable")


class DictSerialisable:
    """Mixin for dataclasses whose fields are numbers, strings, booleans, tuples, dicts, ``X | None`` or other
    serialisable dataclasses."""

    required_keys: ClassVar[tuple[str, ...]] = ()
    ignored_keys: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (tuples as lists, nested dataclasses as dicts)."""
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: dict) -> T:
        """An instance from ``data`` (as :meth:`to_dict` writes it); a missing key takes the field's default."""
        hints = typing.get_type_hints(cls)
        names = {field.name for field in dataclasses.fields(cls) if field.init}
        unknown = sorted(set(data) - names - set(cls.ignored_keys))
        if unknown:
            raise TypeError(f"{cls.__name__} has no setting {', '.join(unknown)}")
        missing = [name for name in cls.required_keys if name not in data]
        if missing:
            raise KeyError(f"{cls.__name__} needs the setting {', '.join(missing)}")
        return cls(**{name: _typed(hints[name], data[name]) for name in names if name in data})


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _typed(hint: Any, value: Any) -> Any:
    """``value`` (as JSON gives it) as the type ``hint`` says."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _typed(next(argument for argument in arguments if argument is not type(None)), value)
    if isinstance(hint, type) and issubclass(hint, DictSerialisable):
        return value if isinstance(value, hint) else hint.from_dict(value)
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_typed(arguments[0], item) for item in value)
        # a wrong length is left for the class's own check to name
        return tuple(_typed(arguments[min(index, len(arguments) - 1)], item) for index, item in enumerate(value))
    if hint is bool:
        return bool(value)
    if hint in (int, float):
        return hint(value)
    return value

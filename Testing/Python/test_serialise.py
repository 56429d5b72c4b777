"""The one serialiser of configuration dataclasses (cards, method configs, recipe settings)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from MedicalAnomalyDetectionLib.serialise import DictSerialisable


@dataclass(frozen=True)
class Inner(DictSerialisable):
    size: tuple[int, int] = (4, 4)
    weights: tuple[float, ...] = (1.1,)


@dataclass(frozen=True)
class Outer(DictSerialisable):
    inner: Inner = field(default_factory=Inner)
    scale: float = 1.0
    steps: int = 3
    limit: float | None = None
    name: str = "x"
    ignored_keys: ClassVar[tuple[str, ...]] = ("fit",)


def test_round_trip_through_json_restores_tuples_nested_classes_and_numbers():
    value = Outer(inner=Inner(size=(8, 16), weights=(1.1, 1.0)), scale=2.5, steps=7, limit=0.25, name="y")
    data = json.loads(json.dumps(value.to_dict()))
    assert data == {"inner": {"size": [8, 16], "weights": [1.1, 1.0]}, "scale": 2.5, "steps": 7, "limit": 0.25,
                    "name": "y"}
    assert Outer.from_dict(data) == value


def test_missing_keys_take_defaults_and_numbers_take_the_field_type():
    value = Outer.from_dict({"scale": 2, "steps": 4.0, "inner": {"size": [2, 2]}})
    assert value == Outer(inner=Inner(size=(2, 2)), scale=2.0, steps=4)
    assert isinstance(value.scale, float) and isinstance(value.steps, int) and value.limit is None


def test_unknown_keys_are_refused_unless_the_class_ignores_them():
    assert Outer.from_dict({"fit": {"epochs": 3}}) == Outer()
    with pytest.raises(TypeError, match="Inner has no setting colour"):
        Outer.from_dict({"inner": {"colour": 1}})

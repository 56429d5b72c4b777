"""``configure``: a bundle with changed inference settings (card hyper-parameters) and the same weights, e.g. a new
version of a model whose map smoothing or intensity prior was chosen on validation data after training. The change
and the command are recorded in the card; thresholds and metrics are dropped, since they no longer hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from MedicalAnomalyDetectionLib import __version__
from MedicalAnomalyDetectionLib.bundle import CARD_FILE, WEIGHTS_FILE, load_bundle, write_card
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods import build_method, method_class, with_overrides


def parse_settings(items: list[str]) -> dict:
    """``["map_smoothing=5", "inference_shifts=[0, 8]"]`` -> {"map_smoothing": 5, "inference_shifts": [0, 8]} (values
    are JSON; a value that is not JSON is a string)."""
    changes = {}
    for item in items:
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise InputError(f"--set takes key=value, not {item!r}")
        try:
            changes[key] = json.loads(text)
        except json.JSONDecodeError:
            changes[key] = text
    return changes


def configure(model: str, changes: dict, out: Path | None, command: str) -> Path:
    """Apply ``changes`` to the bundle's hyper-parameters and write it to ``out`` (weights copied) or in place."""
    bundle = load_bundle(model)
    # settings newer than the card are known to the method's configuration
    known = set(bundle.card.hyperparameters) | set(method_class(bundle.card.method).configure(
        bundle.card.hyperparameters).to_dict())
    unknown = sorted(set(changes) - known)
    if unknown:
        raise InputError(f"{bundle.card.name} has no hyper-parameter {', '.join(unknown)} "
                         f"(it has {', '.join(sorted(known))})")
    changed = with_overrides(bundle, changes)
    build_method(changed, torch.device("cpu"))  # refuses settings the method cannot use
    card = changed.card
    card.version = __version__
    card.thresholds, card.metrics, card.benchmark = {}, {}, {}
    card.training.setdefault("configured", []).append({"changes": changes, "command": command})
    folder = Path(out) if out is not None else bundle.path
    if folder != bundle.path:
        if (folder / CARD_FILE).exists():
            raise InputError(f"{folder} already holds a bundle; choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
        if (bundle.path / WEIGHTS_FILE).exists():
            shutil.copyfile(bundle.path / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    write_card(folder, card)
    return folder

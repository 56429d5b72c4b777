"""Model bundles: a folder with ``card.json`` (the model card) and, for learned methods, ``weights.pt``.

Weights are a plain ``state_dict`` saved with :func:`torch.save` and read back with ``weights_only=True``, so loading
a bundle never unpickles arbitrary objects; the card's sha256 must match the weights file byte for byte. Every model's
card ships with the package; the weights of catalogued models that do not are fetched on first use into
:func:`user_models_dir` (``catalogue``, docs/models.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_atomically, write_text_atomically
from .card import ModelCard
from .errors import InputError
from .progress import ProgressCallback

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.pt"
DEFAULT_MODEL = "patchgan-flair"  # what the Slicer panel and mad-detect run unless told otherwise: the FLAIR flagship


def bundled_models_dir() -> Path:
    """Where the bundled models live: ``$MAD_MODELS_DIR``; else ``bundled_models`` inside this package, where a wheel
    (``pip install .``) puts them; else ``Resources/Models`` two folders above this package (the source tree's layout,
    which the Slicer extension's install rule reproduces)."""
    if "MAD_MODELS_DIR" in os.environ:
        return Path(os.environ["MAD_MODELS_DIR"])
    packaged = Path(__file__).resolve().parent / "bundled_models"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "Resources" / "Models"


def user_models_dir() -> Path:
    """Where models the user fits (e.g. few-shot PathoSCOPE from their own references), installs or downloads are
    saved and found by name: ``$MAD_USER_MODELS_DIR`` or ``~/.MedicalAnomalyDetection/Models``."""
    return Path(os.environ.get("MAD_USER_MODELS_DIR", Path.home() / ".MedicalAnomalyDetection" / "Models"))


def _model_folders() -> list[Path]:
    """Bundle folders of the bundled models, then of the user's models not named like a bundled one (a downloaded
    copy of a catalogued model), each sorted by name; dot-folders (downloads under way) are left out."""
    folders: dict[str, Path] = {}
    for root in (bundled_models_dir(), user_models_dir()):
        for folder in sorted(root.glob("*")):
            if not folder.name.startswith(".") and folder.name not in folders and (folder / CARD_FILE).exists():
                folders[folder.name] = folder
    return list(folders.values())


@dataclass
class Bundle:
    """A loaded bundle: its card, its weights (None for weight-free methods) and where it came from."""

    card: ModelCard
    state_dict: dict[str, torch.Tensor] | None
    path: Path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_bundle_path(name_or_path: str | Path) -> Path:
    """A bundle folder from a bundled or user model's name, a folder path, or a path to its ``card.json``."""
    candidate = Path(name_or_path)
    if candidate.name == CARD_FILE:
        candidate = candidate.parent
    if candidate.is_dir():
        return candidate
    for root in (bundled_models_dir(), user_models_dir()):
        if (root / str(name_or_path) / CARD_FILE).exists():
            return root / str(name_or_path)
    available = [p.name for p in _model_folders()]
    raise InputError(f"model bundle not found: {name_or_path} (known models: {', '.join(available) or 'none'})")


def save_bundle(folder: Path, card: ModelCard, state_dict: dict[str, torch.Tensor] | None) -> Path:
    """Write ``card`` (and ``state_dict`` as weights.pt, whose sha256 goes into the card) into ``folder``."""
    import torch  # here, so that cards can be listed and read where torch is not installed yet (e.g. in Slicer)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        weights = folder / WEIGHTS_FILE
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        write_atomically(weights, lambda file: torch.save(tensors, file))
        card.sha256 = sha256_of(weights)
    write_card(folder, card)
    return folder


def write_card(folder: Path, card: ModelCard) -> None:
    """Write card.json atomically, so that an interrupted write never leaves a broken card."""
    write_text_atomically(Path(folder) / CARD_FILE, json.dumps(card.to_dict(), indent=2) + "\n")


def read_card(folder: Path) -> ModelCard:
    card_path = Path(folder) / CARD_FILE
    if not card_path.exists():
        raise InputError(f"model bundle has no {CARD_FILE}: {folder}")
    try:
        data = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"model card is not valid JSON ({card_path}): {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"model card is not a JSON object: {card_path}")
    return ModelCard.from_dict(data)


def bundle_folder(name_or_path: str | Path, progress: ProgressCallback | None = None) -> Path:
    """The bundle folder of ``name_or_path`` that holds its weights: where its card is, or, for a catalogued model
    whose weights do not ship with the package, the user folder's copy, downloaded first if missing."""
    folder = resolve_bundle_path(name_or_path)
    card = read_card(folder)
    if card.sha256 is None or (folder / WEIGHTS_FILE).exists():
        return folder
    from .catalogue import installed_copy  # the catalogue builds on this module

    return installed_copy(folder, card, progress)


def load_bundle(name_or_path: str | Path, progress: ProgressCallback | None = None) -> Bundle:
    """Load and verify a bundle: card parsed, checksum matched, weights read without unpickling objects. Weights of
    a catalogued model that are not here yet are downloaded first (``progress`` hears how far)."""
    folder = bundle_folder(name_or_path, progress)
    card = read_card(folder)
    if card.sha256 is None:
        return Bundle(card=card, state_dict=None, path=folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise InputError(f"model bundle {card.name} has no {WEIGHTS_FILE} in {folder}")
    if sha256_of(weights) != card.sha256:
        raise InputError(f"checksum of {weights} does not match its model card; the file is corrupt or replaced")
    return Bundle(card=card, state_dict=load_state_file(weights), path=folder)


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict of tensors from ``path``, read with ``weights_only=True`` (never unpickling objects), or an
    InputError saying what is wrong with the file."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise InputError(f"refusing to load {path}: it needs unpickling arbitrary objects "
                         f"({_first_line(error, 120)}); save a state_dict instead") from None
    except Exception as error:  # torch.load fails in many ways on files that are not its format
        raise InputError(f"weights file {path} is corrupt or not a PyTorch file: {_first_line(error, 160)}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise InputError(f"weights file {path} is not a plain state_dict of tensors")
    return state


def _first_line(error: BaseException, length: int) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:length]


def list_bundled_models() -> list[ModelCard]:
    """The cards of every bundle in :func:`bundled_models_dir`, sorted by name."""
    return [read_card(folder) for folder in sorted(bundled_models_dir().glob("*")) if (folder / CARD_FILE).exists()]


def list_models() -> list[tuple[ModelCard, Path]]:
    """Every bundled model (its card's folder, whether or not its weights are downloaded yet), then every other model
    in :func:`user_models_dir`: (card, folder) pairs. A folder whose card cannot be read is left out with a logged
    warning (one broken bundle must not hide the others)."""
    models = []
    for folder in _model_folders():
        try:
            models.append((read_card(folder), folder))
        except InputError as error:
            log.warning("skipping model folder %s: %s", folder, error)
    return models

"""Installing, listing and removing models in the per-user model folder (docs/models.md): by a catalogued model's
name (downloaded), from a bundle folder, or from a catalogued model's weights file; a folder is replaced whole or
not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import bundle
from .bundle import CARD_FILE, WEIGHTS_FILE, read_card, sha256_of
from .card import ModelCard
from .catalogue import MODEL_NAME, download, is_complete, is_intact, locked, read_catalogue, swap_in, user_dir
from .errors import InputError
from .progress import ProgressCallback


def _bundled_folder(name: str) -> Path | None:
    folder = bundle.bundled_models_dir() / name
    return folder if (folder / CARD_FILE).exists() else None


def install_model(source: str | Path, progress: ProgressCallback | None = None) -> Path:
    """Install a catalogued model by name (download), a bundle folder (card.json [+ weights.pt]) or a catalogued
    model's weights file into the user folder; returns the installed folder."""
    path = Path(source)
    if path.name == CARD_FILE and path.is_file():
        path = path.parent
    if path.is_dir():
        return _install_folder(path)
    if path.is_file():
        return _install_weights(path)
    name = str(source)
    entry = read_catalogue().get(name)
    folder = _bundled_folder(name)
    if entry is None or folder is None:
        raise InputError(f"{source} is neither a catalogued model (see `mad-detect --list-models`) nor a file")
    if entry.url is None:
        raise InputError(f"{name} ships with the package; there is nothing to install")
    target = bundle.user_models_dir() / name
    for installed in (folder, target):
        if is_complete(installed, entry.sha256):
            raise InputError(f"{name} {entry.version} is installed already ({installed})")
    return download(entry, folder / CARD_FILE, progress)


def _install_folder(folder: Path) -> Path:
    card = read_card(folder)  # InputError without a readable card
    if not MODEL_NAME.fullmatch(card.name):
        raise InputError(f"model name {card.name!r} cannot name a folder")
    if card.sha256 is not None:
        bundle.load_state_file(_verified_weights(folder, card))
    _check_name_free(card)
    return _copy_in(card.name, folder / CARD_FILE, folder / WEIGHTS_FILE if card.sha256 else None)


def _verified_weights(folder: Path, card: ModelCard) -> Path:
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"model bundle {card.name} has no {WEIGHTS_FILE} in {folder}")
    if sha256_of(weights) != card.sha256:
        raise InputError(f"checksum of {weights} does not match its model card; the file is corrupt or replaced")
    return weights


def _check_name_free(card: ModelCard) -> None:
    """A bundle may take a catalogued model's name only as that very model (same weights)."""
    if _bundled_folder(card.name) is None:
        return
    entry = read_catalogue().get(card.name)
    if entry is None or entry.sha256 != card.sha256:
        raise InputError(f"a different model named {card.name} ships with the package; rename the bundle "
                         f"(the name in its card.json)")
    if entry.url is None:
        raise InputError(f"{card.name} ships with the package already; there is nothing to install")


def _install_weights(path: Path) -> Path:
    digest = sha256_of(path)
    entry = next((e for e in read_catalogue().values() if e.sha256 == digest), None)
    if entry is None:
        raise InputError(f"{path} is not a model bundle: neither a folder with {CARD_FILE} nor the weights of a "
                         f"catalogued model (its sha256 {digest[:16]}… matches none)")
    folder = _bundled_folder(entry.name)
    if entry.url is None or folder is None:
        raise InputError(f"{path} holds the weights of {entry.name}, which ships with the package already")
    return _copy_in(entry.name, folder / CARD_FILE, path)


def _copy_in(name: str, card_path: Path, weights: Path | None) -> Path:
    """Copy a verified card (and weights) into the user folder as ``name``, replacing a previous install whole."""
    user = user_dir()
    staging = user / f".{name}.install"
    with locked(user / f".{name}.lock"):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        if weights is not None:
            shutil.copyfile(weights, staging / WEIGHTS_FILE)
        shutil.copyfile(card_path, staging / CARD_FILE)
        swap_in(staging, user / name)
    return user / name


def remove_model(name: str) -> Path:
    """Delete a model from the user folder; models that ship with the package cannot be removed."""
    target = bundle.user_models_dir() / name
    if MODEL_NAME.fullmatch(name) and (target / CARD_FILE).exists():
        shutil.rmtree(target)
        return target
    bundled = _bundled_folder(name) if MODEL_NAME.fullmatch(name) else None
    if bundled is not None:
        entry = read_catalogue().get(name)
        if entry is not None and entry.url is not None and not (bundled / WEIGHTS_FILE).exists():
            raise InputError(f"{name} is not downloaded; nothing to remove")
        raise InputError(f"{name} ships with the package ({bundled}) and cannot be removed")
    raise InputError(f"no model {name} in the user model folder {bundle.user_models_dir()}")


def model_rows() -> list[dict]:
    """Every known model (catalogued, bundled or the user's): name, version, modality, method, size, licence and
    where its weights are, or that they are not downloaded and from where they would be."""
    catalogue, rows = read_catalogue(), []
    user = bundle.user_models_dir()
    for card, folder in bundle.list_models():
        entry = catalogue.get(card.name)
        weights = folder / WEIGHTS_FILE
        if card.sha256 is None or weights.exists():
            where = str(folder)
        elif entry is not None and entry.url is not None and is_complete(user / card.name, card.sha256):
            where = str(user / card.name)
        elif entry is not None and entry.url is not None and is_intact(user / card.name):
            where = f"{user / card.name} (version {read_card(user / card.name).version}; {card.version} not " \
                    f"downloaded: {entry.url})"
        elif entry is not None and entry.url is not None:
            where = f"not downloaded: {entry.url}"
        else:
            where = "weights missing"
        size = entry.size if entry is not None else (weights.stat().st_size if weights.exists() else 0)
        licence = str(card.licence.get("weights", "unknown"))
        if card.licence.get("non_commercial"):
            licence += " [non-commercial]"
        rows.append({"name": card.name, "version": card.version, "modality": card.modality, "method": card.method,
                     "size": size, "licence": licence, "where": where})
    return rows


def format_rows(rows: list[dict]) -> str:
    """``model_rows`` as a table: one line a model, its licence on the next."""
    lines = [f"{'NAME':<22}{'VERSION':<9}{'MODALITY':<10}{'METHOD':<12}{'SIZE':>9}  WHERE"]
    for row in rows:
        size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "-"
        lines.append(f"{row['name']:<22}{row['version']:<9}{row['modality']:<10}{row['method']:<12}{size:>9}  "
                     f"{row['where']}")
        lines.append(f"{'':<22}licence: {row['licence']}")
    return "\n".join(lines)

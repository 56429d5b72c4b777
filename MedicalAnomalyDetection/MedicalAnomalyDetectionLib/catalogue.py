"""The model catalogue: every available model, whether its weights ship inside the package or are fetched on first
use from a release asset into the per-user model folder, and installing, listing and removing models (docs/models.md).

``catalogue.json`` sits beside the cards in :func:`bundle.bundled_models_dir`; one line a model: name, version,
modality, method, size and sha256 of its weights (the card's), licence (the card's) and ``source``: ``"bundled"`` or
the URL of its weights. ``$MAD_MODEL_BASE_URL`` replaces the folder part of every URL (a mirror with the same file
names). A download goes to ``<user folder>/.<name>-<version>.download/weights.pt.part`` (resumed with an HTTP Range
request), is checked against the sha256 and only then becomes ``<user folder>/<name>`` (card.json + weights.pt) by a
rename, so a model folder is either complete or absent and a failed update leaves the installed version in place.
Maintainers regenerate the catalogue from the cards with ``python -m MedicalAnomalyDetectionLib.catalogue``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from . import bundle
from .bundle import CARD_FILE, WEIGHTS_FILE, read_card, sha256_of
from .card import ModelCard
from .errors import InputError
from .progress import ProgressCallback
from .volume_io import make_writable_folder

log = logging.getLogger(__name__)

CATALOGUE_FILE = "catalogue.json"
CATALOGUE_FORMAT = 1
BUNDLED = "bundled"
DEFAULT_BASE_URL = "https://github.com/MedicalAnomalyDetection/SlicerMedicalAnomalyDetection/releases/download/models"
BASE_URL_ENV = "MAD_MODEL_BASE_URL"
TIMEOUT_S = 30
CHUNK = 1 << 20
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_INSTALL_HINT = "install it from a file with `mad-detect --install-model PATH`"


@dataclass(frozen=True)
class Entry:
    """One model of the catalogue."""

    name: str
    version: str
    modality: str
    method: str
    size: int  # bytes of weights.pt; 0 without weights
    sha256: str | None
    source: str  # "bundled" or the URL of the weights
    licence: dict

    @property
    def url(self) -> str | None:
        """Where the weights are downloaded from (``$MAD_MODEL_BASE_URL`` replacing the folder), None if bundled."""
        if self.source == BUNDLED:
            return None
        base = os.environ.get(BASE_URL_ENV)
        return f"{base.rstrip('/')}/{self.source.rsplit('/', 1)[1]}" if base else self.source


def entry_for(card: ModelCard, weights_size: int, source: str) -> Entry:
    return Entry(name=card.name, version=card.version, modality=card.modality, method=card.method,
                 size=weights_size, sha256=card.sha256, licence=card.licence, source=source)


def asset_name(card: ModelCard | Entry) -> str:
    """The file name of a model's weights as a release asset."""
    return f"{card.name}-{card.version}.pt"


def read_catalogue(models_dir: Path | None = None) -> dict[str, Entry]:
    """The catalogue beside the bundled cards, by name; empty where there is none (e.g. a folder of test bundles)."""
    path = Path(models_dir or bundle.bundled_models_dir()) / CATALOGUE_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {line["name"]: Entry(**line) for line in data["models"]}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise InputError(f"model catalogue {path} is malformed: {error}") from None


def write_catalogue(models_dir: Path, bundled: tuple[str, ...] = (), assets: Path | None = None) -> Path:
    """(Maintainers) rewrite ``catalogue.json`` from the cards in ``models_dir``. A model keeps its current source;
    a new one is released (a URL under the default base) unless named in ``bundled``; weight-free models are
    bundled. ``assets``: copy every released model's weights found here there, as ``<name>-<version>.pt``."""
    models_dir = Path(models_dir)
    old = read_catalogue(models_dir)
    lines = []
    for folder in sorted(p for p in models_dir.iterdir() if (p / CARD_FILE).exists()):
        card, weights = read_card(folder), folder / WEIGHTS_FILE
        if card.sha256 is not None and weights.exists() and sha256_of(weights) != card.sha256:
            raise InputError(f"{weights} does not match the sha256 of its card")
        keep = old.get(card.name)
        if card.sha256 is None or card.name in bundled or (keep is not None and keep.source == BUNDLED):
            source = BUNDLED
        else:
            source = f"{DEFAULT_BASE_URL}/{asset_name(card)}"
        if card.sha256 is None:
            size = 0
        elif weights.exists():
            size = weights.stat().st_size
        elif keep is not None and keep.sha256 == card.sha256:
            size = keep.size  # weights published, not in this tree
        else:
            raise InputError(f"{card.name}: no {WEIGHTS_FILE} in {folder} to measure and the catalogue lacks it")
        if source == BUNDLED and card.sha256 is not None and not weights.exists():
            raise InputError(f"{card.name} is bundled but {weights} is missing")
        lines.append(entry_for(card, size, source))
        if assets is not None and source != BUNDLED and weights.exists():
            Path(assets).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, Path(assets) / asset_name(card))
    path = models_dir / CATALOGUE_FILE
    text = ",\n".join("    " + json.dumps(asdict(line)) for line in lines)
    path.write_text(f'{{\n  "format": {CATALOGUE_FORMAT},\n  "models": [\n{text}\n  ]\n}}\n')
    return path


# Finding and downloading -------------------------------------------------------------------------------------------

def is_complete(folder: Path, sha256: str | None) -> bool:
    """Whether ``folder`` holds the card with this sha256 and its weights (written only after they were verified)."""
    try:
        return (folder / WEIGHTS_FILE).exists() and read_card(folder).sha256 == sha256
    except InputError:
        return False


def is_intact(folder: Path) -> bool:
    """Whether ``folder`` holds a card and weights that match it (any version)."""
    try:
        card = read_card(folder)
        return card.sha256 is not None and sha256_of(folder / WEIGHTS_FILE) == card.sha256
    except (InputError, OSError):
        return False


def installed_copy(folder: Path, card: ModelCard, progress: ProgressCallback | None = None) -> Path:
    """The folder with the weights of ``card`` (read from ``folder``, which lacks them): the user folder's copy,
    downloaded there first if missing or of another version. If that download fails, an intact installed copy of
    another version is used with a warning; else the InputError says why."""
    entry = read_catalogue().get(card.name)
    if entry is None or entry.sha256 != card.sha256 or entry.url is None:
        raise InputError(f"model bundle {card.name} has no {WEIGHTS_FILE} in {folder}")
    target = bundle.user_models_dir() / card.name
    if target != folder and is_complete(target, card.sha256):
        return target
    try:
        return download(entry, folder / CARD_FILE, progress)
    except InputError as error:
        if target != folder and is_intact(target):
            log.warning("%s; using the installed version %s of %s", error, read_card(target).version, card.name)
            return target
        raise


def pending_download(model: str | Path) -> Entry | None:
    """The catalogue entry of ``model`` when its weights are neither in its bundle folder nor installed in the user
    model folder yet, so loading it would download them first; None when it loads from local files (or when the
    catalogue cannot fetch it: loading it then gives :func:`installed_copy`'s error). Reads cards only."""
    folder = bundle.resolve_bundle_path(model)
    card = read_card(folder)
    if card.sha256 is None or (folder / WEIGHTS_FILE).exists():
        return None
    entry = read_catalogue().get(card.name)
    if entry is None or entry.sha256 != card.sha256 or entry.url is None:
        return None
    installed = bundle.user_models_dir() / card.name
    return None if installed != folder and is_complete(installed, card.sha256) else entry


def user_dir() -> Path:
    """The user folder, created if missing; an InputError if it cannot be written."""
    folder = bundle.user_models_dir()
    try:
        make_writable_folder(folder)
    except OSError as error:
        raise InputError(f"cannot write the model folder {folder} ({error.strerror or error}); "
                         f"set MAD_USER_MODELS_DIR to a writable folder") from None
    return folder


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One process at a time (several ranks of a cohort run may fetch the same model); no lock without fcntl."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def swap_in(staging: Path, target: Path) -> None:
    """Make the complete ``staging`` folder ``target``, replacing any older version only once the new one is whole."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def download(entry: Entry, card_path: Path, progress: ProgressCallback | None = None) -> Path:
    """Download ``entry``'s weights into the user folder as ``<name>/`` with a copy of ``card_path``; resumes a
    partial download, checks the sha256 before anything is moved into place."""
    url = entry.url
    user = user_dir()
    target, staging = user / entry.name, user / f".{entry.name}-{entry.version}.download"
    with locked(user / f".{entry.name}.lock"):
        if is_complete(target, entry.sha256):  # another process fetched it meanwhile
            return target
        staging.mkdir(exist_ok=True)
        for leftover in (staging / CARD_FILE, staging / WEIGHTS_FILE):
            leftover.unlink(missing_ok=True)
        part = staging / (WEIGHTS_FILE + ".part")
        try:
            _fetch(entry, url, part, progress)
        except InputError:
            if not part.exists():  # nothing to resume: leave no trace
                staging.rmdir()
            raise
        digest = sha256_of(part)
        if digest != entry.sha256:
            shutil.rmtree(staging)
            raise InputError(f"could not download model {entry.name} from {url}: the file's sha256 {digest[:16]}… "
                             f"differs from the catalogue's {entry.sha256[:16]}…; {_INSTALL_HINT}")
        os.replace(part, staging / WEIGHTS_FILE)
        shutil.copyfile(card_path, staging / CARD_FILE)
        swap_in(staging, target)
    return target


def _fetch(entry: Entry, url: str, part: Path, progress: ProgressCallback | None) -> None:
    """``entry.size`` bytes from ``url`` into ``part``, continuing a partial file with a Range request."""
    def failure(reason: str) -> InputError:
        return InputError(f"could not download model {entry.name} from {url}: {reason}; {_INSTALL_HINT}")

    have = part.stat().st_size if part.exists() else 0
    if have > entry.size:
        part.unlink()
        have = 0
    if have == entry.size:
        return  # whole already; the sha256 decides
    headers = {"User-Agent": "mad-detect", **({"Range": f"bytes={have}-"} if have else {})}
    stage, megabytes = f"downloading {entry.name} {entry.version}", f"{entry.size / 1e6:.1f}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as response:
            resumed = have and response.status == 206
            done = have if resumed else 0
            with open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(min(done / entry.size, 1.0), f"{stage} ({done / 1e6:.1f} of {megabytes} MB)")
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the partial file does not fit the server's: start over next time
            part.unlink(missing_ok=True)
        raise failure(f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise failure(f"the server is unreachable ({error.reason})") from None
    except (OSError, http.client.HTTPException) as error:
        got = part.stat().st_size if part.exists() else 0
        raise failure(f"the transfer broke after {got} of {entry.size} bytes ({type(error).__name__}: "
                      f"{str(error)[:80]}); run again to resume") from None
    got = part.stat().st_size
    if got < entry.size:
        raise failure(f"the server sent {got} of {entry.size} bytes; run again to resume")


def main(argv: list[str] | None = None) -> int:
    """(Maintainers) ``python -m MedicalAnomalyDetectionLib.catalogue``: rewrite catalogue.json from the cards."""
    parser = argparse.ArgumentParser(prog="python -m MedicalAnomalyDetectionLib.catalogue", description=main.__doc__)
    parser.add_argument("--models-dir", type=Path, default=None, help="default: the bundled models folder")
    parser.add_argument("--bundle", nargs="+", default=[], metavar="NAME",
                        help="new models whose weights ship inside the package (default: released)")
    parser.add_argument("--assets", type=Path, metavar="DIR",
                        help="copy the released models' weights here as <name>-<version>.pt, for the release")
    args = parser.parse_args(argv)
    try:
        path = write_catalogue(args.models_dir or bundle.bundled_models_dir(), tuple(args.bundle), args.assets)
    except InputError as error:
        print(f"catalogue: error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

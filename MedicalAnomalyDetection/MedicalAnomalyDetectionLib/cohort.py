"""Many volumes with one model: the cohort's volumes (files, folders of volumes, CSV lists), running them with the
model built once while a thread reads and prepares the next volume, and the cohort table (one row per volume).

A volume whose outputs are complete (its report is written last) is skipped unless asked to overwrite; a volume that
fails gets a row saying why and the cohort goes on."""

from __future__ import annotations

import csv
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from .brain_extraction import mask_file
from .bundle import Bundle
from .errors import InputError
from .inference import StagedVolume, score_staged, stage_volume
from .methods import AnomalyMethod
from .modality import modality_warning
from .operating_point import OperatingPoint
from .outputs import OutputPaths, detection_report, finished_report, write_detection
from .volume_io import read_volume, write_outputs

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
T = TypeVar("T")
S = TypeVar("S")


@dataclass(frozen=True)
class CohortItem:
    """One volume of a cohort and where its outputs go."""

    name: str  # the volume's name in the cohort table
    input: Path
    brain_mask: str  # "auto", "none" or a brain mask file on the input's grid
    outputs: OutputPaths
    extra: dict = field(default_factory=dict, compare=False)  # report fields besides the usual ones

    @property
    def inputs(self) -> tuple[Path, ...]:
        """The files this volume reads (outputs must never overwrite them)."""
        given = mask_file(self.brain_mask)
        return (self.input,) if given is None else (self.input, given)


@dataclass
class Row:
    """One line of the cohort table. ``status``: "done" (run now), "skipped" (complete earlier outputs) or "failed"."""

    volume: str
    input: str
    status: str
    volume_score: float | None = None
    flagged_slices: int | None = None
    anomalous_voxels: int | None = None
    region_count: int | None = None
    regions_ml: float | None = None
    seconds: float | None = None
    error: str = ""
    output: str = ""

    @classmethod
    def from_report(cls, item: CohortItem, report: dict, status: str) -> "Row":
        return cls(volume=item.name, input=str(item.input), status=status, volume_score=report["volume_score"],
                   flagged_slices=report.get("flagged_slices"), anomalous_voxels=report.get("anomalous_voxels"),
                   region_count=report.get("region_count"), regions_ml=report.get("regions_ml"),
                   seconds=report.get("seconds"), output=str(item.outputs.folder))


TABLE_COLUMNS = tuple(Row.__dataclass_fields__)


def volume_name(path: Path) -> str:
    """A volume file's name without its extension (``case.nii.gz`` -> ``case``); a folder's name as it is."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))


def is_cohort_source(path: Path) -> bool:
    """True for what names several volumes: a CSV file, or a folder holding volume files (not a DICOM series)."""
    return path.suffix.lower() == ".csv" or (path.is_dir() and bool(_volume_files(path)))


def _resolved(text: str, base: Path) -> Path:
    path = Path(text.strip()).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


@dataclass(frozen=True)
class ListedVolume:
    """One volume of a cohort listing, with its brain mask and output folder where the listing names them."""

    image: Path
    brain_mask: Path | None = None
    output_dir: str = ""  # as written in a CSV (relative to the run's output folder), "" when not given


def _read_csv(path: Path) -> list[ListedVolume]:
    """Rows ``input[,brain_mask][,output_dir]`` (an optional header row starts with ``input``); relative inputs and
    masks are taken from the CSV's folder."""
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the cohort CSV {path}: {error}") from None
    if rows and rows[0][0].strip().lower() == "input":
        rows = rows[1:]
    listed = []
    for number, row in enumerate(rows, start=1):
        if len(row) > 3 or not row[0].strip():
            raise InputError(f"{path}, row {number}: expected input[,brain_mask][,output_dir], got {row}")
        cells = [cell.strip() for cell in row] + [""] * (3 - len(row))
        listed.append(ListedVolume(_resolved(cells[0], path.parent),
                                   _resolved(cells[1], path.parent) if cells[1] else None, cells[2]))
    return listed


def list_volumes(inputs: Iterable[Path]) -> list[ListedVolume]:
    """The volumes ``inputs`` name: volume files, DICOM series folders, folders of volume files, CSV lists."""
    listed: list[ListedVolume] = []
    for source in map(Path, inputs):
        if source.suffix.lower() == ".csv":
            listed += _read_csv(source)
        else:
            listed += [ListedVolume(image.resolve())
                       for image in (_volume_files(source) if is_cohort_source(source) else [source])]
    if not listed:
        raise InputError("the cohort holds no volumes")
    return listed


def distinct_names(paths: list[Path]) -> list[str]:
    """A name per path: its volume name, or, where several paths share one (``p07/flair.nii.gz``,
    ``p19/flair.nii.gz``), the fewest parent folders that tell them apart joined to it (``p07_flair``,
    ``p19_flair``). The same path twice keeps its plain name (the caller refuses it)."""
    names = [volume_name(path) for path in paths]
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    for name, indices in groups.items():
        folders = [paths[i].parent.parts for i in indices]
        if len(indices) == 1 or len(set(folders)) == 1:
            continue
        depth = next(k for k in range(1, max(map(len, folders)) + 1)
                     if len({parts[-k:] for parts in folders}) == len(set(folders)))
        for i, parts in zip(indices, folders):
            names[i] = "_".join((*parts[-depth:], name))
    return names


def items_from_inputs(inputs: Iterable[Path], output_dir: Path, masking: str) -> list[CohortItem]:
    """The cohort named by ``inputs`` (see :func:`list_volumes`), each volume's outputs in its own folder under
    ``output_dir`` named as in :func:`distinct_names` (or the CSV's output_dir, relative to it); volumes without a
    brain mask get ``masking``."""
    output_dir = Path(output_dir).resolve()
    listed = list_volumes(inputs)
    names = distinct_names([v.image for v in listed])
    return check_unique([CohortItem(name, v.image, str(v.brain_mask) if v.brain_mask else masking,
                                    OutputPaths(_resolved(v.output_dir, output_dir) if v.output_dir
                                                else output_dir / name))
                         for name, v in zip(names, listed)])


def check_unique(items: list[CohortItem]) -> list[CohortItem]:
    """``items``, or an InputError naming two volumes whose outputs would land on the same files."""
    seen: dict[Path, CohortItem] = {}
    for item in items:
        other = seen.setdefault(item.outputs.report_path, item)
        if other is not item:
            raise InputError(f"{other.input} and {item.input} would write the same outputs ({item.outputs.folder}); "
                             "give each its own output_dir in a CSV list")
    return items


def ahead(items: Iterable[T], work: Callable[[T], S], depth: int) -> Iterator[tuple[T, Callable[[], S]]]:
    """Yield each item with a call that returns ``work(item)`` (or raises what it raised), while a thread does the
    work of up to ``depth`` following items. ``depth`` 0 works in the caller's thread when the call is made."""
    if depth == 0:
        for item in items:
            yield item, partial(work, item)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mad-prefetch")
    try:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(work, item)))
            if len(pending) > depth:
                first, future = pending.popleft()
                yield first, future.result
        while pending:
            first, future = pending.popleft()
            yield first, future.result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stage(item: CohortItem, bundle: Bundle, method: AnomalyMethod) -> StagedVolume:
    image = read_volume(item.input)
    given = mask_file(item.brain_mask)
    mask = read_volume(given) if given else None
    return stage_volume(image, bundle, mask, method.device, "auto" if given else item.brain_mask)


def _failure(error: Exception) -> str:
    if isinstance(error, InputError):
        return str(error)
    log.warning("unexpected error", exc_info=error)
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".strip()


def run_cohort(items: list[CohortItem], bundle: Bundle, method: AnomalyMethod, point: OperatingPoint,
               batch_size: int = 16,
               overwrite: bool = False, prefetch: int = 1, on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Run ``method`` over ``items`` (in order; ``prefetch`` volumes read and prepared ahead by a thread) and return
    one row per item. ``on_row`` is told of each row as it is made."""
    rows: dict[int, Row] = {}

    def record(index: int, row: Row) -> None:
        rows[index] = row
        if on_row is not None:
            on_row(row)

    todo = []
    for index, item in enumerate(items):
        try:
            report = None if overwrite else finished_report(item.outputs, bundle, item.input, point)
        except InputError as error:
            record(index, Row(item.name, str(item.input), "failed", error=str(error)))
            continue
        if report is None:
            todo.append((index, item))
        else:
            record(index, Row.from_report(item, report, "skipped"))
    for (index, item), staged in ahead(todo, lambda pair: _stage(pair[1], bundle, method), prefetch):
        try:
            result = score_staged(staged(), bundle, method, point, batch_size)
            warnings = [w for w in (modality_warning(item.input.name, bundle.card.modality),) if w]
            for warning in warnings:
                log.warning(warning)
            report = detection_report(result, bundle, item.input, warnings, item.extra)
            write_detection(result, report, item.outputs, item.inputs)
            del result
            record(index, Row.from_report(item, report, "done"))
        except Exception as error:  # noqa: BLE001 - one volume's failure must not end the cohort
            record(index, Row(item.name, str(item.input), "failed", error=_failure(error)))
    return [rows[index] for index in range(len(items))]


def write_table(rows: list[Row], path: Path, inputs: tuple[Path, ...] = ()) -> None:
    """The cohort table (tab-separated for a ``.tsv`` path, else CSV; "n/a" for missing values in a TSV, as BIDS
    asks), written atomically by ``write_outputs``; overwriting any of ``inputs`` (a CSV list) is refused."""
    tsv = path.suffix == ".tsv"
    missing = "n/a" if tsv else ""

    def write(target: Path) -> None:
        with open(target, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t" if tsv else ",", lineterminator="\n")
            writer.writerow(TABLE_COLUMNS)
            for row in rows:
                writer.writerow([missing if value is None or value == "" else value for value in asdict(row).values()])

    write_outputs(path.parent, {path.name: write}, inputs)


def cohort_summary(rows: list[Row], seconds: float) -> dict:
    """Counts by status, wall-clock seconds and volumes run per minute."""
    counts = {status: sum(row.status == status for row in rows) for status in ("done", "skipped", "failed")}
    return {"volumes": len(rows), **counts, "seconds": round(seconds, 1),
            "volumes_per_minute": round(60 * counts["done"] / seconds, 2) if seconds > 0 else None}


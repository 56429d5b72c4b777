"""The files ``mad-detect`` writes for one volume and its report. They are written through
:func:`~.volume_io.write_outputs` (temporary names, then renamed) with the report last, and an earlier report is
removed first: a report on disk means the outputs beside it are complete, so a cohort can skip that volume."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import SimpleITK as sitk

from .bundle import Bundle
from .errors import InputError
from .findings import Region, find_regions, write_regions
from .findings import summary as regions_summary
from .inference import Detection
from .operating_point import OperatingPoint
from .volume_io import write_image, write_outputs


@dataclass(frozen=True)
class OutputPaths:
    """Where one volume's outputs go: one folder and the file names in it."""

    folder: Path
    anomaly_map: str = "anomaly_map.nii.gz"
    label_map: str = "anomaly_label.nii.gz"
    brain_mask: str = "brain_mask.nii.gz"
    slice_scores: str = "slice_scores.csv"  # .csv or .tsv: slice_index, score
    regions: str = "regions.csv"  # .csv or .tsv: the findings (findings.COLUMNS)
    report: str = "report.json"

    @property
    def report_path(self) -> Path:
        return self.folder / self.report

    @property
    def files(self) -> tuple[Path, ...]:
        names = (self.anomaly_map, self.label_map, self.brain_mask, self.slice_scores, self.regions, self.report)
        return tuple(self.folder / name for name in names)


def detection_report(result: Detection, bundle: Bundle, source: Path | str, warnings: list[str],
                     extra: dict | None = None) -> dict:
    """What ``report.json`` says about one run (``extra`` fields appended), its findings included."""
    slice_threshold = bundle.card.thresholds.get("slice")
    regions = find_regions(result.label_map, result.anomaly_map, result.slice_axis)
    return {"input": str(source), "model": result.model, "model_version": bundle.card.version,
            "volume_score": result.volume_score, "slice_threshold": slice_threshold,
            "flagged_slices": result.flagged_slices(slice_threshold), "threshold": result.threshold,
            "operating_point": result.operating_point,
            "masking": result.brain.how, "slice_axis": result.slice_axis,
            "most_anomalous_slice": result.most_anomalous_slice,
            "anomalous_voxels": int(sitk.GetArrayViewFromImage(result.label_map).sum()),
            **regions_summary(regions), "regions": [asdict(region) for region in regions],
            "device": result.device, "seconds": round(result.seconds, 3), "warnings": [*warnings, *result.warnings],
            **(extra or {})}


def _write_slice_scores(result: Detection, path: Path, delimiter: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(["slice_index", "score"])
        for index, score in sorted(zip(result.slice_index.tolist(), result.slice_scores.tolist())):
            writer.writerow([index, f"{score:.6g}"])


def write_detection(result: Detection, report: dict, paths: OutputPaths, inputs: tuple[Path, ...] = ()) -> None:
    """Write the map, label map, brain mask, slice scores, findings (``report["regions"]``) and ``report`` of one run
    (the folder is created)."""
    try:
        paths.folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"output folder is not writable: {paths.folder} ({error.strerror})") from None
    paths.report_path.unlink(missing_ok=True)
    delimiter = "\t" if paths.slice_scores.endswith(".tsv") else ","
    regions = [Region(**region) for region in report["regions"]]
    write_outputs(paths.folder, {
        paths.anomaly_map: lambda path: write_image(result.anomaly_map, path),
        paths.label_map: lambda path: write_image(result.label_map, path),
        paths.brain_mask: lambda path: write_image(result.brain.mask, path),
        paths.slice_scores: lambda path: _write_slice_scores(result, path, delimiter),
        paths.regions: lambda path: write_regions(regions, path, "\t" if paths.regions.endswith(".tsv") else ","),
        paths.report: lambda path: path.write_text(json.dumps(report, indent=2) + "\n")}, inputs)


def finished_report(paths: OutputPaths, bundle: Bundle, source: Path, point: OperatingPoint) -> dict | None:
    """The report of complete earlier outputs of ``bundle`` at operating ``point`` for ``source``, or None when there
    are none (or they are incomplete or unreadable). Outputs of another model, model version, input or operating
    point (or given threshold) there are an InputError: nothing is overwritten, or kept, silently."""
    model = bundle.card.name
    try:
        report = json.loads(paths.report_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(report, dict) or "volume_score" not in report:
        return None
    if report.get("model") != model or Path(str(report.get("input", ""))).resolve() != Path(source).resolve():
        raise InputError(f"{paths.report_path} holds outputs of model {report.get('model')} for "
                         f"{report.get('input')}; pass --overwrite or another output folder")
    same_threshold = point.preset is None or math.isclose(float(report.get("threshold", "nan")), point.preset,
                                                          rel_tol=1e-6)
    if report.get("model_version") != bundle.card.version or report.get("operating_point") != point.name \
            or not same_threshold:
        wanted = point.name if point.preset is None else f"{point.name} threshold {point.preset:.6g}"
        raise InputError(f"{paths.report_path} was made with {model} {report.get('model_version')} at the "
                         f"{report.get('operating_point', 'fixed')} threshold {report.get('threshold')}, not "
                         f"{bundle.card.version} at the {wanted}; pass --overwrite or another output folder")
    return report if all(path.is_file() for path in paths.files) else None

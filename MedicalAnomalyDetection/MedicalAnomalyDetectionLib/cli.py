"""``mad-detect``: run a model bundle on a volume file and write the map, label map, slice scores and a report.

Exit status 0 on success; on failure 1 (bad input) or 2 (usage), with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import SimpleITK as sitk

from .brain_extraction import MASKING_MODES
from .bundle import load_bundle
from .errors import InputError
from .inference import detect
from .volume_io import read_volume, write_image

OUTPUTS = ("anomaly_map.nii.gz", "anomaly_label.nii.gz", "brain_mask.nii.gz", "slice_scores.csv", "report.json")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mad-detect", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="volume file (NIfTI, NRRD, MHA) or DICOM series folder")
    parser.add_argument("--model", required=True, help="bundled model name or path to a model bundle folder")
    parser.add_argument("--output-dir", required=True, type=Path, help="folder for the outputs (created if missing)")
    parser.add_argument("--brain-mask", default="auto", metavar="auto|none|FILE",
                        help="auto (default): the foreground of a skull-stripped input, else deepbet's brain "
                             "extraction; none: the foreground mask; FILE: a brain mask on the input's grid")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threshold", type=float, help="pixel threshold (default: the model's calibrated one)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="slices per network batch")
    return parser


def _check_output_dir(folder: Path, inputs: tuple[Path, ...]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".mad-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InputError(f"output folder is not writable: {folder} ({error.strerror})") from None
    for name in OUTPUTS:
        if any((folder / name).resolve() == p.resolve() for p in inputs):
            raise InputError(f"output {folder / name} would overwrite an input")


def run(args: argparse.Namespace) -> dict:
    """Do what the command line asks; returns the report written to report.json."""
    mask_file = args.brain_mask if args.brain_mask not in MASKING_MODES else None
    inputs = tuple(Path(p) for p in (args.input, mask_file) if p)
    bundle = load_bundle(args.model)
    image = read_volume(args.input)
    mask = read_volume(mask_file) if mask_file else None
    _check_output_dir(args.output_dir, inputs)

    def progress(fraction: float, stage: str) -> None:
        print(f"\r[{fraction:4.0%}] {stage:<32}", end="", file=sys.stderr, flush=True)

    result = detect(image, bundle, brain_mask=mask, device=args.device, threshold=args.threshold,
                    batch_size=args.batch_size, progress=progress,
                    masking=args.brain_mask if mask_file is None else "auto")
    print(file=sys.stderr)
    out = args.output_dir
    write_image(result.anomaly_map, out / "anomaly_map.nii.gz", inputs)
    write_image(result.label_map, out / "anomaly_label.nii.gz", inputs)
    write_image(result.brain.mask, out / "brain_mask.nii.gz", inputs)
    with open(out / "slice_scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slice_index", "score"])
        for index, score in sorted(zip(result.slice_index.tolist(), result.slice_scores.tolist())):
            writer.writerow([index, f"{score:.6g}"])
    slice_threshold = bundle.card.thresholds.get("slice")
    report = {"input": str(args.input), "model": result.model, "model_version": bundle.card.version,
              "volume_score": result.volume_score, "slice_threshold": slice_threshold,
              "flagged_slices": result.flagged_slices(slice_threshold), "threshold": result.threshold,
              "masking": result.brain.how, "slice_axis": result.slice_axis, "most_anomalous_slice": result.most_anomalous_slice,
              "anomalous_voxels": int(sitk.GetArrayViewFromImage(result.label_map).sum()),
              "device": result.device, "seconds": round(result.seconds, 3)}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="mad-detect: %(message)s")
    args = _parser().parse_args(argv)
    try:
        report = run(args)
    except InputError as error:
        print(f"\nmad-detect: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({k: report[k] for k in ("volume_score", "threshold", "seconds", "device")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

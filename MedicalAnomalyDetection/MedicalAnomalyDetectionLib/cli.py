"""``mad-detect``: run a model bundle on a volume file and write the map, label map, slice scores and a report.

Exit status 0 on success; on failure 1 (bad input) or 2 (usage), with a one-line reason on stderr. Several inputs,
a folder of volumes, a CSV list or ``--bids ROOT`` run as a cohort (``cohort_command``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import cohort_command
from .brain_extraction import MASKING_MODES
from .bundle import load_bundle
from .errors import InputError
from .inference import detect
from .modality import modality_warning
from .outputs import OutputPaths, detection_report, write_detection
from .volume_io import read_volume, refuse_overwriting



def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mad-detect", description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="*", help="volume file (NIfTI, NRRD, MHA) or DICOM series folder; several, "
                                                 "a folder of volumes or a CSV list run as a cohort")
    parser.add_argument("--series", metavar="UID", help="the DICOM series to read from a folder that holds several")
    parser.add_argument("--model", required=True, help="bundled model name or path to a model bundle folder")
    parser.add_argument("--output-dir", type=Path, help="folder for the outputs (created if missing)")
    parser.add_argument("--brain-mask", default="auto", metavar="auto|none|FILE",
                        help="auto (default): the foreground of a skull-stripped input, else deepbet's brain "
                             "extraction; none: the foreground mask; FILE: a brain mask on the input's grid")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threshold", type=float, help="pixel threshold (default: the model's calibrated one)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="slices per network batch")
    cohort_command.add_arguments(parser)
    return parser


def _check_output_dir(folder: Path, inputs: tuple[Path, ...]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".mad-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InputError(f"output folder is not writable: {folder} ({error.strerror})") from None
    refuse_overwriting(OutputPaths(folder).files, inputs)


def run(args: argparse.Namespace) -> dict:
    """Do what the command line asks; returns the report written to report.json."""
    mask_file = args.brain_mask if args.brain_mask not in MASKING_MODES else None
    inputs = tuple(Path(p) for p in (args.input, mask_file) if p)
    bundle = load_bundle(args.model)
    image = read_volume(args.input, args.series)
    mask = read_volume(mask_file) if mask_file else None
    _check_output_dir(args.output_dir, inputs)
    warnings = [w for w in (modality_warning(Path(args.input).name, bundle.card.modality),) if w]
    for warning in warnings:
        logging.getLogger("mad-detect").warning(warning)

    def progress(fraction: float, stage: str) -> None:
        print(f"\r[{fraction:4.0%}] {stage:<32}", end="", file=sys.stderr, flush=True)

    result = detect(image, bundle, brain_mask=mask, device=args.device, threshold=args.threshold,
                    batch_size=args.batch_size, progress=progress,
                    masking=args.brain_mask if mask_file is None else "auto")
    print(file=sys.stderr)
    report = detection_report(result, bundle, args.input, warnings)
    write_detection(result, report, OutputPaths(args.output_dir), inputs)
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="mad-detect: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.input and args.bids is None:
        parser.error("give an INPUT (or several, a folder of volumes, a CSV list) or --bids ROOT")
    try:
        if cohort_command.wanted(args):
            return cohort_command.main(args)
        if args.output_dir is None:
            parser.error("the following arguments are required: --output-dir")
        args.input = args.input[0]
        report = run(args)
    except InputError as error:
        print(f"\nmad-detect: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({k: report[k] for k in ("volume_score", "threshold", "seconds", "device")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

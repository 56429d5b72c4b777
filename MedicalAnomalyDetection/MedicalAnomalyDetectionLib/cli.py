"""``mad-detect``: run a model bundle on a volume file and write the map, label map, slice scores and a report.

Exit status 0 on success; on failure 1 (bad input) or 2 (usage), with a one-line reason on stderr. Several inputs,
a folder of volumes, a CSV list or ``--bids ROOT`` run as a cohort (``cohort_command``). ``--list-models``,
``--install-model`` and ``--remove-model`` manage the models (``catalogue``) and need no input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import cohort_command, installation
from .brain_extraction import mask_file
from .bundle import DEFAULT_MODEL, bundle_folder, load_bundle
from .errors import InputError
from .inference import detect
from .methods.runtime import add_device_argument
from .modality import modality_warning
from .operating_point import MODES, PER_SCAN
from .outputs import OutputPaths, detection_report, write_detection
from .volume_io import make_writable_folder, read_volume, refuse_overwriting



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
    parser.add_argument("--model", help="model name (see --list-models) or path to a model bundle folder (default: "
                                         f"{DEFAULT_MODEL})")
    parser.add_argument("--output-dir", type=Path, help="folder for the outputs (created if missing)")
    parser.add_argument("--brain-mask", default="auto", metavar="auto|none|FILE",
                        help="auto (default): the foreground of a skull-stripped input, else deepbet's brain "
                             "extraction; none: the foreground mask; FILE: a brain mask on the input's grid")
    add_device_argument(parser)
    parser.add_argument("--threshold", type=float, help="pixel threshold (default: from --operating-point)")
    parser.add_argument("--operating-point", choices=MODES, default=PER_SCAN,
                        help="per-scan (default): the threshold comes from the volume's own map, as the model card "
                             "says; fixed: the card's calibrated threshold for every volume")
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="slices per network batch")
    cohort_command.add_arguments(parser)
    group = parser.add_argument_group("models (each alone, without inputs; see docs/models.md)")
    models = group.add_mutually_exclusive_group()
    models.add_argument("--list-models", action="store_true", help="every model, its licence and where it is")
    models.add_argument("--install-model", metavar="NAME|PATH", help="download a catalogued model, or install a "
                        "bundle folder or a catalogued model's weights file, into the user model folder")
    models.add_argument("--remove-model", metavar="NAME", help="delete a model from the user model folder")
    return parser


def _download_progress(fraction: float, stage: str) -> None:
    print(f"\r[{fraction:4.0%}] {stage:<48}", end="\n" if fraction >= 1 else "", file=sys.stderr, flush=True)


def _manage_models(args: argparse.Namespace) -> int:
    if args.list_models:
        print(installation.format_rows(installation.model_rows()))
    elif args.install_model:
        folder = installation.install_model(args.install_model, progress=_download_progress)
        print(f"installed {folder.name} in {folder}")
    else:
        print(f"removed {installation.remove_model(args.remove_model)}")
    return 0


def _check_output_dir(folder: Path, inputs: tuple[Path, ...]) -> None:
    try:
        make_writable_folder(folder)
    except OSError as error:
        raise InputError(f"output folder is not writable: {folder} ({error.strerror})") from None
    refuse_overwriting(OutputPaths(folder).files, inputs)


def run(args: argparse.Namespace) -> dict:
    """Do what the command line asks; returns the report written to report.json."""
    given = mask_file(args.brain_mask)
    inputs = tuple(Path(p) for p in (args.input, given) if p)
    bundle = load_bundle(args.model)
    image = read_volume(args.input, args.series)
    mask = read_volume(given) if given else None
    _check_output_dir(args.output_dir, inputs)
    warnings = [w for w in (modality_warning(Path(args.input).name, bundle.card.modality),) if w]
    for warning in warnings:
        logging.getLogger("mad-detect").warning(warning)

    def progress(fraction: float, stage: str) -> None:
        print(f"\r[{fraction:4.0%}] {stage:<32}", end="", file=sys.stderr, flush=True)

    result = detect(image, bundle, brain_mask=mask, device=args.device, threshold=args.threshold,
                    batch_size=args.batch_size, progress=progress,
                    masking=args.brain_mask if given is None else "auto", operating=args.operating_point)
    print(file=sys.stderr)
    report = detection_report(result, bundle, args.input, warnings)
    write_detection(result, report, OutputPaths(args.output_dir), inputs)
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="mad-detect: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    managing = args.list_models or args.install_model or args.remove_model
    if managing and (args.input or args.model or args.bids is not None):
        parser.error("--list-models, --install-model and --remove-model take no inputs and no --model")
    if not managing and not args.input and args.bids is None:
        parser.error("give an INPUT (or several, a folder of volumes, a CSV list) or --bids ROOT")
    if not managing:
        args.model = args.model or DEFAULT_MODEL
    try:
        if managing:
            return _manage_models(args)
        cohort = cohort_command.wanted(args)
        if not cohort and args.output_dir is None:
            parser.error("the following arguments are required: --output-dir")
        bundle_folder(args.model, progress=_download_progress)  # a catalogued model's weights, downloaded if missing
        if cohort:
            return cohort_command.main(args)
        args.input = args.input[0]
        report = run(args)
    except InputError as error:
        print(f"\nmad-detect: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({k: report[k] for k in ("volume_score", "threshold", "operating_point", "region_count", "seconds",
                                             "device")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

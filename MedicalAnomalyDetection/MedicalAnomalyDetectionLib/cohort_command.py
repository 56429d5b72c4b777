"""``mad-detect``'s cohort mode: several inputs, a folder of volumes, a CSV list or a BIDS dataset (``--bids``) in
one process with the model built once; under ``torchrun`` the cohort is shared between the processes and one merged
cohort table is written. Prints a JSON summary; exit status 1 when any volume failed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from .bids import PIPELINE, SUFFIX_FOR_MODALITY, derivative_outputs, find_images, sidecar_fields, \
    write_dataset_description
from .brain_extraction import mask_file
from .bundle import Bundle, load_bundle
from .cohort import CohortItem, Row, check_unique, cohort_summary, is_cohort_source, items_from_inputs, run_cohort, \
    write_table
from .distributed import World, barrier, gather, launched_world, process_group
from .errors import InputError
from .methods import build_method
from .methods.runtime import choose_device
from .operating_point import operating_point
from .volume_io import refuse_overwriting


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of cohort mode (added to ``mad-detect``'s)."""
    group = parser.add_argument_group("cohorts (several inputs, a folder of volumes, a CSV list, or --bids)")
    group.add_argument("--bids", type=Path, metavar="ROOT", help="run on the anatomical images of a BIDS dataset; "
                       "outputs go to ROOT/derivatives/medical-anomaly-detection unless --output-dir")
    group.add_argument("--suffix", help="BIDS suffix of the images (default: the model's modality, e.g. FLAIR)")
    group.add_argument("--subject", nargs="+", default=[], help="BIDS subjects to run (default: all)")
    group.add_argument("--session", nargs="+", default=[], help="BIDS sessions to run (default: all)")
    group.add_argument("--overwrite", action="store_true", help="run volumes whose outputs are complete again")
    group.add_argument("--prefetch", type=int, default=1, choices=range(0, 9), metavar="N",
                       help="volumes read and prepared ahead by a thread while one is scored (0-8, default 1)")


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command line asks for cohort mode (a single volume file or DICOM folder does not)."""
    return (args.bids is not None or len(args.input) > 1 or any(is_cohort_source(Path(p)) for p in args.input)
            or launched_world().size > 1)


def _items(args: argparse.Namespace, bundle: Bundle) -> tuple[list[CohortItem], Path]:
    """The cohort's volumes and the path of its table."""
    masking = args.brain_mask
    if args.series is not None:
        raise InputError("--series picks the DICOM series of one input; a cohort takes volume files, folders or CSVs")
    if mask_file(masking) is not None:
        raise InputError("--brain-mask FILE names one volume's mask; give a cohort's masks in a CSV "
                         "(input,brain_mask[,output_dir]) or use --brain-mask auto|none")
    if args.bids is None:
        if any((args.suffix, args.subject, args.session)):
            raise InputError("--suffix, --subject and --session filter a BIDS dataset: they need --bids")
        if not args.input:
            raise InputError("no inputs: give volume files, folders, CSV lists or --bids ROOT")
        if args.output_dir is None:
            raise InputError("--output-dir is needed (one folder per volume goes into it)")
        return items_from_inputs(args.input, args.output_dir, masking), Path(args.output_dir) / "cohort.csv"
    if args.input:
        raise InputError("give either input volumes or --bids ROOT, not both")
    suffix = args.suffix or SUFFIX_FOR_MODALITY.get(bundle.card.modality)
    if suffix is None:
        raise InputError(f"model {bundle.card.name} is for {bundle.card.modality!r}; say which images with --suffix")
    out = Path(args.output_dir or args.bids / "derivatives" / PIPELINE)
    images = find_images(args.bids, suffix, tuple(args.subject), tuple(args.session))
    items = [CohortItem(image.stem, image.path.resolve(), masking, derivative_outputs(image, out),
                        sidecar_fields(image, args.bids)) for image in images]
    return check_unique(items), out / "cohort.tsv"


def _reporter(total: int, world: World) -> tuple[Callable[[Row], None], Callable[[], None]]:
    """(on_row, close): a progress bar on a terminal (tqdm, when installed), else one line per volume."""
    if sys.stderr.isatty() and world.main:
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=total, unit="volume", file=sys.stderr)

            def advance(row: Row) -> None:
                bar.update()
                bar.set_postfix_str(f"{row.volume}: {row.status}")
            return advance, bar.close
    prefix = f"rank {world.rank}: " if world.size > 1 else ""
    done = [0]

    def line(row: Row) -> None:
        done[0] += 1
        what = row.error if row.status == "failed" else f"score {row.volume_score:.4g}, {row.seconds} s"
        print(f"mad-detect: {prefix}[{done[0]}/{total}] {row.volume}: {row.status} ({what})", file=sys.stderr,
              flush=True)
    return line, lambda: None


def main(args: argparse.Namespace) -> int:
    """Run the cohort the command line names; 0 when every volume is done or skipped, 1 otherwise."""
    world = launched_world()
    bundle = load_bundle(args.model)
    point = operating_point(bundle.card, args.threshold, args.operating_point)
    items, table = _items(args, bundle)
    sources = tuple(path for item in items for path in item.inputs) + tuple(Path(source) for source in args.input)
    refuse_overwriting([table], sources)  # e.g. a CSV list named cohort.csv in the output folder
    with process_group(world, choose_device(args.device), backend="gloo") as device:
        method = build_method(bundle, device)
        if world.main:
            try:
                table.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InputError(f"cannot create the output folder {table.parent}: {error.strerror}") from None
            if args.bids is not None:
                write_dataset_description(table.parent, args.bids, bundle.card.name)
        shard = world.shard(items)
        on_row, close = _reporter(len(shard), world)
        started = time.perf_counter()
        rows = run_cohort(shard, bundle, method, point, args.batch_size, args.overwrite, args.prefetch, on_row)
        seconds = time.perf_counter() - started
        close()
        shards = gather((rows, seconds), world)
        merged = [shards[index % world.size][0][index // world.size] for index in range(len(items))]
        if world.main:
            write_table(merged, table, inputs=sources)
            summary = cohort_summary(merged, max(shard_seconds for _, shard_seconds in shards))
            print(json.dumps({**summary, "processes": world.size, "table": str(table)}))
        barrier(world)
    return 1 if any(row.status == "failed" for row in merged) else 0

"""``python -m training {prepare,fit,export,calibrate,evaluate,compare,fewshot,backbone,bench,render,table}``: from healthy data to a calibrated,
evaluated model bundle. Each command prints what it wrote; the model card records the commands that made it."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods.runtime import add_device_argument
from MedicalAnomalyDetectionLib.operating_point import PER_SCAN_MEANING
from MedicalAnomalyDetectionLib.scoring import PIXEL_FPR, SLICE_FPR, SLICE_SCORES

from .recipes import recipe, recipe_names
from .recipes.base import RunOptions
from .recipes.settings import add_settings_arguments, settings_from_args


def cmd_prepare(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.card import Preprocessing

    from .cohorts import bids_cases, listed_cases, refuse_other_contrast
    from .datasets import dataset_info, load_cases
    from .slices import gather_healthy

    pre = Preprocessing(plane=args.plane, size=_size(args.size), spacing_mm=args.spacing,
                        normalisation=args.normalisation)
    if args.dataset is not None:
        info = dataset_info(args.dataset)
        cases = load_cases(args.dataset, args.split, args.modality)
        name, split, licence = info["name"], args.split, info["licence"]
    elif args.bids is not None:
        cases, description = bids_cases(args.bids, args.modality, args.suffix, tuple(args.subject),
                                        tuple(args.session))
        name, split, licence = cases[0].dataset, "all", args.licence or description.get("License", "not stated")
    else:
        cases = listed_cases(args.volumes)
        name, split, licence = cases[0].dataset, "all", args.licence or "not stated"
    refuse_other_contrast(cases, args.modality)
    source = {"dataset": name, "split": split, "modality": args.modality, "licence": licence, "cases": len(cases)}
    data = gather_healthy(cases, pre, source, every=args.every, masking=args.brain_mask)
    data.save(args.out)
    print(f"{args.out}: {len(data.slices)} healthy slices from {len(cases)} cases of {name} {split}")


def cmd_fit(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.distributed import launched_world

    from .slice_set import SliceSet

    method = recipe(args.method)
    if method.needs_data and args.data is None:
        raise InputError(f"fit --method {args.method} needs --data (a slice cache written by `prepare`)")
    data = SliceSet.load(args.data) if method.needs_data else None
    settings = settings_from_args(method.Settings, args)
    run = RunOptions(**{name: getattr(args, name) for name in method.run_options})
    args.run_dir.mkdir(parents=True, exist_ok=True)
    record = method.fit(settings, data, args.run_dir, run, args.command_line)
    if launched_world().main:  # under torchrun, one process writes the record
        record.save(args.run_dir)
        print(f"{args.run_dir}: {record.method}, {record.done}/{record.planned} on {record.data}, {record.seconds} s")


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_run

    export_run(args.run, args.name, args.out, args.command_line)
    print(f"{args.out}: bundle {args.name} written")


def cmd_configure(args: argparse.Namespace) -> None:
    from .configure import configure, parse_settings

    folder = configure(args.model, parse_settings(args.set), args.out, args.command_line)
    print(f"{folder}: inference settings changed; calibrate and evaluate it again")


def _load_for_scoring(args: argparse.Namespace, ablation: str | None = None):
    """The bundle as stored, and its method built on the chosen device (as the named ablation variant, if asked)."""
    from MedicalAnomalyDetectionLib.bundle import load_bundle
    from MedicalAnomalyDetectionLib.methods import applicable_ablations, build_method, with_overrides
    from MedicalAnomalyDetectionLib.methods.runtime import choose_device

    bundle = load_bundle(args.model)
    scored = bundle
    if ablation is not None:
        ablations = applicable_ablations(bundle)
        if ablation not in ablations:
            raise InputError(f"model {bundle.card.name} has no ablation {ablation!r} that changes it "
                             f"(it has: {', '.join(ablations) or 'none'})")
        scored = with_overrides(bundle, ablations[ablation])
    return bundle, build_method(scored, choose_device(args.device))


def cmd_calibrate(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.bundle import write_card

    from .datasets import load_cases
    from .evaluation import calibrate, score_split

    bundle, method = _load_for_scoring(args)
    if args.slice_score is not None:  # the slice threshold is calibrated on the slice score the card will use
        bundle.card.slice_score = args.slice_score
    sources = {}
    for dataset in args.dataset:
        cases = load_cases(dataset, args.split, bundle.card.modality)
        sources[f"{cases[0].dataset} {args.split}"] = score_split(method, bundle, cases, masking=args.brain_mask)
    thresholds = calibrate(sources, args.pixel_fpr, args.slice_fpr)
    thresholds.update(calibrated_on=", ".join(sources), masking=args.brain_mask, command=args.command_line)
    if args.per_scan_k is not None:
        thresholds.update(per_scan_k=args.per_scan_k, per_scan_meaning=PER_SCAN_MEANING)
    bundle.card.thresholds = thresholds
    write_card(bundle.path, bundle.card)
    print(json.dumps(thresholds, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .datasets import load_cases
    from .evaluation import add_metrics, metrics_key, score_split, summarise, write_report

    bundle, method = _load_for_scoring(args, args.ablation)
    cases = load_cases(args.dataset, args.split, bundle.card.modality)
    scores = score_split(method, bundle, cases, masking=args.brain_mask)
    summary = summarise(scores, bundle.card.thresholds.get("pixel"))
    dataset = cases[0].dataset
    summary.update(dataset=dataset, split=args.split, modality=bundle.card.modality, command=args.command_line)
    write_report(scores, summary, f"{bundle.card.name} on {dataset} {args.split}", args.out)
    if args.update_card:
        add_metrics(bundle.path, {metrics_key(dataset, args.split, args.ablation, args.brain_mask): summary})
    print(json.dumps(summary, indent=2))


def cmd_bench(args: argparse.Namespace) -> None:
    if args.record:  # a result measured elsewhere (e.g. on a GPU machine) by this same command
        result = json.loads(args.record.read_text())
    else:
        import tempfile

        from .bench import cohort_memory, cohort_throughput, run_benchmark

        result = run_benchmark(args.model, args.device, args.repeats)
        with tempfile.TemporaryDirectory() as folder:
            if args.cohort:
                result["cohort"] = cohort_throughput(args.model, args.device, args.cohort, Path(folder) / "cohort")
            if args.memory_after:
                result["cohort_memory"] = cohort_memory(args.model, args.device, args.memory_after,
                                                        Path(folder) / "memory")
        result["command"] = args.command_line
    print(json.dumps(result, indent=2))
    if args.update_card:
        from MedicalAnomalyDetectionLib.bundle import load_bundle, write_card

        bundle = load_bundle(args.model)
        bundle.card.benchmark[result["device_name"]] = result
        write_card(bundle.path, bundle.card)


def cmd_render(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.volume_io import read_volume as read

    from .render import render_result

    report_path = args.result_dir / "report.json"
    if not report_path.is_file():
        raise InputError(f"{args.result_dir} holds no report.json: give the --output-dir of a finished mad-detect run")
    report = json.loads(report_path.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render_result(read(args.input), read(args.result_dir / "anomaly_map.nii.gz"),
                  read(args.result_dir / "anomaly_label.nii.gz"), args.out,
                  truth=read(args.truth) if args.truth else None,
                  title=f"{report['model']}: heat map, label outline (cyan)"
                        + (", reference lesions (green)" if args.truth else ""))
    print(f"{args.out} written")


def cmd_compare(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.methods.runtime import choose_device

    from .compare import compare, rewrite_table

    if args.table_only:
        rewrite_table(args.models, args.datasets, args.out)
        print(f"{args.out}: comparison.md rewritten from comparison.json")
        return
    if args.data_root is None:
        raise InputError("compare needs --data-root (the folder holding the datasets), unless --table-only")
    compare(args.models, args.data_root, args.datasets, args.out, choose_device(args.device), args.update_cards,
            args.command_line, args.reports)
    print(f"{args.out}: comparison.md, comparison.json and figures written")


def cmd_backbone(args: argparse.Namespace) -> None:
    from .backbone_ssl import pretrain_backbone

    if args.out.suffix == ".json":
        raise InputError("--out names the weights file (e.g. resnet18.pt); its record goes beside it as .json")
    from .slice_set import SliceSet

    record = pretrain_backbone([SliceSet.load(p) for p in args.data], args.steps, args.batch_size, args.out,
                               args.seed)
    record["command"] = args.command_line
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.out}: ResNet18 trunk, {record['seconds']} s")


def cmd_fewshot(args: argparse.Namespace) -> None:
    from .fewshot_eval import run_fewshot_table
    from .slice_set import SliceSet

    run_fewshot_table(recipe(args.method), SliceSet.load(args.data), args.data_root, args.datasets, args.shots,
                      args.draws, args.ablation_draws, args.ablation_dataset, args.baselines, args.out, {"steps": args.steps},
                      args.command_line)
    print(f"{args.out}: results.json and table.md written")


def cmd_table(args: argparse.Namespace) -> None:
    from .results_table import markdown_table

    print(markdown_table())


def _size(values: list[int]) -> tuple[int, int]:
    if len(values) not in (1, 2):
        raise InputError(f"--size takes one (square) or two (rows, columns) numbers, not {len(values)}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _add_preprocessing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plane", default="axial", choices=("axial", "coronal", "sagittal"))
    parser.add_argument("--size", type=int, nargs="+", default=[128], help="slice size in pixels: N or H W")
    parser.add_argument("--spacing", type=float, default=1.875, help="in-plane spacing in mm")


def _add_masking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brain-mask", default="dataset", choices=("dataset", "auto", "none"),
                        help="maps inside the dataset's brain masks, or masked as mad-detect does without one "
                             "(auto: brain extraction of skull-on scans; none: foreground)")


def _add_fit_parser(sub, method: str) -> None:
    """``fit``: the options common to every method, then those of ``method``'s recipe."""
    p = sub.add_parser("fit", help="train a method (its options: fit --method NAME --help)")
    p.add_argument("--method", default="patchgan", choices=recipe_names(), help="which method to train")
    p.add_argument("--data", type=Path, help=".npz slice cache written by `prepare`")
    p.add_argument("--run-dir", type=Path, required=True)
    chosen = recipe(method)
    add_settings_arguments(p.add_argument_group(f"{method}: {chosen.help}"), chosen.Settings)
    add_settings_arguments(p.add_argument_group("how the fit runs"), RunOptions, only=chosen.run_options)
    p.set_defaults(func=cmd_fit)


def build_parser(method: str = "patchgan") -> argparse.ArgumentParser:
    """The command line; ``fit`` carries the options of ``method``'s recipe."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="cache a healthy cohort's healthy slices (core preprocessing) as .npz")
    cohort = p.add_mutually_exclusive_group(required=True)
    cohort.add_argument("--dataset", type=Path, help="a dataset in the layout of ../shared/data (with --split)")
    cohort.add_argument("--bids", type=Path, metavar="ROOT",
                        help="a BIDS dataset (with --suffix, --subject, --session)")
    cohort.add_argument("--volumes", type=Path, metavar="FOLDER|CSV",
                        help="a folder of volume files, or a CSV list: input[,brain_mask] per row")
    p.add_argument("--split", default="train", help="--dataset: which split")
    p.add_argument("--suffix", help="--bids: the images' suffix (default: the modality's, e.g. FLAIR)")
    p.add_argument("--subject", nargs="+", default=[], help="--bids: these subjects only")
    p.add_argument("--session", nargs="+", default=[], help="--bids: these sessions only")
    p.add_argument("--brain-mask", default="auto", choices=("auto", "none"),
                   help="volumes without a brain mask are masked as mad-detect masks them (default auto)")
    p.add_argument("--licence", help="the cohort's licence, for the model card (default: BIDS License, else "
                                     "'not stated')")
    p.add_argument("--modality", required=True)
    p.add_argument("--normalisation", default="percentile", choices=("percentile", "zscore"))
    p.add_argument("--every", type=int, default=1, help="keep every n-th healthy slice of each case")
    p.add_argument("--out", type=Path, required=True)
    _add_preprocessing(p)
    p.set_defaults(func=cmd_prepare)

    _add_fit_parser(sub, method)

    p = sub.add_parser("configure", help="change a bundle's inference settings (same weights, new version)")
    p.add_argument("--model", required=True, help="bundle name or folder")
    p.add_argument("--set", action="append", required=True, metavar="KEY=VALUE",
                   help="a card hyper-parameter and its new (JSON) value; repeatable")
    p.add_argument("--out", type=Path, help="write a new bundle there (default: change the bundle in place)")
    p.set_defaults(func=cmd_configure)

    p = sub.add_parser("export", help="write a model bundle (weights + card) from a run folder of `fit`")
    p.add_argument("--run", type=Path, required=True, help="run folder of `fit`")
    p.add_argument("--name", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_export)

    for name, func, help_text in (("calibrate", cmd_calibrate, "choose thresholds on healthy validation data"),
                                  ("evaluate", cmd_evaluate, "measure a bundle on a split, each case run as "
                                                             "mad-detect runs it; write metrics and plots")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model", required=True, help="bundle name or folder")
        p.add_argument("--dataset", type=Path, required=True, nargs="+" if name == "calibrate" else None,
                       help="dataset folder" + ("s (each weighs the same)" if name == "calibrate" else ""))
        p.add_argument("--split", default="val" if name == "calibrate" else "test")
        add_device_argument(p)
        _add_masking(p)
        p.set_defaults(func=func)
        if name == "calibrate":
            p.add_argument("--pixel-fpr", type=float, default=PIXEL_FPR,
                           help="share of healthy brain voxels flagged (default: docs/analysis/operating_points.md)")
            p.add_argument("--slice-fpr", type=float, default=SLICE_FPR, help="share of healthy slices flagged")
            p.add_argument("--per-scan-k", type=float,
                           help="k of the per-scan operating point (operating_point.py), chosen on validation "
                                "(docs/analysis/per_scan_threshold.md); without it the model labels at the fixed "
                                "threshold")
            p.add_argument("--slice-score", choices=SLICE_SCORES,
                           help="the card's slice score: the method's own (Eq. 5 for patch ranking) or peak-z "
                                "(docs/analysis/slice_scores.md); default: keep the card's")
        else:
            p.add_argument("--out", type=Path, required=True)
            p.add_argument("--ablation", help="score as this ablation variant of the method (e.g. 'ranking off', "
                                              "the paper's Table 2)")
            p.add_argument("--update-card", action="store_true", help="store the metrics in the model card")

    p = sub.add_parser("bench", help="time a bundle on a 240x240x155 volume")
    p.add_argument("--model", required=True)
    add_device_argument(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--update-card", action="store_true")
    p.add_argument("--record", type=Path, help="store this saved bench JSON in the card instead of measuring")
    p.add_argument("--cohort", type=int, metavar="N", help="also volumes/min of one mad-detect for N volumes "
                                                            "against one mad-detect per volume")
    p.add_argument("--memory-after", type=int, nargs="+", metavar="N",
                   help="also the memory of one cohort run after these many volumes (e.g. 1 10 50)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("render", help="picture of a mad-detect result (slices, heat map, outlines) as PNG")
    p.add_argument("--input", type=Path, required=True, help="the volume mad-detect ran on")
    p.add_argument("--result-dir", type=Path, required=True, help="mad-detect's --output-dir")
    p.add_argument("--truth", type=Path, help="reference lesion mask to outline too")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("compare", help="every model on the same test splits: table (md, json), ROC and score plots")
    p.add_argument("--models", nargs="+", required=True, help="bundle names or folders")
    p.add_argument("--data-root", type=Path, help="folder holding the datasets (required unless --table-only)")
    p.add_argument("--datasets", nargs="+", default=["lgg_flair", "brats2013", "mslub"])
    p.add_argument("--out", type=Path, required=True)
    add_device_argument(p)
    p.add_argument("--update-cards", action="store_true", help="store each model's metrics in its card")
    p.add_argument("--reports", type=Path, help="also write each model's per-case report under this folder")
    p.add_argument("--table-only", action="store_true",
                   help="score nothing: rewrite OUT/comparison.md from OUT/comparison.json and the models' cards")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("backbone", help="self-supervised (SimCLR) ResNet18 trunk on healthy slices, for PathoSCOPE")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="slice caches of training splits")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_backbone)

    p = sub.add_parser("fewshot", help="PathoSCOPE's Table 1 and 3: K shots x random draws on the test splits")
    p.add_argument("--method", default="pathoscope", choices=recipe_names(few_shot=True))
    p.add_argument("--data", type=Path, required=True, help="slice cache the shots are drawn from")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--datasets", nargs="+", default=["lgg_flair", "brats2013", "mslub"])
    p.add_argument("--shots", type=int, nargs="+", default=[2, 4, 6, 8])
    p.add_argument("--draws", type=int, default=3, help="random draws of the shots per K")
    p.add_argument("--ablation-draws", type=int, default=2, help="draws per K for the L_LC / L_GC ablation")
    p.add_argument("--ablation-dataset", default="brats2013")
    p.add_argument("--baselines", nargs="*", default=["patchgan-flair", "intensity-flair"])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_fewshot)

    p = sub.add_parser("table", help="markdown table of the metrics stored in the bundled model cards (with the "
                                     "position-only slice AUROC and per-case Dice beside each row)")
    p.set_defaults(func=cmd_table)
    return parser


def _chosen_method(argv: list[str]) -> str:
    """The ``--method`` of a ``fit`` command line (patchgan without one), so its recipe's options can be added."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--method", default="patchgan")
    method = probe.parse_known_args(argv)[0].method
    return method if method in recipe_names() else "patchgan"  # an unknown one is refused by the full parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_chosen_method(argv) if argv[:1] == ["fit"] else "patchgan").parse_args(argv)
    args.command_line = "python -m training " + shlex.join(argv)
    try:
        args.func(args)
    except InputError as error:
        print(f"training: error: {error}", file=sys.stderr)
        return 1
    return 0

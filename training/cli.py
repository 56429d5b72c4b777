"""``python -m training {prepare,fit,export,calibrate,evaluate,compare,fewshot,backbone,bench,render,table}``: from healthy data to a calibrated,
evaluated model bundle. Each command prints what it wrote; the model card records the commands that made it."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from MedicalAnomalyDetectionLib.errors import InputError

def _command_line() -> str:
    return "python -m training " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_prepare(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.card import Preprocessing

    from .datasets import dataset_info, load_cases
    from .slices import gather_healthy

    pre = Preprocessing(plane=args.plane, size=(args.size, args.size), spacing_mm=args.spacing,
                        normalisation=args.normalisation)
    info = dataset_info(args.dataset)
    cases = load_cases(args.dataset, args.split, args.modality)
    source = {"dataset": info["name"], "split": args.split, "modality": args.modality, "licence": info["licence"],
              "cases": len(cases)}
    data = gather_healthy(cases, pre, source, every=args.every)
    data.save(args.out)
    print(f"{args.out}: {len(data.slices)} healthy slices from {len(cases)} cases of {info['name']} {args.split}")


def cmd_fit(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.methods.alocc import ALOCCConfig
    from MedicalAnomalyDetectionLib.methods.autoencoder import AutoencoderConfig
    from MedicalAnomalyDetectionLib.methods.ocsvm import OCSVMConfig
    from MedicalAnomalyDetectionLib.methods.patchgan import PatchGANConfig
    from MedicalAnomalyDetectionLib.methods.runtime import choose_device
    from MedicalAnomalyDetectionLib.scoring import PatchRanking

    from .baselines_fit import alocc_trainee, autoencoder_trainee, fit_ocsvm
    from .loop import FitSettings, train
    from .patchgan_fit import patchgan_trainee
    from .slice_set import SliceSet

    data = SliceSet.load(args.data)
    settings = FitSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed)
    device = choose_device(args.device)
    autoencoder = AutoencoderConfig(widths=tuple(args.widths), sign=args.sign)
    if args.method == "pathoscope":
        record = fit_pathoscope_run(args, data)
    elif args.method == "ocsvm":
        record = fit_ocsvm(data, OCSVMConfig(patch=args.hole, patch_grid=min(8, args.hole)), args.run_dir,
                           seed=args.seed)
    else:
        trainee = {
            "patchgan": lambda: patchgan_trainee(
                PatchGANConfig(widths=tuple(args.widths), hole=args.hole, sign=args.sign,
                               ranking=PatchRanking(patch=args.hole, stride=args.hole // 2),
                               uncertainty=args.uncertainty), settings, device),
            "ae": lambda: autoencoder_trainee(autoencoder, settings, device, data.slices.shape[1:]),
            "alocc": lambda: alocc_trainee(ALOCCConfig(reconstructor=autoencoder), settings, device,
                                           data.slices.shape[1:]),
        }[args.method]()
        record = train(trainee, data, settings, args.run_dir, device, resume=args.resume, stop_after=args.stop_after)
    record.update(source=data.source, command=_command_line())
    (args.run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.run_dir}: {args.method}, {record['epochs_done']}/{record['settings']['epochs']} epochs on "
          f"{record['slices']} slices, {record['seconds']} s")


def pathoscope_settings(args: argparse.Namespace):
    """The few-shot settings the ``fit`` flags ask for."""
    from MedicalAnomalyDetectionLib.fewshot.fit import FewShotSettings

    return FewShotSettings(steps=args.steps, seed=args.seed, eta=args.eta,
                           local_contrastive=not args.no_local_contrastive,
                           global_contrastive=not args.no_global_contrastive)


def fit_pathoscope_run(args: argparse.Namespace, data) -> dict:
    from MedicalAnomalyDetectionLib.methods.pathoscope import PathoSCOPEConfig

    from .pathoscope_fit import fit_shots, save_run

    config = PathoSCOPEConfig(backbone=args.backbone.name if args.backbone else f"random (seed {args.seed})")
    settings = pathoscope_settings(args)
    result, drawn = fit_shots(data, args.shots, config, settings, args.slices_per_shot, args.backbone,
                              args.textures)
    return save_run(result, drawn, config, settings, args.run_dir)


# The modules of a run's checkpoint that go into a bundle, per method (discriminators only where scoring uses them).
EXPORTED_MODULES = {"patchgan": ("reconstructor",), "ae": ("autoencoder",), "alocc": ("reconstructor", "discriminator"),
                    "ocsvm": ("slice_svm", "patch_svm"),
                    "pathoscope": ("embedder", "adapter", "discriminator")}


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from MedicalAnomalyDetectionLib import __version__
    from MedicalAnomalyDetectionLib.bundle import save_bundle
    from MedicalAnomalyDetectionLib.card import ModelCard, Preprocessing
    from MedicalAnomalyDetectionLib.scoring import PatchRanking

    if args.method == "intensity":
        pre = Preprocessing(plane=args.plane, size=(args.size, args.size), spacing_mm=args.spacing,
                            normalisation="zscore", clip=(-10.0, 10.0))  # z-scores: clip only absurd values
        card = ModelCard(name=args.name, method="intensity", version=__version__, modality=args.modality,
                         preprocessing=pre,
                         hyperparameters={"sign": args.sign, "ranking": PatchRanking().to_dict()},
                         training={"data": "none (no training: robust z-score of the intensity)",
                                   "command": _command_line()},
                         licence={"weights": "none", "non_commercial": False})
        save_bundle(args.out, card, None)
    else:
        run = json.loads((args.run / "run.json").read_text())
        checkpoint = torch.load(args.run / "checkpoint.pt", map_location="cpu", weights_only=True)
        state = {f"{name}.{key}": value for name in EXPORTED_MODULES[run["method"]]
                 for key, value in checkpoint["modules"][name].items()}
        source = run["source"]
        non_commercial = "NC" in source["licence"]
        card = ModelCard(
            name=args.name, method=run["method"], version=__version__, modality=source["modality"],
            preprocessing=Preprocessing.from_dict(source["preprocessing"]), hyperparameters=run["config"],
            training={"data": f"{source['dataset']} {source['split']} ({run['cases']} cases, "
                              f"{run['slices']} healthy slices)"
                              + (f"; reference cases {', '.join(run['shots'])}" if "shots" in run else ""),
                      "fit_command": run["command"], "export_command": _command_line(),
                      "epochs": int(checkpoint["epoch"]), "seed": run["settings"]["seed"],
                      "settings": run["settings"], "seconds": run["seconds"], "device": run["device_name"],
                      "final_losses": run["history"][-1]},
            licence={"weights": "CC BY-NC-SA 4.0 (derived from non-commercial training data)" if non_commercial
                     else "derived from " + source["licence"], "training_data": source["licence"],
                     "non_commercial": non_commercial})
        save_bundle(args.out, card, state)
    print(f"{args.out}: bundle {args.name} written")


def _load_for_scoring(args: argparse.Namespace, ranking: str = "card"):
    """The bundle as stored, and its method built on the chosen device (patch ranking forced on/off if asked)."""
    from MedicalAnomalyDetectionLib.bundle import load_bundle
    from MedicalAnomalyDetectionLib.methods import build_method
    from MedicalAnomalyDetectionLib.methods.runtime import choose_device

    from .evaluation import with_ranking

    bundle = load_bundle(args.model)
    scored = bundle if ranking == "card" else with_ranking(bundle, ranking == "on")
    return bundle, build_method(scored, choose_device(args.device))


def cmd_calibrate(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.bundle import write_card

    from .datasets import load_cases
    from .evaluation import calibrate, score_split

    bundle, method = _load_for_scoring(args)
    cases = load_cases(args.dataset, args.split, bundle.card.modality)
    scores = score_split(method, bundle, cases)
    thresholds = calibrate(scores, args.pixel_fpr, args.slice_fpr)
    thresholds.update(calibrated_on=f"{cases[0].dataset} {args.split}", command=_command_line())
    bundle.card.thresholds = thresholds
    write_card(bundle.path, bundle.card)
    print(json.dumps(thresholds, indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.bundle import write_card

    from .datasets import load_cases
    from .evaluation import score_split, summarise, write_report

    bundle, method = _load_for_scoring(args, args.ranking)
    cases = load_cases(args.dataset, args.split, bundle.card.modality)
    scores = score_split(method, bundle, cases)
    summary = summarise(scores, bundle.card.thresholds.get("pixel"))
    dataset = cases[0].dataset
    summary.update(dataset=dataset, split=args.split, modality=bundle.card.modality, command=_command_line())
    write_report(scores, summary, f"{bundle.card.name} on {dataset} {args.split}", args.out)
    if args.update_card:
        key = f"{dataset}/{args.split}" + ("" if args.ranking == "card" else f" (ranking {args.ranking})")
        bundle.card.metrics[key] = summary
        write_card(bundle.path, bundle.card)
    print(json.dumps(summary, indent=2))


def cmd_bench(args: argparse.Namespace) -> None:
    if args.record:  # a result measured elsewhere (e.g. on a GPU machine) by this same command
        result = json.loads(args.record.read_text())
    else:
        from .bench import run_benchmark

        result = run_benchmark(args.model, args.device, args.repeats)
    print(json.dumps(result, indent=2))
    if args.update_card:
        from MedicalAnomalyDetectionLib.bundle import load_bundle, write_card

        bundle = load_bundle(args.model)
        bundle.card.benchmark[result["device_name"]] = result
        write_card(bundle.path, bundle.card)


def cmd_render(args: argparse.Namespace) -> None:
    import SimpleITK as sitk

    from .render import render_result

    read = lambda path: sitk.ReadImage(str(path))  # noqa: E731
    report = json.loads((args.result_dir / "report.json").read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render_result(read(args.input), read(args.result_dir / "anomaly_map.nii.gz"),
                  read(args.result_dir / "anomaly_label.nii.gz"), args.out,
                  truth=read(args.truth) if args.truth else None,
                  title=f"{report['model']}: heat map, label outline (cyan)"
                        + (", reference lesions (green)" if args.truth else ""))
    print(f"{args.out} written")


def cmd_compare(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.methods.runtime import choose_device

    from .compare import compare

    compare(args.models, args.data_root, args.datasets, args.out, choose_device(args.device), args.update_cards,
            _command_line())
    print(f"{args.out}: comparison.md, comparison.json and figures written")


def cmd_backbone(args: argparse.Namespace) -> None:
    from .backbone_ssl import pretrain_backbone

    if args.out.suffix == ".json":
        raise InputError("--out names the weights file (e.g. resnet18.pt); its record goes beside it as .json")
    from .slice_set import SliceSet

    record = pretrain_backbone([SliceSet.load(p) for p in args.data], args.steps, args.batch_size, args.out,
                               args.seed)
    record["command"] = _command_line()
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.out}: ResNet18 trunk, {record['seconds']} s")


def cmd_fewshot(args: argparse.Namespace) -> None:
    from MedicalAnomalyDetectionLib.fewshot.fit import FewShotSettings

    from .fewshot_eval import run_fewshot_table
    from .slice_set import SliceSet

    run_fewshot_table(SliceSet.load(args.data), args.data_root, args.datasets, args.shots, args.draws,
                      args.ablation_draws, args.ablation_dataset, args.baselines, args.out,
                      FewShotSettings(steps=args.steps), _command_line())
    print(f"{args.out}: results.json and table.md written")


def cmd_table(args: argparse.Namespace) -> None:
    from .results_table import markdown_table

    print(markdown_table())


def _add_preprocessing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plane", default="axial", choices=("axial", "coronal", "sagittal"))
    parser.add_argument("--size", type=int, default=128, help="in-plane size in pixels (square)")
    parser.add_argument("--spacing", type=float, default=1.875, help="in-plane spacing in mm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="cache a split's healthy slices (core preprocessing) as .npz")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--modality", required=True)
    p.add_argument("--normalisation", default="percentile", choices=("percentile", "zscore"))
    p.add_argument("--every", type=int, default=1, help="keep every n-th healthy slice of each case")
    p.add_argument("--out", type=Path, required=True)
    _add_preprocessing(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("fit", help="train a method on a prepared slice cache")
    p.add_argument("--method", default="patchgan", choices=("patchgan", "ae", "alocc", "ocsvm", "pathoscope"))
    p.add_argument("--data", type=Path, required=True, help=".npz written by `prepare`")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128], help="network widths per level")
    p.add_argument("--hole", type=int, default=32,
                   help="patch size in pixels: Patch-GAN holes and ranking patches, OCSVM patches")
    p.add_argument("--sign", default="positive", choices=("positive", "negative", "absolute"))
    p.add_argument("--uncertainty", action="store_true",
                   help="add the log-variance head; maps become residual / predicted sigma")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    fewshot = p.add_argument_group("pathoscope (few-shot; runs on the CPU; of the options above it uses only "
                                   "--data, --run-dir and --seed)")
    fewshot.add_argument("--shots", type=int, default=8, help="reference cases drawn from the cache (seed: --seed)")
    fewshot.add_argument("--slices-per-shot", type=int, default=0,
                         help="healthy slices per drawn case (0: all; 1: the paper's protocol)")
    fewshot.add_argument("--steps", type=int, default=150, help="training steps of adapter and discriminator")
    fewshot.add_argument("--eta", type=float, default=0.01, help="PiEG perturbation strength")
    fewshot.add_argument("--backbone", type=Path, help="torchvision ResNet18 state dict (default: random init)")
    fewshot.add_argument("--textures", type=Path, help="folder of extra texture images for synthetic lesions")
    fewshot.add_argument("--no-local-contrastive", action="store_true", help="ablation: drop L_LC")
    fewshot.add_argument("--no-global-contrastive", action="store_true", help="ablation: drop L_GC")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument("--stop-after", type=int, help="stop after this many epochs in this session (resume later)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("export", help="write a model bundle (weights + card) from a run, or the intensity baseline's")
    p.add_argument("--method", default="run", choices=("run", "intensity"),
                   help="run: the method of the --run folder; intensity: the weight-free baseline")
    p.add_argument("--run", type=Path, help="run folder of `fit` (learned methods)")
    p.add_argument("--name", required=True)
    p.add_argument("--modality", help="(intensity) modality the bundle is for")
    p.add_argument("--sign", default="positive", choices=("positive", "negative", "absolute"))
    p.add_argument("--out", type=Path, required=True)
    _add_preprocessing(p)
    p.set_defaults(func=cmd_export)

    for name, func, help_text in (("calibrate", cmd_calibrate, "choose thresholds on healthy validation data"),
                                  ("evaluate", cmd_evaluate, "measure a bundle on a split; write metrics and plots")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model", required=True, help="bundle name or folder")
        p.add_argument("--dataset", type=Path, required=True)
        p.add_argument("--split", default="val" if name == "calibrate" else "test")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        p.set_defaults(func=func)
        if name == "calibrate":
            p.add_argument("--pixel-fpr", type=float, default=0.001, help="share of healthy brain pixels flagged")
            p.add_argument("--slice-fpr", type=float, default=0.05, help="share of healthy slices flagged")
        else:
            p.add_argument("--out", type=Path, required=True)
            p.add_argument("--ranking", default="card", choices=("card", "on", "off"),
                           help="override the card's patch ranking (Table 2 ablation)")
            p.add_argument("--update-card", action="store_true", help="store the metrics in the model card")

    p = sub.add_parser("bench", help="time a bundle on a 240x240x155 volume")
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--update-card", action="store_true")
    p.add_argument("--record", type=Path, help="store this saved bench JSON in the card instead of measuring")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("render", help="picture of a mad-detect result (slices, heat map, outlines) as PNG")
    p.add_argument("--input", type=Path, required=True, help="the volume mad-detect ran on")
    p.add_argument("--result-dir", type=Path, required=True, help="mad-detect's --output-dir")
    p.add_argument("--truth", type=Path, help="reference lesion mask to outline too")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("compare", help="every model on the same test splits: table (md, json), ROC and score plots")
    p.add_argument("--models", nargs="+", required=True, help="bundle names or folders")
    p.add_argument("--data-root", type=Path, required=True, help="folder holding the datasets")
    p.add_argument("--datasets", nargs="+", default=["lgg_flair", "brats2013", "mslub"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--update-cards", action="store_true", help="store each model's metrics in its card")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("backbone", help="self-supervised (SimCLR) ResNet18 trunk on healthy slices, for PathoSCOPE")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="slice caches of training splits")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_backbone)

    p = sub.add_parser("fewshot", help="PathoSCOPE's Table 1 and 3: K shots x random draws on the test splits")
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

    p = sub.add_parser("table", help="markdown table of the metrics stored in the bundled model cards")
    p.set_defaults(func=cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as error:
        print(f"training: error: {error}", file=sys.stderr)
        return 1
    return 0

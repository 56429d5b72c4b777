"""SCRPS choices made on validation data only: healthy ixi_t1 val slices, each scored clean and again with synthetic
T1 lesions implanted (there is no T1 lesion validation set; mslub is test only).

    python docs/scrps/scrps_choices.py --model runs/scrps-choices-bundle --data cache/ixi_t1_val_80x64.npz \\
        --out docs/scrps

The lesions mimic MS lesions on T1 (hypointense "black holes"): 1-3 ellipses per slice, radii 1.2-4 px (3-10 mm at
2.4 mm), centred on white matter (brain pixels above the slice's 60th brain percentile, 3 px inside the brain),
darkening the tissue by 25-50 % with a smooth profile; the label is where the darkening exceeds a third of its peak.
Measured per variant: pixel AUROC and best Dice over the brain pixels of the lesioned slices; slice AUROC of the
lesioned against the clean copies (a paired design: no slice-position confound); a volume-level proxy AUROC: each
val case's clean slices against the same slices with the middle third of them (by position) lesioned, a volume
scoring its highest slice (so the hardest healthy slice of a volume competes with its lesions, as in the real
volume-level AUROC); and seconds per slice for the inversion settings (one thread, a batch of 16, no cache).
Written: choices.json and choices.md in ``--out``.

What is chosen here: the number of refinement steps (the fewest whose pixel AUROC and best Dice are within 0.01 of
the best), the network of the map (discriminator, encoder trunk, a random-initialised VGG16, or none: the squared
pixel residual; by pixel AUROC and best Dice) and the slice score (patch ranking with or without dividing by the
slice's diffuse error; by the volume proxy). Only reported (the paper's defaults are kept, scaled to L): K1/K2,
L1/L2, one-stage retrieval, swap off.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "MedicalAnomalyDetection")]

from MedicalAnomalyDetectionLib.bundle import load_bundle  # noqa: E402
from MedicalAnomalyDetectionLib.methods import build_method  # noqa: E402
from MedicalAnomalyDetectionLib.methods.common import smooth  # noqa: E402
from MedicalAnomalyDetectionLib.methods.scrps import InversionCache, SCRPSConfig  # noqa: E402
from MedicalAnomalyDetectionLib.networks.perceptual import EncoderFeatures, VGG16Features  # noqa: E402
from MedicalAnomalyDetectionLib.scoring import MIN_BRAIN_SHARE, slice_scores  # noqa: E402
from training.metrics import auroc_ap, best_dice  # noqa: E402
from training.slice_set import SliceSet  # noqa: E402

STEPS = (20, 10, 5, 0)  # the longest first: the shorter runs are its snapshots


def choose_slices(data: SliceSet, per_case: int) -> np.ndarray:
    """Up to ``per_case`` evenly spaced slices of each case among those with >= 20 % of its largest brain area."""
    chosen = []
    cases = np.array(data.case_ids)
    area = data.masks.sum(axis=(1, 2))
    for case in dict.fromkeys(data.case_ids):
        index = np.flatnonzero(cases == case)
        index = index[area[index] >= MIN_BRAIN_SHARE * area[index].max()]
        chosen.extend(index[np.linspace(0, len(index) - 1, min(per_case, len(index))).round().astype(int)])
    return np.unique(chosen)


def implant_lesions(slices: np.ndarray, masks: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hypointense ellipses in white matter (see the module docstring): (lesioned slices, labels)."""
    rng = np.random.default_rng(seed)
    lesioned, labels = slices.copy(), np.zeros(slices.shape, dtype=bool)
    yy, xx = np.mgrid[:slices.shape[1], :slices.shape[2]]
    inner = F.avg_pool2d(torch.from_numpy(masks.astype(np.float32)).unsqueeze(1), 7, 1, 3,
                         count_include_pad=True)[:, 0].numpy() > 0.999
    for i in range(len(slices)):
        brain = slices[i][masks[i]]
        candidates = np.argwhere(inner[i] & (slices[i] > np.percentile(brain, 60)))
        if len(candidates) == 0:
            candidates = np.argwhere(inner[i] | masks[i])
        darkening = np.zeros(slices.shape[1:])
        for _ in range(rng.integers(1, 4)):
            cy, cx = candidates[rng.integers(len(candidates))]
            ry, rx = rng.uniform(1.2, 4.0, 2)
            angle = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dy * np.cos(angle) + dx * np.sin(angle)) / ry
            v = (-dy * np.sin(angle) + dx * np.cos(angle)) / rx
            profile = np.clip(1 - (u ** 2 + v ** 2), 0, 1) ** 0.5
            darkening = np.maximum(darkening, rng.uniform(0.25, 0.5) * profile)
        darkening *= masks[i]
        lesioned[i] = slices[i] * (1 - darkening)
        labels[i] = darkening > darkening.max() / 3
    return lesioned.astype(np.float32), labels


def score_all(method, x: torch.Tensor, mask: torch.Tensor, residual: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Maps and slice scores of every slice, in batches of 16 (the pipeline's batch)."""
    maps, scores = [], []
    for start in range(0, len(x), 16):
        xb, mb = x[start:start + 16], mask[start:start + 16]
        if residual:  # no network: the squared pixel residual
            image, _ = method.reconstruct(method.invert(xb.unsqueeze(1)))
            brain = mb.float()
            m = smooth((xb - image[:, 0] * brain).square() * brain, brain, method.config.map_smoothing)
            s = slice_scores(m.sqrt(), brain, method.config.ranking)
        else:
            result = method.score(xb, mb)
            m, s = result.maps, result.scores
        maps.append(m.numpy())
        scores.append(s.numpy())
    return np.concatenate(maps), np.concatenate(scores)


def volume_proxy(scores: np.ndarray, cases: np.ndarray) -> float:
    """AUROC of clean 'volumes' (a case's chosen slices) against the same with the middle third lesioned."""
    half = len(scores) // 2
    clean, lesioned = scores[:half], scores[half:]
    negatives, positives = [], []
    for case in dict.fromkeys(cases):
        index = np.flatnonzero(cases == case)  # in slice order
        third = len(index) // 3
        middle = index[third:len(index) - third]
        negatives.append(clean[index].max())
        positives.append(max(clean[np.setdiff1d(index, middle)].max(initial=0), lesioned[middle].max()))
    return auroc_ap(np.r_[np.zeros(len(negatives)), np.ones(len(positives))], np.r_[negatives, positives])["auroc"]


def metrics(maps: np.ndarray, scores: np.ndarray, masks: np.ndarray, labels: np.ndarray, cases: np.ndarray) -> dict:
    half = len(maps) // 2  # clean copies first, lesioned second
    inside, truth = masks[half:], labels[half:]
    pixel = auroc_ap(truth[inside], maps[half:][inside])
    dice, _ = best_dice(truth[inside], maps[half:][inside])
    slice_level = auroc_ap(np.r_[np.zeros(half), np.ones(half)], scores)
    return {"pixel_auroc": round(pixel["auroc"], 4), "pixel_ap": round(pixel["ap"], 4), "best_dice": round(dice, 4),
            "slice_auroc": round(slice_level["auroc"], 4), "volume_proxy_auroc": round(volume_proxy(scores, cases), 4)}


def seconds_per_slice(bundle, x: torch.Tensor, mask: torch.Tensor, steps: int) -> float:
    method = build_method(bundle, torch.device("cpu"))
    method.config = replace(method.config, refine_steps=steps)
    method.score(x[:2], mask[:2])  # warm-up
    started = time.perf_counter()
    method.score(x[:16], mask[:16])
    return round((time.perf_counter() - started) / len(x[:16]), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True, help="slice cache of ixi_t1 val at the model's grid")
    parser.add_argument("--out", type=Path, default=Path("docs/scrps"))
    parser.add_argument("--per-case", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    data = SliceSet.load(args.data)
    index = choose_slices(data, args.per_case)
    cases = np.array(data.case_ids)[index]
    clean = data.slices[index].astype(np.float32)
    masks = data.masks[index]
    lesioned, labels = implant_lesions(clean, masks, args.seed)
    x = torch.from_numpy(np.concatenate([clean, lesioned]))
    mask = torch.from_numpy(np.concatenate([masks, masks]))
    all_labels = np.concatenate([np.zeros_like(labels), labels])
    all_masks = np.concatenate([masks, masks])
    method = build_method(bundle, torch.device("cpu"))
    base = method.config
    cache = InversionCache(snapshots=STEPS)
    method.inversion_cache = cache
    results: dict = {"data": f"{args.data}: {len(index)} ixi_t1 val slices of {len(set(data.case_ids))} cases, "
                             f"each clean and with implanted lesions ({int(labels.sum())} lesion pixels)",
                     "model": str(args.model), "threads": args.threads, "steps": {}, "map": {}, "score": {}, "retrieval": {}}
    started = time.perf_counter()

    def run(name: str, group: str, config: SCRPSConfig, residual: bool = False, map_features=None) -> None:
        method.config, method.map_features = config, map_features
        maps, scores = score_all(method, x, mask, residual)
        results[group][name] = metrics(maps, scores, all_masks, all_labels, cases)
        print(f"{group} {name}: {results[group][name]} ({time.perf_counter() - started:.0f} s)", flush=True)

    for steps in STEPS:
        run(f"{steps} steps", "steps", replace(base, refine_steps=steps))
        results["steps"][f"{steps} steps"]["seconds_per_slice"] = seconds_per_slice(bundle, x, mask, steps)
    best = {k: max(v[k] for v in results["steps"].values()) for k in ("pixel_auroc", "best_dice")}
    holding = [s for s in sorted(STEPS) if results["steps"][f"{s} steps"]["pixel_auroc"] >= best["pixel_auroc"] - 0.01
               and results["steps"][f"{s} steps"]["best_dice"] >= best["best_dice"] - 0.01]
    results["chosen_steps"] = holding[0]
    chosen = replace(base, refine_steps=holding[0])

    encoder_trunk = EncoderFeatures(base.gan, base.encoder_widths, base.encoder_hidden)
    encoder_trunk.stages.load_state_dict(method.encoder.stages.state_dict())
    torch.manual_seed(args.seed)
    networks = {"discriminator (default)": (None, base.taps_for_map), "encoder trunk": (encoder_trunk.eval(), (1, 2, 3)),
                "VGG16, random weights": (VGG16Features().eval(), (2, 3, 4))}
    for name, (network, taps) in networks.items():
        run(name, "map", replace(chosen, map_layers=taps), map_features=network)
    for taps in ((0, 1, 2), (2, 3, 4), (0, 1, 2, 3, 4)):
        run(f"discriminator taps {list(taps)}", "map", replace(chosen, map_layers=taps))
    run("pixel residual (no network)", "map", chosen, residual=True)
    run("slice score: patch ranking (default)", "score", chosen)
    diffuse = replace(chosen, ranking=replace(chosen.ranking, diffuse_normalisation=True))
    run("slice score: patch ranking / diffuse error", "score", diffuse)
    scored = results["score"]
    results["chosen_diffuse_normalisation"] = (scored["slice score: patch ranking / diffuse error"]["volume_proxy_auroc"]
                                               > scored["slice score: patch ranking (default)"]["volume_proxy_auroc"])
    chosen = diffuse if results["chosen_diffuse_normalisation"] else chosen

    variants = {"K1=100, K2=20 (default)": {}, "K1=25, K2=5": {"k1": 25, "k2": 5}, "K1=50, K2=10": {"k1": 50, "k2": 10},
                "one-stage, K2=20": {"retrieval": "one-stage"}}
    variants.update({f"L2={l2}" + (" (swap off)" if l2 == 0 else " (no retrieval)" if l2 == base.gan.num_ws else "")
                     : {"l2": l2} for l2 in (0, 3, 5, base.gan.num_ws - 1, base.gan.num_ws)})
    for name, change in variants.items():
        run(name, "retrieval", replace(chosen, **change))
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "choices.json").write_text(json.dumps(results, indent=2) + "\n")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [f"# SCRPS choices on validation data\n\nMade by `{command}` ({results['seconds']:.0f} s, "
             f"{args.threads} threads). {results['data']}.\n"]
    for group, title in (("steps", "Refinement steps after the encoder"), ("map", f"Map network (at {holding[0]} steps)"),
                         ("score", f"Slice score (at {holding[0]} steps)"),
                         ("retrieval", f"Retrieval and swap (at {holding[0]} steps; reported, not chosen)")):
        keys = list(next(iter(results[group].values())))
        lines += [f"\n## {title}\n", "| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(str(v[k]) for k in keys) + " |" for name, v in results[group].items()]
    lines.append(f"\nChosen: {holding[0]} refinement steps (the fewest within 0.01 pixel AUROC and 0.01 best Dice of "
                 "the best); slice score " + ("divided by the slice's diffuse error" if
                                              results["chosen_diffuse_normalisation"] else "without normalisation")
                 + " (the higher volume proxy AUROC; ties keep the plain patch ranking).\n")
    (args.out / "choices.md").write_text("\n".join(lines))
    print(f"{args.out}/choices.md written")


if __name__ == "__main__":
    main()

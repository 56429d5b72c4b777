"""Slice scores against slice position (issue 19, items 2 and 5), on the validation splits only: how much of a slice
score is where the slice is, and which slice score carries image evidence beyond position, for `patchgan-flair` (the
bundled flagship) and `intensity-flair`.

What is compared (slice AUROC per val source, eligible slices as ``training.evaluation.score_split`` takes them,
abnormal = ``training.slices.lesion_slices``):

* position only, no image content: the slice's brain area (pixels of brain on the 1.875 mm model grid), and
  centrality -|p - 0.5|, p the relative position of the slice within the brain's slab (``slab_position``);
* readings of the Patch-GAN paper's Eq. 5 on the per-patch losses (``scoring.patch_losses``: 32 px patches, stride
  16, >= 50 % brain) of two maps: "learned" (patchgan only: the uncertainty-scaled smoothed residual today's slice
  score is read from) and "map" (the card's anomaly map: for patchgan the learned map combined with the intensity
  prior; for intensity-flair the positive z-score, also what its slice score is read from): top-2 (today's code,
  ``PatchRanking.weights=(1.1, 1.0)``), paper (1.1 for the top patch, 1.0 for every other one, summed over all N),
  plain sum, mean (today's "ranking off") and max patch;
* position-normalised z = (u - mu(p)) / sigma(p), u = log(score + offset), with mu, sigma a cubic / quadratic in p
  ("poly") or 10 bins of p ("bins"), fitted on the healthy slices (``healthy_slices``: lesion-free, >= 1 slice from
  any lesion slice, eligible) of the 52 ``lgg_flair`` TRAIN patients (``fit_curve``);
* region scores from the volume's own map, with the per-volume threshold t_k = med+ + k * 1.4826 MAD+ of the map's
  positive values inside the brain of the eligible slices (``region_scores``, k = 3..6): excess mass, labelled
  volume (mL), peak/t_k and peak z = (peak - med+) / (1.4826 MAD+), peak = the maximum of the map box-smoothed over
  5 px; and the volume labelled at the card's fixed pixel threshold;
* per-volume detrending: the residual of log(score) after a quadratic fit on brain area or on p over the volume's
  eligible slices (``detrended``).

The volume score (max over eligible slices) is not compared: every val volume holds lesions, so volume-level
separation cannot be measured on val.

Run from the repository root. As run for docs/analysis/slice_scores.md: a shared 2-core CPU, one torch thread, about
18 min for the Patch-GAN maps (lgg_flair val 1.5 min, nichart_wmh val 8 min, the healthy slices of the 52 lgg_flair
train patients 8 min; validation cases run every slice holding brain, train cases only their healthy slices), the
intensity maps and all scores in under a minute; maps and per-slice scores are cached under /tmp/slice_scores_cache
(np.savez), so a rerun takes seconds::

    python docs/analysis/slice_scores.py [DATA_DIR] > docs/analysis/slice_scores.md

DATA_DIR defaults to ../shared/data. No test split is read.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.scoring import TRAIN_MIN_BRAIN_SHARE, eligible_slices, patch_losses
from training.datasets import load_cases
from training.evaluation import rate_threshold
from training.metrics import auroc_ap
from training.slices import healthy_slices, lesion_slices, prepare_case

torch.set_num_threads(1)
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data")
CACHE = Path("/tmp/slice_scores_cache")
MODELS = ("patchgan-flair", "intensity-flair")
VAL = (("lgg_flair", "val"), ("nichart_wmh", "val"))
FIT = ("lgg_flair", "train")  # healthy slices of lgg_flair TRAIN: where the per-position reference curves are fitted


# ----------------------------------------------------------------------------------------------------------------
# 1. Maps of every case (cached): the model-grid maps the slice scores are read from.
# ----------------------------------------------------------------------------------------------------------------

_loaded: dict = {}


def _method(model: str):
    if model not in _loaded:
        bundle = load_bundle(model)
        _loaded[model] = (bundle, build_method(bundle, torch.device("cpu")))
    return _loaded[model]


@torch.no_grad()
def _maps(method, slices: np.ndarray, mask: np.ndarray, run: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """"learned": the map today's slice score is read from (patchgan: the uncertainty-scaled, smoothed positive
    residual; intensity: the positive z-score); "map": the card's anomaly map (patchgan: learned map combined with the
    intensity prior; intensity: the same as "learned"). Only the ``run`` slices are run (the rest stay 0)."""
    learned = np.zeros(slices.shape, np.float32)
    combined = np.zeros(slices.shape, np.float32)
    todo = np.flatnonzero(run & mask.any(axis=(1, 2)))
    for start in range(0, len(todo), batch):
        chosen = todo[start:start + batch]
        x = torch.from_numpy(slices[chosen]).float()
        m = torch.from_numpy(mask[chosen]).float()
        if hasattr(method, "reconstruct"):  # patchgan: PatchGAN.score, keeping both maps
            lmap = method.learned_map(x, *method.reconstruct(x), m)
            cmap = method.with_prior(lmap, x, m)
        else:
            lmap = cmap = method.score(x, m).maps
        learned[chosen], combined[chosen] = lmap.numpy(), cmap.numpy()
    return {"learned": learned, "map": combined}


def case_data(model: str, dataset: str, split: str, case) -> dict:
    """The maps of one case on the model grid, with its brain mask and slice labels; cached. Validation cases: every
    slice holding brain is run (as ``score_volume``); the lgg_flair TRAIN cases, used only to fit the per-position
    curves, only their healthy slices (``healthy_slices``: eligible, at least one slice from any lesion slice)."""
    path = CACHE / model / f"{dataset}_{split}_{case.case_id}.npz"
    if not path.exists():
        bundle, method = _method(model)
        prepared = prepare_case(case.read(), bundle.card.preprocessing)  # the dataset's brain mask, as score_split
        run = healthy_slices(prepared) if (dataset, split) == FIT else np.ones(len(prepared.slices), bool)
        maps = _maps(method, prepared.slices, prepared.mask, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, learned=maps["learned"].astype(np.float16), map=maps["map"].astype(np.float16),
                 mask=prepared.mask, lesion=lesion_slices(prepared), healthy=healthy_slices(prepared),
                 slice_mm=prepared.model_grid.GetSpacing()[2],
                 pixel_mm=bundle.card.preprocessing.spacing_mm)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


# ----------------------------------------------------------------------------------------------------------------
# 2. Per-slice scores of a case (cached): position only, Eq. 5 readings, region scores from the volume's own map.
# ----------------------------------------------------------------------------------------------------------------

K_VALUES = (3, 4, 5, 6)  # per-volume threshold t_k = median+ + k * 1.4826 MAD+ of the map's positive brain pixels
PEAK_BOX = 5  # px box the map is smoothed with before its maximum is read ("peak")
SCORES_VERSION = 6


def slab_position(area: np.ndarray) -> np.ndarray:
    """Relative position p in [0, 1] of each slice within the brain's slab: the first to the last slice whose brain
    area is at least TRAIN_MIN_BRAIN_SHARE (5 %) of the largest (ignores specks of mask beyond the brain's ends).
    Model-grid slices are in one anatomical order for every input (``prepare_volume`` orients them), so p = 0 is the
    same end of the brain in every volume."""
    inside = np.flatnonzero(area >= TRAIN_MIN_BRAIN_SHARE * max(1, area.max()))
    first, last = inside[0], inside[-1]
    return np.clip((np.arange(len(area)) - first) / max(1, last - first), 0.0, 1.0)


def eq5_readings(x: np.ndarray, mask: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """The readings of the paper's Eq. 5 on per-patch losses (32 px patches, stride 16, >= 50 % brain, as the card):
    top-2 (today's code: 1.1 L(1) + 1.0 L(2)), paper (1.1 L(1) + 1.0 * every other patch: sum + 0.1 L(1)), plain sum
    (ranking off under the paper's reading), mean (today's ranking off) and max patch."""
    losses, valid = patch_losses(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(mask).float(), 32, 16, 0.5)
    losses = torch.where(valid, losses, torch.zeros_like(losses))
    count = valid.sum(dim=1)
    top = torch.topk(losses, 2, dim=1).values
    total = losses.sum(dim=1)
    out = {"top-2": 1.1 * top[:, 0] + top[:, 1], "paper": total + 0.1 * top[:, 0], "sum": total,
           "mean": total / count.clamp_min(1), "max": top[:, 0]}
    return {f"{prefix} {k}": torch.where(count > 0, v, torch.zeros_like(v)).numpy().astype(np.float64)
            for k, v in out.items()}


def region_scores(x: np.ndarray, mask: np.ndarray, region: np.ndarray, voxel_ml: float, prefix: str,
                  card_threshold: float | None) -> dict[str, np.ndarray]:
    """Scores from the volume's own map: with t_k = med+ + k * 1.4826 MAD+ over the positive map values inside the
    brain of the eligible slices (the maps are positive parts, about half of the brain is exactly 0, so the plain
    median and MAD are 0; ``region``: the slices whose brain gives these statistics, the eligible ones), per slice:
    excess mass sum(max(m - t_k, 0)) over its brain (map units x pixels),
    labelled volume (m > t_k, mL), peak/t_k (peak = max of the map box-smoothed over PEAK_BOX px), peak z =
    (peak - med+) / (1.4826 MAD+); and the volume labelled at the card's fixed pixel threshold (mL)."""
    brain = mask & region[:, None, None]
    values = x[brain]
    positive = values[values > 0]
    med = float(np.median(positive))
    spread = 1.4826 * float(np.median(np.abs(positive - med)))
    tmask = torch.from_numpy(mask).float()
    smoothed = F.avg_pool2d(torch.from_numpy(x).float().unsqueeze(1), PEAK_BOX, stride=1,
                            padding=PEAK_BOX // 2, count_include_pad=False).squeeze(1) * tmask
    peak = smoothed.flatten(1).max(dim=1).values.numpy().astype(np.float64)
    out = {f"{prefix} peak z": (peak - med) / spread}
    for k in K_VALUES:
        t = med + k * spread
        out[f"{prefix} excess k={k}"] = (np.clip(x - t, 0, None) * mask).sum(axis=(1, 2)).astype(np.float64)
        out[f"{prefix} labelled mL k={k}"] = ((x > t) & mask).sum(axis=(1, 2)) * voxel_ml
        out[f"{prefix} peak/t k={k}"] = peak / t
    if card_threshold is not None:
        out[f"{prefix} labelled mL @card"] = ((x >= card_threshold) & mask).sum(axis=(1, 2)) * voxel_ml
    return out


def case_scores(model: str, dataset: str, split: str, case) -> dict[str, np.ndarray]:
    path = CACHE / "scores" / f"v{SCORES_VERSION}_{model}_{dataset}_{split}_{case.case_id}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    data = case_data(model, dataset, split, case)
    mask = data["mask"]
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    eligible = eligible_slices(area)
    p = slab_position(area)
    voxel_ml = float(data["pixel_mm"]) ** 2 * float(data["slice_mm"]) / 1000.0
    card = _method(model)[0].card.thresholds.get("pixel")
    maps = {"map": data["map"].astype(np.float32)}
    if model.startswith("patchgan"):
        maps["learned"] = data["learned"].astype(np.float32)
    holding = np.flatnonzero(area > 0)  # the slab as training.evaluation.position_scores takes it: any brain
    p_any = (np.arange(len(area)) - holding[0]) / max(1, holding[-1] - holding[0])
    out = {"eligible": eligible, "lesion": data["lesion"], "healthy": data["healthy"], "p": p,
           "brain area": area, "centrality": -np.abs(p - 0.5), "centrality (any-brain slab)": -np.abs(p_any - 0.5)}
    for name, x in maps.items():
        out.update(eq5_readings(x, mask, name))
        # train cases hold maps of their healthy slices only: their volume statistics come from those slices
        region = data["healthy"] if (dataset, split) == FIT else eligible
        out.update(region_scores(x, mask, region, voxel_ml, name, card if name == "map" else None))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def split_scores(model: str, dataset: str, split: str) -> list[dict[str, np.ndarray]]:
    return [case_scores(model, dataset, split, case) for case in load_cases(DATA / dataset, split, "flair")]


# ----------------------------------------------------------------------------------------------------------------
# 3. Scores with image evidence beyond position: position-normalised (curves fitted on lgg_flair TRAIN healthy
#    slices) and per-volume detrended.
# ----------------------------------------------------------------------------------------------------------------

POLY_MU, POLY_SIGMA, BINS = 3, 2, 10


def fit_curve(p: np.ndarray, s: np.ndarray, kind: str) -> dict:
    """mu(p), sigma(p) of u = log(s + offset) on healthy slices (offset = 1 % of their median score, so that u is
    finite for slices scoring 0; u = s for a score that can be negative, the peak z). "poly": mu a cubic, sigma a
    quadratic fitted to |u - mu| * sqrt(pi / 2);
    "bins": mean and standard deviation of u in BINS equal bins of p, linearly interpolated between bin centres
    (bins with fewer than 5 slices are skipped: the interpolation bridges them); sigma is floored at half the
    overall spread of u."""
    offset = (0.01 * float(np.median(s[s > 0])) if (s > 0).any() else 1e-6) if (s >= 0).all() else None
    u = np.log(s + offset) if offset is not None else s
    if kind == "poly":
        mu = np.polyfit(p, u, POLY_MU)
        spread = np.polyfit(p, np.abs(u - np.polyval(mu, p)) * np.sqrt(np.pi / 2), POLY_SIGMA)
        floor = 0.5 * float(np.std(u - np.polyval(mu, p)))
        return {"kind": kind, "offset": offset, "mu": mu, "sigma": spread, "floor": floor}
    edges = np.linspace(0, 1, BINS + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, BINS - 1)
    centres, mus, sigmas = [], [], []
    for b in range(BINS):
        chosen = which == b
        if chosen.sum() >= 5:
            centres.append(0.5 * (edges[b] + edges[b + 1]))
            mus.append(float(u[chosen].mean()))
            sigmas.append(float(u[chosen].std()))
    return {"kind": kind, "offset": offset, "centres": np.array(centres), "mu": np.array(mus),
            "sigma": np.array(sigmas), "floor": 0.5 * float(np.std(u))}


def apply_curve(curve: dict, p: np.ndarray, s: np.ndarray) -> np.ndarray:
    u = np.log(np.clip(s, 0, None) + curve["offset"]) if curve["offset"] is not None else s
    if curve["kind"] == "poly":
        mu, sigma = np.polyval(curve["mu"], p), np.polyval(curve["sigma"], p)
    else:
        mu = np.interp(p, curve["centres"], curve["mu"])
        sigma = np.interp(p, curve["centres"], curve["sigma"])
    return (u - mu) / np.maximum(sigma, curve["floor"])


def detrended(case: dict, name: str, against: str) -> np.ndarray:
    """Per-volume detrending: the residual of u = log(s + 1 % of the volume's median score) after a least-squares
    fit on [1, a, a^2] over the volume's eligible slices, a = brain area / the largest ("area"), or a = p ("p")."""
    s, eligible = case[name], case["eligible"]
    positive = s[eligible & (s > 0)]
    u = np.log(np.clip(s, 0, None) + (0.01 * float(np.median(positive)) if positive.size else 1e-6))
    a = case["brain area"] / case["brain area"].max() if against == "area" else case["p"]
    design = np.stack([np.ones_like(a), a, a * a], axis=1)
    coef, *_ = np.linalg.lstsq(design[eligible], u[eligible], rcond=None)
    return u - design @ coef


# ----------------------------------------------------------------------------------------------------------------
# 4. Evaluation: slice AUROC per validation source (eligible slices, abnormal = lesion inside the brain).
# ----------------------------------------------------------------------------------------------------------------

def pooled(cases: list[dict], name: str, which: str = "eligible") -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the ``which`` slices ("eligible" or "healthy") pooled over cases."""
    chosen = [c[which].astype(bool) for c in cases]
    return (np.concatenate([c["lesion"][w] for c, w in zip(cases, chosen)]),
            np.concatenate([c[name][w] for c, w in zip(cases, chosen)]))


def auroc(cases: list[dict], name: str) -> float:
    return auroc_ap(*pooled(cases, name))["auroc"]


MATCH_WIDTH = 0.05


def matched_auroc(cases: list[dict], name: str) -> float | None:
    """Position-matched AUROC: P(score of a lesion slice > score of a non-lesion slice) over the pairs of eligible
    slices of the same source whose relative positions p differ by at most MATCH_WIDTH (ties count half). Position
    alone scores about 0.5 here; what is above 0.5 is image evidence at equal position."""
    labels, scores = pooled(cases, name)
    _, p = pooled(cases, "p")
    les, hea = np.flatnonzero(labels), np.flatnonzero(~labels)
    near = np.abs(p[les][:, None] - p[hea][None, :]) <= MATCH_WIDTH
    if not near.any():
        return None
    diff = scores[les][:, None] - scores[hea][None, :]
    return float(((diff > 0) + 0.5 * (diff == 0))[near].mean())


def add_derived(cases: list[dict], curves: dict[str, dict]) -> None:
    """Position-normalised z (each fitted curve) and per-volume detrended versions of the base scores, in place."""
    for case in cases:
        for label, curve in curves.items():
            case[label] = apply_curve(curve, case["p"], case[curve["base"]])
        for base in DETREND_BASES:
            if base in case:
                for against in ("area", "p"):
                    case[f"detrended[{against}] {base}"] = detrended(case, base, against)


Z_BASES = ("learned top-2", "learned max", "learned mean", "learned paper", "map top-2", "map max", "map mean",
           "map peak z", "map excess k=4", "map labelled mL @card", "learned peak z", "learned excess k=4")
DETREND_BASES = ("learned top-2", "learned max", "map top-2", "map max", "map peak z")
SLICE_FPR = 0.05
# Content-free rows. "centrality" takes p within the slab of slices with >= 5 % of the largest brain area
# (slab_position); "centrality (any-brain slab)" within the slab of slices holding any brain, as
# training.evaluation.position_scores does.
POSITION_ROWS = ("brain area", "centrality", "centrality (any-brain slab)")
# The recommended slice score of each model (chosen on val: best mean AUROC and position-matched AUROC among scores
# that carry no brain-area term; see the report).
RECOMMENDED = {"patchgan-flair": "learned peak z", "intensity-flair": "map peak z"}


def fitted_curves(train: list[dict]) -> dict[str, dict]:
    curves = {}
    for base in Z_BASES:
        if base not in train[0]:
            continue
        _, s = pooled(train, base, "healthy")
        p = np.concatenate([c["p"][c["healthy"].astype(bool)] for c in train])
        for kind in ("poly", "bins"):
            curves[f"z[{kind}] {base}"] = {**fit_curve(p, s, kind), "base": base}
    return curves


def spearman_area(val: dict[str, list[dict]], name: str) -> float:
    """Spearman correlation of a score with brain area over the healthy slices of both sources (pooled): how much
    the score moves with position on normal tissue, where a threshold should flag evenly."""
    from scipy.stats import spearmanr
    scores = np.concatenate([pooled(cases, name, "healthy")[1] for cases in val.values()])
    areas = np.concatenate([pooled(cases, "brain area", "healthy")[1] for cases in val.values()])
    return float(spearmanr(scores, areas).correlation)


def flag_rates(val: dict[str, list[dict]], name: str, threshold: float) -> dict[str, tuple[float, float]]:
    """Per source: (share of eligible lesion slices, share of healthy slices) scoring >= threshold."""
    out = {}
    for source, cases in val.items():
        labels, scores = pooled(cases, name)
        _, healthy = pooled(cases, name, "healthy")
        out[source] = (float((scores[labels] >= threshold).mean()), float((healthy >= threshold).mean()))
    return out


def row_groups(model: str, names: list[str]) -> list[tuple[str, list[str]]]:
    """The rows of a model's full table. Left out: peak/t_k (peak/t_k >= 1 is peak z >= k; the report prints how far
    its AUROC is from peak z's)."""
    learned = model.startswith("patchgan")
    maps = ("learned", "map") if learned else ("map",)
    eq5 = [f"{m} {r}" for m in maps for r in ("top-2", "paper", "sum", "mean", "max")]
    region = [n for n in names if n.split(" ")[0] in maps and n not in eq5 and "peak/t" not in n]
    return [
        ("position only", ["brain area", "centrality", "centrality (any-brain slab)"]),
        ("Eq. 5", eq5),
        ("position z", [n for n in names if n.startswith("z[")]),
        ("region", region),
        ("detrended", [n for n in names if n.startswith("detrended")]),
    ]


# ----------------------------------------------------------------------------------------------------------------
# 5. The report.
# ----------------------------------------------------------------------------------------------------------------

def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def flag_section(best: dict[str, tuple]) -> None:
    """Flag rules a clinician can use, per source: share of lesion slices and of healthy slices flagged."""
    print("\n## Flag rules (validation, in-sample)\n")
    print("A slice is flagged when its score reaches the rule's threshold. 'calibrated': the threshold at which "
          f"{100 * SLICE_FPR:g} % of the healthy val slices are flagged on average over the two sources "
          "(`training.evaluation.rate_threshold`, as `calibrate` makes the card's slice threshold), so the healthy "
          "share is in-sample by construction; the fixed rules need no calibration on slices. Lesion slices: eligible "
          "slices with lesion; healthy: `healthy_slices` (eligible, ≥ 1 slice from any lesion slice).\n")
    sources = [f"{d} {s}" for d, s in VAL]
    print("| model | score | rule | threshold | " + " | ".join(f"{s} lesion slices flagged | {s} healthy slices "
                                                              f"flagged" for s in sources) + " |")
    print("|---|---|---|---|" + "---|" * (2 * len(sources)))
    for model, (chosen, beats, val, *_) in best.items():
        card = _method(model)[0].card.thresholds
        today = "learned top-2" if model.startswith("patchgan") else "map top-2"
        healthy = lambda name: [pooled(cases, name, "healthy")[1] for cases in val.values()]  # noqa: E731
        recommended = RECOMMENDED[model]
        area = recommended.replace("peak z", "labelled mL k=4")
        rules = [(today, "card slice threshold (today)", card["slice"]),
                 (today, "calibrated", rate_threshold(healthy(today), SLICE_FPR)),
                 ("map labelled mL @card", "≥ 0.02 mL at the card's pixel threshold (the regions.csv minimum)", 0.02),
                 ("map labelled mL @card", "≥ 1 mL at the card's pixel threshold", 1.0),
                 (area, "≥ 0.02 mL above the per-volume t_4", 0.02),
                 (area, "≥ 1 mL above the per-volume t_4", 1.0),
                 (recommended, "fixed: peak z ≥ 4 (= peak ≥ t_4)", 4.0),
                 (recommended, "fixed: peak z ≥ 6 (= peak ≥ t_6)", 6.0),
                 (recommended, "calibrated (recommended)", rate_threshold(healthy(recommended), SLICE_FPR))]
        if chosen != recommended:
            rules.append((chosen, "calibrated (best mean AUROC" + (" beating position)" if beats else ")"),
                          rate_threshold(healthy(chosen), SLICE_FPR)))
        for name, rule, threshold in rules:
            rates = flag_rates(val, name, threshold)
            print(f"| {model} | {name} | {rule} | {threshold:.4g} | "
                  + " | ".join(f"{100 * rates[s][0]:.0f} % | {100 * rates[s][1]:.0f} %" for s in sources) + " |")


SUMMARY_ROWS = POSITION_ROWS + ("{m} top-2", "{m} paper", "{m} sum", "{m} mean", "{m} max",
                "z[poly] {m} top-2", "z[poly] {m} max", "z[poly] {m} peak z", "{m} excess k=4",
                "{m} labelled mL k=4", "map labelled mL @card", "{m} peak z", "detrended[area] {m} top-2")


def table_row(label: str, r: list, beats: str) -> str:
    return (f"| {label} | " + " | ".join(fmt(v) for v in r[:2]) + f" | **{fmt(r[2])}** | {r[3]:+.2f} | "
            + " | ".join(fmt(v) for v in r[4:]) + f" | {beats} |")


def main() -> None:
    started = time.perf_counter()
    sources = [f"{d} {s}" for d, s in VAL]
    header = ("| score | " + " | ".join(sources) + " | mean | ρ(area) healthy | " + " | ".join(
        f"{s} matched" for s in sources) + " | beats both position rows on both sources |\n"
        + "|---|" + "---|" * (2 * len(sources) + 3))
    print("# Slice scores against slice position (issue 19, items 2 and 5) — validation splits only\n")
    print(__doc__.split("\n\n")[0].replace("\n", " ") + "\n")
    print("Generated by `python docs/analysis/slice_scores.py [DATA_DIR] > docs/analysis/slice_scores.md` (see its "
          "docstring for every score's definition). Every number is measured on `lgg_flair` val (6 glioma patients, "
          "5 mm) and `nichart_wmh` val (8 WMH subjects, 2 mm), with the datasets' brain masks; per-position curves "
          "are fitted on the healthy slices of `lgg_flair` **train**. No test split is read.\n")
    print("- **slice AUROC**: eligible slices (brain area ≥ 20 % of the volume's largest cross-section, as "
          "`score_split`), abnormal = lesion inside the brain (`lesion_slices`), pooled over each source's cases; "
          "**mean**: of the two sources.\n"
          "- **ρ(area) healthy**: Spearman correlation of the score with the slice's brain area over the healthy "
          "val slices (`healthy_slices`) of both sources: how much the score moves with position on normal tissue, "
          "where a threshold should flag evenly (|ρ| near 1: mostly position).\n"
          f"- **matched**: position-matched AUROC over the (lesion, non-lesion) pairs of eligible slices of one source "
          f"whose relative positions p differ by at most {MATCH_WIDTH}; what a score gains there over the position "
          "rows "
          "is image evidence at equal position.\n"
          "- **learned** = the map today's patchgan slice score is read from (uncertainty-scaled smoothed positive "
          "residual, no intensity prior); **map** = the card's anomaly map (patchgan: learned map × intensity prior, "
          "geometric mean; intensity-flair: positive robust z-score).\n"
          "- The volume score (max over eligible slices) is not compared: every val volume holds lesions, so "
          "volume-level separation cannot be measured on val.\n")
    best: dict[str, tuple] = {}
    full: list[str] = []
    summary: list[str] = []
    reading: list[str] = []
    for model in MODELS:
        val = {f"{d} {s}": split_scores(model, d, s) for d, s in VAL}
        train = split_scores(model, *FIT)
        curves = fitted_curves(train)
        for cases in val.values():
            add_derived(cases, curves)
        names = [n for n in val[sources[0]][0] if n not in ("eligible", "lesion", "healthy", "p")]
        counts = {src: (int(pooled(c, "p")[0].sum()), int(len(pooled(c, "p")[0])),
                        int(sum(c_["healthy"].sum() for c_ in c))) for src, c in val.items()}
        results = {}
        for name in names:
            values = [auroc(val[s], name) for s in sources]
            results[name] = values + [float(np.mean(values)), spearman_area(val, name)] + [
                matched_auroc(val[s], name) for s in sources]
        position = np.array([results[n][:2] for n in POSITION_ROWS]).max(axis=0)
        m = "learned" if model.startswith("patchgan") else "map"
        today = f"{m} top-2"

        def label(name: str) -> str:
            return name + (" (today)" if name == today else "") + (
                " (**recommended**)" if name == RECOMMENDED[model] else "")

        def beats(name: str) -> str:
            if name in POSITION_ROWS:
                return "(reference)"
            return "yes" if all(results[name][i] > position[i] for i in range(2)) else "no"

        full.append(f"\n### {model}\n")
        full.append("Slices (abnormal / eligible / healthy): " + "; ".join(
            f"{s}: {a} / {e} / {h}" for s, (a, e, h) in counts.items()) + ". Curves fitted on "
            f"{sum(int(c['healthy'].sum()) for c in train)} healthy slices of {len(train)} lgg_flair train "
            "patients.\n")
        full.append("| group " + header.replace("\n|---|", "\n|---|---|"))
        for group, rows in row_groups(model, names):
            full += [f"| {group} " + table_row(label(n), results[n], beats(n)) for n in rows]
        candidates = [n for n in names if n not in POSITION_ROWS
                      and all(results[n][i] > position[i] for i in range(2))]
        chosen = max(candidates or [n for n in names if n not in POSITION_ROWS and "peak/t" not in n],
                     key=lambda n: results[n][2])
        best[model] = (chosen, bool(candidates), val, curves)
        gap = max(abs(results[n][i] - results[n.split(" peak/t")[0] + " peak z"][i])
                  for n in names if "peak/t" in n for i in range(2))
        full.append(f"\n{len(candidates)} of {len(names) - len(POSITION_ROWS)} image scores beat both position "
                    "rows on both sources" + (f" ({', '.join(candidates)})" if candidates else "")
                    + ". Not shown: peak/t_k "
                    f"(k = {', '.join(map(str, K_VALUES))}), whose AUROC is within {gap:.3f} of the same map's "
                    "peak z "
                    "on each source (peak/t_k ≥ 1 is the rule peak z ≥ k).\n")
        for name in SUMMARY_ROWS:
            name = name.format(m=m)
            if name in results:
                summary.append(f"| {model} " + table_row(label(name), results[name], beats(name)))
        recommended = RECOMMENDED[model]
        r, a, c, t = results[recommended], results["brain area"], results["centrality"], results[today]
        reading.append(
            f"- **{model}**: today's slice score ({today}) {fmt(t[0])} / {fmt(t[1])} (lgg_flair / nichart_wmh); "
            f"recommended `{recommended}` {fmt(r[0])} / {fmt(r[1])}, position-matched {fmt(r[4])} / {fmt(r[5])} "
            f"(brain area {fmt(a[4])} / {fmt(a[5])}), ρ(area) on healthy slices {r[3]:+.2f}. Against brain area "
            f"({fmt(a[0])} / {fmt(a[1])}) and centrality ({fmt(c[0])} / {fmt(c[1])}) it "
            + ("beats both on both sources." if beats(recommended) == "yes" else
               "does not beat both on both sources: " + ", ".join(
                   f"{src} {fmt(r[i])} vs {fmt(max(a[i], c[i]))}" for i, src in enumerate(sources)
                   if r[i] <= max(a[i], c[i])) + ".")
            + (f" Scores beating both: {', '.join(candidates)} — all with ρ(area) on healthy slices of "
               f"{', '.join(f'{results[n][3]:+.2f}' for n in candidates)}, i.e. they carry the brain area "
               "(the sum over all N patches grows with the number of patches)." if candidates else ""))
        curve = curves.get(f"z[poly] {recommended}")
        if curve is not None:
            best[model] += (curve,)
    print("## Summary\n")
    print("| model " + header.replace("\n|---|", "\n|---|---|"))
    print("\n".join(summary))
    print("\nReading (the recommendation is chosen on these same small validation splits, so its numbers are "
          "optimistic; in `nichart_wmh` val the lesion slices of every subject form one contiguous central block and "
          "the healthy slices are its two ends, which is why position alone reaches its AUROC there; the "
          "per-position curves come from `lgg_flair` train, 5 mm slices of another scanner):\n")
    print("\n".join(reading))
    print("\n## Full tables\n")
    print("\n".join(full))
    flag_section(best)
    print("\n## What the recommended score needs at inference\n")
    print("`peak z` needs no stored curve: per volume, med+ and MAD+ of the map's positive values inside the brain of "
          "the eligible slices (brain area ≥ 20 % of the largest), t_k = med+ + k · 1.4826 · MAD+, and per slice "
          f"peak = max over the brain of the map box-smoothed over {PEAK_BOX} px; peak z = (peak − med+) / "
          "(1.4826 · MAD+). A card would store only the slice threshold on peak z (and which map it is read from).\n")
    for model, entry in best.items():
        if len(entry) > 4:
            c = entry[4]
            print(f"For comparison, the per-position curve of `z[poly] {RECOMMENDED[model]}` ({model}), fitted on "
                  "lgg_flair train healthy slices (u = score, no log): "
                  f"mu(p) = polyval({np.round(c['mu'], 4).tolist()}, p), "
                  f"sigma(p) = max(polyval({np.round(c['sigma'], 4).tolist()}, p), {c['floor']:.4f}).\n")
    print(f"\n_Run time {time.perf_counter() - started:.0f} s (maps and per-slice scores cached under {CACHE})._")


if __name__ == "__main__":
    main()

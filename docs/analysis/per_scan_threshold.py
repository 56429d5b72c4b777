"""Per-scan operating points: rules that compute a volume's pixel threshold from that volume's own anomaly map,
compared with the calibrated fixed threshold, on the validation splits only (lgg_flair val, nichart_wmh val).

For the bundled `intensity-flair`, `patchgan-flair` and `pathoscope-flair`, every val case is run through the
product's own inference path (``inference.detect``, CPU, the case's ``brain.nii.gz`` as brain mask; maps cached as
.npz under /tmp/per_scan_cache so reruns take about a minute a model), and each candidate rule makes a label map from
the map inside the brain. Measured per source: pooled and per-case Dice, the ratio to ⌈Dice⌉ (``metrics.best_dice``
on the source's pooled voxels), the share of healthy brain (>= 3 mm from lesions) flagged, and what the rule flags on
healthy-looking material run alone (lesion-free slabs / brain far from lesions). No test split is read.

The other FLAIR bundles (`ae-flair`, `alocc-flair`, `dae-flair`, `ocsvm-flair`, `patchgan-flair-paper`) get the
card threshold and the recommended rule only, at k in K_GRID, and their k is chosen here: the best mean ratio over
the two sources, ties (at the printed 3 decimals) to the larger k (fewer false positives). The recommended rule is
always the core's own ``operating_point.per_scan_threshold``, so the study measures exactly what ships.

Run from the repository root (2 shared CPU cores, torch on 1 thread; about 15 min with an empty cache, most of it
the Patch-GAN and PathoSCOPE maps):
``python docs/analysis/per_scan_threshold.py [DATA_DIR] [--models NAME ...] > docs/analysis/per_scan_threshold.md``
(DATA_DIR defaults to ../shared/data; it was run with /work/shared/data; --models defaults to every bundled FLAIR
model; the five others add about 40 min with an empty cache, most of it the four networks' maps).
"""
from __future__ import annotations

import sys
import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.bundle import list_bundled_models, load_bundle
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.operating_point import MAX_LESION_SHARE, per_scan_threshold
from MedicalAnomalyDetectionLib.volume_io import read_volume
from training.datasets import load_cases
from training.evaluation import LESION_MARGIN_MM
from training.metrics import best_dice

torch.set_num_threads(1)
DATA = Path("../shared/data")  # set by main() from the command line
CACHE = Path("/tmp/per_scan_cache")
MODELS = ("intensity-flair", "patchgan-flair", "pathoscope-flair")  # the full study (every candidate rule)
K_GRID = (2, 2.5, 3, 3.5, 4, 4.5)  # k tried for the other FLAIR models (recommended rule only)
SOURCES = ("lgg_flair", "nichart_wmh")
FAR_MM = 10.0  # "healthy-looking" material: brain voxels (lgg_flair: whole slices) this far from any lesion

_methods: dict = {}


def cases_of(source: str):
    return load_cases(DATA / source, "val", "flair")


def _dilated(mask: np.ndarray, reference: sitk.Image, millimetres: float) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    radius = [max(1, int(np.ceil(millimetres / s))) for s in reference.GetSpacing()]
    return sitk.GetArrayFromImage(sitk.BinaryDilate(image, radius, sitk.sitkBall)) > 0


def case_truth(case) -> dict:
    """brain, lesion, near-lesion (3 mm) and far-from-lesion (FAR_MM) arrays of a case, cached."""
    path = CACHE / "truth" / f"{case.dataset}_{case.case_id}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        brain = sitk.ReadImage(str(case.brain))
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case.lesion))) > 0
        inside = sitk.GetArrayFromImage(brain) > 0
        np.savez_compressed(path, brain=inside, lesion=lesion & inside,
                            near=_dilated(lesion, brain, LESION_MARGIN_MM), far=~_dilated(lesion, brain, FAR_MM),
                            spacing=np.array(brain.GetSpacing()))
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def case_map(model: str, case) -> tuple[np.ndarray, float]:
    """The anomaly map (K, J, I) that ``detect`` makes on the input grid (CPU, the dataset's brain mask), cached;
    and the seconds the detection took when it was made."""
    path = CACHE / model / f"{case.dataset}_{case.case_id}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if model not in _methods:
            bundle = load_bundle(model)
            _methods[model] = (bundle, build_method(bundle, torch.device("cpu")))
        bundle, method = _methods[model]
        result = detect(read_volume(case.image), bundle, brain_mask=sitk.ReadImage(str(case.brain)), device="cpu",
                        method=method)
        np.savez_compressed(path, map=sitk.GetArrayFromImage(result.anomaly_map).astype(np.float32),
                            seconds=result.seconds)
    with np.load(path) as data:
        return data["map"], float(data["seconds"])


# ----------------------------------------------------------------------------------------------------------------
# Per-scan rules. Each takes the map values inside the brain (1-D) and returns a threshold (inf: flag nothing).
# Maps are half-rectified (30-40 % of brain voxels are 0), so "location" and "scale" are taken from the upper half of
# the bulk: location = median, scale = (q75 - q50) / 0.6745 (a normal's SD from its upper quartile; it stays put
# under lesion loads of a few % and moves little under a 23 % tumour), or 1.4826 x MAD about the median.
# ----------------------------------------------------------------------------------------------------------------
Z75 = 0.6744897501960817


def bulk(values: np.ndarray, scale: str = "upper", lesion_share: float = 0.0) -> tuple[float, float]:
    """(location, scale) of the healthy bulk; ``lesion_share``: the share of the brain taken to be lesion, all of it
    above the bulk, so the healthy quartiles are read at levels p (1 - lesion_share)."""
    keep = 1.0 - lesion_share
    q50, q75 = np.quantile(values, (0.5 * keep, 0.75 * keep))
    if scale == "mad":
        return float(q50), float(1.4826 * np.median(np.abs(values - q50)))
    return float(q50), float((q75 - q50) / Z75)


def rule_robust(values, k, scale="upper", lesion_share=0.0):
    """median + k x robust SD."""
    mu, sigma = bulk(values, scale, lesion_share)
    return mu + k * sigma


def _candidates(values, mu, sigma, count=2000):
    upper = values[values > mu + sigma]
    if not len(upper):
        return np.array([np.inf])
    return np.unique(np.quantile(upper, np.linspace(0, 1, count)))


def rule_fdr(values, q, scale="upper", lesion_share=0.0):
    """Tail-area FDR (Benjamini-Hochberg style) against a normal healthy bulk N(mu, sigma): the lowest threshold t
    at which the voxels the bulk would put above t are at most q x the voxels observed above t."""
    from scipy.special import ndtr
    mu, sigma = bulk(values, scale, lesion_share)
    ordered = np.sort(values)
    t = _candidates(values, mu, sigma)
    observed = len(values) - np.searchsorted(ordered, t, side="left")
    expected = len(values) * ndtr(-(t - mu) / sigma)
    ok = expected <= q * np.maximum(observed, 1)
    return float(t[np.argmax(ok)]) if ok.any() else np.inf


def rule_posterior(values, p, scale="upper", width=0.25, lesion_share=0.0):
    """Two-class mixture with the bulk fixed to N(mu, sigma) and the abnormal tail whatever the histogram has above
    it: threshold at the lowest bin edge from which every non-empty bin upwards has tail posterior
    1 - expected/observed > p (bins of ``width`` sigma from mu + sigma)."""
    from scipy.special import ndtr
    mu, sigma = bulk(values, scale, lesion_share)
    top = float(values.max())
    if top <= mu + sigma:
        return np.inf
    edges = mu + sigma * np.arange(1.0, (top - mu) / sigma + width, width)
    counts = np.histogram(values, np.append(edges, np.inf))[0]
    expected = len(values) * np.diff(ndtr((np.append(edges, np.inf) - mu) / sigma))
    tail = 1.0 - expected / np.maximum(counts, 1e-9)
    bad = (counts > 0) & (tail <= p)
    if not bad.any():
        return float(edges[0])
    last_bad = int(np.nonzero(bad)[0][-1])
    return float(edges[last_bad + 1]) if last_bad + 1 < len(edges) else np.inf


# ----------------------------------------------------------------------------------------------------------------
# From a threshold to a label map: plain, hysteresis (grow from seeds >= t down to mu + r (t - mu)), minimum region.
# ----------------------------------------------------------------------------------------------------------------
def label_map(volume, mask, threshold, mu=0.0, grow=None, min_ml=0.0, voxel_ml=1.0):
    from scipy import ndimage
    from skimage.filters import apply_hysteresis_threshold
    inside = np.where(mask, volume, -np.inf)
    if not np.isfinite(threshold):
        return np.zeros(mask.shape, bool)
    if grow is None:
        out = inside >= threshold
    else:
        out = apply_hysteresis_threshold(inside, mu + grow * (threshold - mu), threshold - 1e-7)
    if min_ml > 0 and out.any():
        regions, n = ndimage.label(out)
        sizes = np.bincount(regions.ravel())
        keep = sizes * voxel_ml >= min_ml
        keep[0] = False
        out = keep[regions]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------
def load_model_cases(model: str) -> dict[str, list[dict]]:
    out = {}
    for source in SOURCES:
        rows = []
        for case in cases_of(source):
            volume, seconds = case_map(model, case)
            truth = case_truth(case)
            brain, lesion = truth["brain"], truth["lesion"]
            if source == "lgg_flair":  # lesion-free slabs: whole slices with no lesion within FAR_MM
                slab = truth["far"].all(axis=(1, 2))[:, None, None] & brain
            else:  # white-matter lesions are in nearly every slice: brain voxels FAR_MM from any lesion
                slab = truth["far"] & brain
            rows.append({"case": case.case_id, "map": volume, "brain": brain, "lesion": lesion,
                         "healthy": brain & ~truth["near"], "slab": slab, "seconds": seconds,
                         "voxel_ml": float(np.prod(truth["spacing"])) / 1000.0})
        out[source] = rows
    return out


def apply(spec: dict, volume, mask, voxel_ml, fixed):
    values = volume[mask]
    threshold = spec["rule"](values) if spec["rule"] is not None else fixed
    if spec.get("floor"):
        threshold = max(threshold, fixed)
    mu = bulk(values)[0]
    return threshold, label_map(volume, mask, threshold, mu, spec.get("grow"), spec.get("min_ml", 0.0), voxel_ml)


def evaluate(spec: dict, cases: dict, fixed: float, ceilings: dict) -> dict:
    result = {"spec": spec, "sources": {}}
    for source, rows in cases.items():
        tp = predicted = truth = flagged = healthy = slab_flagged = slab_total = 0
        per_case, thresholds, seconds, slab_ml = [], [], [], []
        for row in rows:
            started = time.perf_counter()
            t, label = apply(spec, row["map"], row["brain"], row["voxel_ml"], fixed)
            seconds.append(time.perf_counter() - started)
            thresholds.append(t)
            g = row["lesion"]
            hit = int((label & g).sum())
            n_label, n_truth = int(label.sum()), int(g.sum())
            per_case.append(2.0 * hit / (n_label + n_truth))
            tp, predicted, truth = tp + hit, predicted + n_label, truth + n_truth
            flagged += int((label & row["healthy"]).sum())
            healthy += int(row["healthy"].sum())
            if row["slab"].sum() > 1000:
                _, slab_label = apply(spec, row["map"], row["slab"], row["voxel_ml"], fixed)
                slab_flagged += int(slab_label.sum())
                slab_total += int(row["slab"].sum())
                slab_ml.append(slab_label.sum() * row["voxel_ml"])
        dice = 2.0 * tp / (predicted + truth)
        result["sources"][source] = {
            "dice": dice, "ratio": dice / ceilings[source], "case_mean": float(np.mean(per_case)),
            "case_sd": float(np.std(per_case)), "case_min": float(np.min(per_case)), "per_case": per_case,
            "healthy": flagged / healthy, "slab": slab_flagged / max(slab_total, 1), "slab_ml_max": max(slab_ml),
            "thresholds": thresholds, "seconds": float(np.mean(seconds))}
    s = result["sources"].values()
    result["ratio"] = float(np.mean([x["ratio"] for x in s]))
    result["healthy"] = float(np.mean([x["healthy"] for x in s]))
    result["slab"] = float(np.mean([x["slab"] for x in s]))
    return result


def ceilings_of(cases: dict) -> dict:
    out = {}
    for source, rows in cases.items():
        labels = np.concatenate([r["lesion"][r["brain"]] for r in rows])
        values = np.concatenate([r["map"][r["brain"]] for r in rows])
        out[source] = best_dice(labels, values)
    return out


def rule_tail_fdr(values, q, anchor, beta, rate=0.01):
    """FDR against the model's calibrated healthy tail: healthy brain is expected to exceed t with probability
    rate x exp(-(t - anchor) / beta) (anchor: the card's threshold at ``rate``; beta: the tail's decay, from the
    thresholds at 1 % and 0.1 %). The threshold is the lowest t (on a grid from anchor - 2 beta) at which the
    expected healthy exceedances are at most q x the observed ones; inf (nothing flagged) when there is none."""
    grid = anchor + beta * np.arange(-2.0, 12.0, 0.05)
    observed = len(values) - np.searchsorted(np.sort(values), grid, side="left")
    expected = len(values) * rate * np.exp(-(grid - anchor) / beta)
    ok = expected <= q * observed
    return float(grid[np.argmax(ok)]) if ok.any() else np.inf


def rule_dice(values, healthy_sf, lo=None, hi=None, steps=400):
    """Plug-in Dice maximisation: with S(t) the share of healthy brain expected above t (``healthy_sf``), the
    lesion voxels above t are estimated as L(t) = max(O(t) - n S(t), 0) (O: observed above t), the lesion volume as
    max L, and the threshold is the t that maximises 2 L(t) / (O(t) + max L). No parameter beyond the tail model."""
    ordered = np.sort(values)
    lo = ordered[len(ordered) // 2] if lo is None else lo
    hi = ordered[-1] if hi is None else hi
    grid = np.linspace(lo, hi, steps)
    observed = len(values) - np.searchsorted(ordered, grid, side="left")
    lesion = np.maximum(observed - len(values) * healthy_sf(grid), 0.0)
    if lesion.max() <= 0:
        return np.inf
    dice = 2.0 * lesion / (observed + lesion.max())
    return float(grid[int(np.argmax(dice))])


def gaussian_sf(values, scale="upper"):
    from scipy.special import ndtr
    mu, sigma = bulk(values, scale)
    return lambda t: ndtr(-(t - mu) / sigma)


def exponential_sf(anchor, beta, rate=0.01):
    return lambda t: np.minimum(rate * np.exp(-(t - anchor) / beta), 1.0)


# MAX_LESION_SHARE (0.3, the core's): never read the bulk below this (no val case exceeds 0.21; a guard, not tuned).
# k of the recommended rule, chosen on val per model (the best mean ratio; 3.5 rather than 3.75 for the first two:
# within 0.005 and a better worst case). PathoSCOPE's maps are already in per-volume robust SDs and not rectified,
# so its bulk has another shape and needs a smaller k.
RECOMMENDED_K = {"intensity-flair": 3.5, "patchgan-flair": 3.5, "pathoscope-flair": 2.5}


def lesion_share(values, fixed, rate):
    """The share of the brain taken to be lesion: what the calibrated threshold flags beyond its healthy rate (as the
    core estimates it; used here by the candidate rules and the per-case λ column only)."""
    return min(max(float((values >= fixed).mean()) - rate, 0.0), MAX_LESION_SHARE)


def per_scan(values: np.ndarray, fixed: float, rate: float, k: float) -> float:
    """The recommended rule: the core's own function (values: the map inside the brain mask)."""
    return per_scan_threshold(values, fixed, rate, k)


def specs_for(fixed: float, rate: float, beta: float) -> list[dict]:
    lam = lambda v: lesion_share(v, fixed, rate)  # noqa: E731
    specs = [{"family": "fixed", "name": "fixed (calibrated, today's default)", "rule": None}]
    for k in (10, 15, 20):
        specs.append({"family": "mad", "name": f"median + {k} x 1.4826 MAD", "rule": lambda v, k=k: rule_robust(v, k, "mad")})
    for k in (3, 3.5, 4):
        specs.append({"family": "upper", "name": f"median + {k} x IQRsd", "rule": lambda v, k=k: rule_robust(v, k)})
    for k in (2.5, 2.75, 3, 3.25, 3.5, 3.75, 4, 4.5):  # the recommended rule, as the core runs it
        specs.append({"family": "upperL", "name": f"L-median + {k} x L-IQRsd", "k": k,
                      "rule": lambda v, k=k: per_scan(v, fixed, rate, k)})
    for q in (0.01, 0.02):
        specs.append({"family": "fdr", "name": f"FDR normal bulk q={q}", "rule": lambda v, q=q: rule_fdr(v, q)})
    for q in (0.01, 0.02, 0.05):
        specs.append({"family": "fdrL", "name": f"FDR normal L-bulk q={q}",
                      "rule": lambda v, q=q: rule_fdr(v, q, lesion_share=lam(v))})
    for p in (0.9, 0.95):
        specs.append({"family": "post", "name": f"tail posterior > {p}, normal bulk",
                      "rule": lambda v, p=p: rule_posterior(v, p)})
        specs.append({"family": "postL", "name": f"tail posterior > {p}, normal L-bulk",
                      "rule": lambda v, p=p: rule_posterior(v, p, lesion_share=lam(v))})
    for q in (0.1, 0.2, 0.3):
        specs.append({"family": "tailfdr", "name": f"FDR vs calibrated exponential tail q={q}",
                      "rule": lambda v, q=q: rule_tail_fdr(v, q, fixed, beta, rate)})
    specs.append({"family": "dice", "name": "plug-in Dice maximum, normal bulk",
                  "rule": lambda v: rule_dice(v, gaussian_sf(v))})
    return specs


def post_specs(best: dict) -> list[dict]:
    """Floor, ceiling, minimum region and hysteresis on top of a threshold rule (and the minimum region on fixed)."""
    rule, name = best["rule"], best["name"]
    out = [{"family": "post-fixed", "name": f"fixed, regions >= {m} mL", "rule": None, "min_ml": m} for m in (0.1, 0.3)]
    out.append({"family": "post", "name": f"max({name}, fixed)", "rule": rule, "floor": True})
    out.append({"family": "post", "name": f"min({name}, fixed)", "rule": rule, "ceiling": True})
    out += [{"family": "post", "name": f"{name}, regions >= {m} mL", "rule": rule, "min_ml": m} for m in (0.05, 0.1, 0.3)]
    out += [{"family": "post", "name": f"{name}, hysteresis down to mu + {g}(t - mu)", "rule": rule, "grow": g}
            for g in (0.75, 0.9)]
    return out


def evaluate_row(spec: dict, cases: dict, fixed: float, ceilings: dict) -> dict:
    """:func:`evaluate` one rule and print its table row (sources, mean ratio, mean healthy, threshold range, s/vol)."""
    r = evaluate(spec, cases, fixed, ceilings)
    ts = np.concatenate([x["thresholds"] for x in r["sources"].values()])
    sec = np.mean([x["seconds"] for x in r["sources"].values()])
    print(f"| {spec['name']} | " + " | ".join(fmt(r["sources"][s]) for s in SOURCES)
          + f" | **{r['ratio']:.3f}** | {100 * r['healthy']:.2f} % | {np.min(ts):.3g}–{np.max(ts):.3g} | "
          f"{sec:.2f} |", flush=True)
    return r


def fmt(x: dict) -> str:
    return (f"{x['dice']:.3f} ({x['ratio']:.2f}) | {x['case_mean']:.2f} ± {x['case_sd']:.2f} ({x['case_min']:.2f}) | "
            f"{100 * x['healthy']:.2f} % | {100 * x['slab']:.2f} % ({x['slab_ml_max']:.1f} mL)")


def flair_models() -> list[str]:
    """Every bundled FLAIR model: the full study's three first, then the others by name."""
    names = [card.name for card in list_bundled_models() if card.modality == "flair"]
    return [m for m in MODELS if m in names] + [m for m in names if m not in MODELS]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=Path("../shared/data"), help="the data folder")
    parser.add_argument("--models", nargs="+", default=None, help="FLAIR models (default: every bundled one)")
    return parser.parse_args()


def choose_k(rows: list[tuple[float, dict]]) -> tuple[float, dict]:
    """(k, result) with the best mean ratio; ties at the printed 3 decimals go to the larger k."""
    return max(rows, key=lambda kr: (round(kr[1]["ratio"], 3), kr[0]))


def model_cases(model: str):
    """card threshold and rate, cases, ⌈Dice⌉ per source; prints the model's heading and card line."""
    card = load_bundle(model).card
    fixed, rate = card.thresholds["pixel"], card.thresholds.get("pixel_fpr", 0.01)
    cases = load_model_cases(model)
    ceilings = ceilings_of(cases)
    detect_s = np.mean([r["seconds"] for rows in cases.values() for r in rows])
    print(f"## {model}\n")
    print(f"Card threshold {fixed:.4g} (flags {100 * rate:g} % of healthy val brain); ⌈Dice⌉ "
          + ", ".join(f"{s} {c[0]:.3f} at t = {c[1]:.3g}" for s, c in ceilings.items())
          + f"; detect() took {detect_s:.1f} s per volume on the CPU (1 thread).\n")
    return fixed, rate, cases, ceilings, {s: c[0] for s, c in ceilings.items()}


def main() -> None:
    global DATA
    from scipy.special import ndtr  # noqa: F401  (fail early without scipy)
    from training.evaluation import rate_threshold
    args = arguments()
    DATA = args.data
    models = args.models or flair_models()
    full, extra = [m for m in models if m in MODELS], [m for m in models if m not in MODELS]
    print(__doc__.split("\n\n")[0].replace("\n", " "), "\n")
    print("Generated by `python docs/analysis/per_scan_threshold.py " + str(DATA)
          + (" --models " + " ".join(models) if args.models else "") + "`; maps cached in "
          f"`{CACHE}`. All numbers are on **validation** splits (lgg_flair val: 6 gliomas, 5 mm; nichart_wmh val: "
          "8 white-matter-hyperintensity subjects, 2 mm), maps from `inference.detect` on the CPU with the case's "
          "`brain.nii.gz`, on the input grid, inside the brain.\n")
    print("Columns per source: pooled Dice of the label map (ratio to ⌈Dice⌉, the best single threshold for the "
          "source's pooled voxels) | per-case Dice mean ± SD (worst case) | healthy brain flagged (voxels >= 3 mm "
          "from lesions, pooled) | *healthy-looking* material flagged when the rule is run on it alone (lgg_flair: "
          "the brain of the slices with no lesion within 10 mm, as one volume per case; nichart_wmh: brain voxels "
          "10 mm or more from any lesion) with the largest volume flagged in one case. *mean ratio*: mean over the "
          "two sources of the Dice ratio (the selection criterion); *mean healthy*: mean of the two healthy rates.\n")
    print("Rules (t from the brain's map values v; IQRsd = (q75 - q50) / 0.6745; an *L-* statistic reads the "
          "quantiles at levels p x (1 - λ), with λ = max(share of v >= the card threshold - the card rate, 0), "
          "i.e. as if the estimated lesion voxels, all above the bulk, were removed): see the functions in the "
          "script. The *L-median + k x L-IQRsd* rows are the recommended rule run by the core's own "
          "`operating_point.per_scan_threshold` (it falls back to the card threshold where the result is not a "
          "positive number, e.g. on some of PathoSCOPE's signed healthy-looking slabs).\n")
    header = ("| rule | " + " | ".join(f"{s}: Dice (ratio) | per case | healthy | healthy-looking"
                                    for s in SOURCES) + " | mean ratio | mean healthy | t range | s/vol |")
    summary = []
    for model in full:
        started = time.perf_counter()
        fixed, rate, cases, ceilings, ceil = model_cases(model)
        healthy = [np.concatenate([r["map"][r["healthy"]] for r in rows]) for rows in cases.values()]
        beta = (rate_threshold(healthy, rate / 10) - rate_threshold(healthy, rate)) / np.log(10)
        print(header)
        print("|---" * (header.count("|") - 1) + "|")
        results = []

        def row(spec, results=results, fixed=fixed, cases=cases, ceil=ceil):
            if spec.get("ceiling"):
                base = spec["rule"]
                spec = dict(spec, rule=lambda v: min(base(v), fixed))
            r = evaluate_row(spec, cases, fixed, ceil)
            results.append(r)
            return r

        for spec in specs_for(fixed, rate, beta):
            row(spec)
        sane = [r for r in results if r["healthy"] <= 2 * rate
                and max(x["healthy"] for x in r["sources"].values()) <= 3 * rate]
        best = max(sane, key=lambda r: r["ratio"])
        best_upper = max((r for r in sane if r["spec"]["family"] == "upperL"), key=lambda r: r["ratio"])
        for spec in post_specs(best_upper["spec"]):
            row(spec)
        print(f"\nBest threshold rule (mean healthy <= {200 * rate:g} %, each source <= {300 * rate:g} %): "
              f"**{best['spec']['name']}** (mean ratio {best['ratio']:.3f}); best L-median + k x L-IQRsd: k = "
              f"{best_upper['spec']['k']} ({best_upper['ratio']:.3f}); fixed: {results[0]['ratio']:.3f}. "
              f"({time.perf_counter() - started:.0f} s)\n")
        summary.append((model, fixed, rate, cases, ceil, results, best_upper))

    if summary:
        full_sections(summary)
    if extra:
        extra_sections(extra, header)


def full_sections(summary: list) -> None:
    """The sections that compare the full study's models."""
    print("## The same k for every model (mean over the models of the mean ratio; L-median + k x L-IQRsd)\n")
    print("| k | " + " | ".join(m for m, *_ in summary) + " | mean |")
    print("|---" * (len(summary) + 2) + "|")
    for k in (2.5, 2.75, 3, 3.25, 3.5, 3.75, 4, 4.5):
        ratios = [next(r for r in res if r["spec"].get("k") == k)["ratio"] for *_, res, _ in summary]
        print(f"| {k} | " + " | ".join(f"{x:.3f}" for x in ratios) + f" | {np.mean(ratios):.3f} |")

    print("\n## Recommended: t = L-median + k x L-IQRsd, k per model, vs the card threshold\n")
    print("| model | k | source | Dice fixed (ratio) | Dice per scan (ratio) | per case fixed | per case per scan | "
          "healthy fixed | healthy per scan | healthy-looking fixed | healthy-looking per scan |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, fixed, rate, cases, ceil, results, _ in summary:
        k = RECOMMENDED_K[model]
        rec = evaluate({"name": "recommended", "rule": lambda v: per_scan(v, fixed, rate, k)}, cases, fixed, ceil)
        for source in SOURCES:
            a, b = results[0]["sources"][source], rec["sources"][source]
            print(f"| {model} | {k} | {source} | {a['dice']:.3f} ({a['ratio']:.2f}) | {b['dice']:.3f} ({b['ratio']:.2f}) | "
                  f"{a['case_mean']:.2f} ± {a['case_sd']:.2f} ({a['case_min']:.2f}) | "
                  f"{b['case_mean']:.2f} ± {b['case_sd']:.2f} ({b['case_min']:.2f}) | {100 * a['healthy']:.2f} % | "
                  f"{100 * b['healthy']:.2f} % | {100 * a['slab']:.2f} % ({a['slab_ml_max']:.1f} mL) | "
                  f"{100 * b['slab']:.2f} % ({b['slab_ml_max']:.1f} mL) |")
        print(f"| {model} | {k} | mean | ratio {results[0]['ratio']:.3f} | ratio **{rec['ratio']:.3f}** | | | "
              f"{100 * results[0]['healthy']:.2f} % | {100 * rec['healthy']:.2f} % | | |")
    print("\n## Per case: recommended rule vs the card threshold\n")
    print("| model | source | case | lesion mL (share) | λ | t fixed | Dice fixed | t per scan | Dice per scan | "
          "best single t for the case (its Dice) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, fixed, rate, cases, ceil, results, _ in summary:
        rec = next(r for r in results if r["spec"].get("k") == RECOMMENDED_K[model])
        fix = results[0]
        for source, rows in cases.items():
            for i, r in enumerate(rows):
                v, g = r["map"][r["brain"]], r["lesion"][r["brain"]]
                d, t = best_dice(g, v)
                print(f"| {model} | {source} | {r['case']} | {g.sum() * r['voxel_ml']:.1f} ({100 * g.mean():.1f} %) | "
                      f"{lesion_share(v, fixed, rate):.3f} | {fixed:.3g} | {fix['sources'][source]['per_case'][i]:.3f} | "
                      f"{rec['sources'][source]['thresholds'][i]:.3g} | {rec['sources'][source]['per_case'][i]:.3f} | "
                      f"{t:.3g} ({d:.3f}) |")

    print("\n## A map with no tail (synthetic: the rule alone, no lesion)\n")
    rng = np.random.default_rng(0)
    for model, fixed, rate, *_ in summary:
        for shape in ("normal", "rectified normal"):
            noise = rng.normal(0.1, 0.5, 1_000_000)
            noise = np.maximum(noise, 0) if shape == "rectified normal" else noise
            t = per_scan(noise, fixed, rate, RECOMMENDED_K[model])
            print(f"- {model}, {shape} noise (1e6 voxels, sd 0.5): t = {t:.3g}, flags "
                  f"{100 * (noise >= t).mean():.3f} % (the card threshold: {100 * (noise >= fixed).mean():.3f} %)")



def extra_sections(models: list[str], header: str) -> None:
    """The other FLAIR models: the card threshold and the recommended rule (the core's) at each k of K_GRID; k chosen
    by the best mean ratio, ties to the larger k."""
    print("## The other FLAIR models: the recommended rule at k in " + ", ".join(f"{k:g}" for k in K_GRID) + "\n")
    print("Same columns as above; only the card threshold and the recommended rule (the core's "
          "`per_scan_threshold`) are run. The k chosen is the best mean ratio, ties (at 3 decimals) to the larger k "
          "(fewer false positives).\n")
    chosen = []
    for model in models:
        started = time.perf_counter()
        fixed, rate, cases, _, ceil = model_cases(model)
        print(header)
        print("|---" * (header.count("|") - 1) + "|")
        specs = [{"name": "fixed (calibrated)", "rule": None}]
        specs += [{"name": f"L-median + {k:g} x L-IQRsd", "k": k,
                   "rule": lambda v, k=k: per_scan(v, fixed, rate, k)} for k in K_GRID]
        results = []
        for spec in specs:
            results.append(evaluate_row(spec, cases, fixed, ceil))
        grid = [(spec["k"], r) for spec, r in zip(specs[1:], results[1:])]
        k, best = choose_k(grid)
        sane = [(kk, r) for kk, r in grid if r["healthy"] <= 2 * rate
                and max(x["healthy"] for x in r["sources"].values()) <= 3 * rate]
        bounded = choose_k(sane) if sane else None
        edge = " (at the edge of the grid)" if k in (K_GRID[0], K_GRID[-1]) else ""
        print(f"\nChosen k = **{k:g}**{edge}: mean ratio {best['ratio']:.3f} (fixed: {results[0]['ratio']:.3f}); "
              f"mean healthy {100 * best['healthy']:.2f} % (fixed: {100 * results[0]['healthy']:.2f} %). Within the "
              f"full study's healthy bound (mean <= {200 * rate:g} %, each source <= {300 * rate:g} %): "
              + (f"k = {bounded[0]:g} ({bounded[1]['ratio']:.3f})" if bounded else "none") + ". "
              f"({time.perf_counter() - started:.0f} s)\n")
        print("| source | case | t fixed | Dice fixed | t per scan | Dice per scan |")
        print("|---|---|---|---|---|---|")
        for source, rows in cases.items():
            a, b = results[0]["sources"][source], best["sources"][source]
            for i, row in enumerate(rows):
                print(f"| {source} | {row['case']} | {fixed:.3g} | {a['per_case'][i]:.3f} | {b['thresholds'][i]:.3g} | "
                      f"{b['per_case'][i]:.3f} |")
        print()
        chosen.append((model, k, results[0], best, bounded))
        del cases

    print("## Chosen k, the other FLAIR models (val)\n")
    print("| model | k | ratio fixed (lgg_flair, nichart_wmh) | ratio per scan (lgg_flair, nichart_wmh) | "
          "healthy fixed (lgg_flair, nichart_wmh) | healthy per scan (lgg_flair, nichart_wmh) | worst case Dice fixed → "
          "per scan | within the healthy bound: k (mean ratio) |")
    print("|---|---|---|---|---|---|---|---|")
    for model, k, fix, best, bounded in chosen:
        def pair(r, key, scale=1.0, unit=""):
            return ", ".join(f"{scale * r['sources'][s][key]:.2f}{unit}" for s in SOURCES)
        worst = lambda r: min(min(x["per_case"]) for x in r["sources"].values())  # noqa: E731
        print(f"| {model} | {k:g} | **{fix['ratio']:.3f}** ({pair(fix, 'ratio')}) | **{best['ratio']:.3f}** "
              f"({pair(best, 'ratio')}) | {100 * fix['healthy']:.2f} % ({pair(fix, 'healthy', 100, ' %')}) | "
              f"{100 * best['healthy']:.2f} % ({pair(best, 'healthy', 100, ' %')}) | {worst(fix):.2f} → "
              f"{worst(best):.2f} | " + (f"{bounded[0]:g} ({bounded[1]['ratio']:.3f})" if bounded else "none") + " |")

if __name__ == "__main__":
    main()

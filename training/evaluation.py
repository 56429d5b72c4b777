"""``evaluate`` and ``calibrate``: the core inference path run over a dataset split, and what it measures."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedicalAnomalyDetectionLib.bundle import Bundle
from MedicalAnomalyDetectionLib.card import Preprocessing
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods import AnomalyMethod
from MedicalAnomalyDetectionLib.pipeline import score_volume
from MedicalAnomalyDetectionLib.preprocessing import PreparedVolume, prepare_volume, to_input_grid

from .datasets import Case
from .metrics import auroc_ap, best_dice, dice_at, pro_auc
from .plots import plot_roc, plot_score_distributions
from .slices import case_brain, healthy_slices, lesion_slices


# Brain voxels closer than this to a lesion are not counted as healthy when calibrating (lesion masks are drawn
# tight, and oedema or partial volume around a lesion is not healthy tissue).
LESION_MARGIN_MM = 3.0


def metrics_key(dataset: str, split: str, ablation: str | None = None, masking: str = "dataset") -> str:
    """Where a card keeps an evaluation: "lgg_flair/test", "lgg_flair/test (ranking off)",
    "lgg_flair/test (auto masking)"."""
    key = f"{dataset}/{split}" + (f" ({ablation})" if ablation else "")
    return key + ("" if masking == "dataset" else f" ({masking} masking)")


@dataclass
class SplitScores:
    """Everything measured on one split, pooled over its cases."""

    slice_labels: list[np.ndarray] = field(default_factory=list)
    slice_scores: list[np.ndarray] = field(default_factory=list)
    voxel_labels: list[np.ndarray] = field(default_factory=list)
    voxel_scores: list[np.ndarray] = field(default_factory=list)
    voxel_regions: list[np.ndarray] = field(default_factory=list)  # connected lesion region of each voxel (0: none)
    healthy_voxel_scores: list[np.ndarray] = field(default_factory=list)  # brain voxels away from any lesion
    healthy_slice_scores: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    masks_made_by: set[str] = field(default_factory=set)  # how the cases' brain masks were obtained


@dataclass
class CaseTruth:
    """What scoring a case needs besides the model: its preprocessing, and brain, lesion labels and lesion regions
    on the input grid (voxels of the reference brain mask, where metrics are counted). Independent of the model but
    for the card's preprocessing and the masking."""

    prepared: PreparedVolume
    inside: np.ndarray  # (K, J, I) bool: the reference brain (the dataset's mask; without one, the mask used)
    labels: np.ndarray  # lesion label of each brain voxel
    regions: np.ndarray  # connected lesion region of each brain voxel (0: none)
    near_lesion: np.ndarray  # brain voxels within LESION_MARGIN_MM of a lesion (lesions included)
    masking: str  # how the brain mask the maps were made in was obtained


def case_truth(case: Case, pre: Preprocessing, masking: str = "dataset") -> CaseTruth:
    """Read and prepare ``case``; its maps are made inside the dataset's brain mask (``masking`` "dataset", the
    detector's automatic masking where the dataset has none), or as the detector would mask it ("auto"/"none")."""
    image, brain, lesion = case.read()
    used = case_brain(image, brain, masking)
    prepared = prepare_volume(image, pre, used.mask, labels=(lesion,) if lesion is not None else ())
    inside = sitk.GetArrayFromImage(brain if brain is not None else used.mask) > 0
    if lesion is None:
        nothing = np.zeros(int(inside.sum()), dtype=bool)
        return CaseTruth(prepared, inside, nothing, nothing.astype(np.int32), nothing, used.how)
    near = sitk.GetArrayFromImage(_dilated(lesion, LESION_MARGIN_MM))[inside] > 0
    return CaseTruth(prepared, inside, sitk.GetArrayViewFromImage(lesion)[inside] > 0, lesion_regions(lesion)[inside],
                     near, used.how)


def _dilated(mask: sitk.Image, millimetres: float) -> sitk.Image:
    radius = [max(1, int(np.ceil(millimetres / spacing))) for spacing in mask.GetSpacing()]
    return sitk.BinaryDilate(sitk.Cast(mask > 0, sitk.sitkUInt8), radius, sitk.sitkBall)


def score_split(method: AnomalyMethod, bundle: Bundle, cases: list[Case], batch_size: int = 32,
                cache: dict | None = None, masking: str = "dataset") -> SplitScores:
    """Run the inference path on every case; keep the scores of eligible slices, and the map's values on the input
    grid inside the brain (voxel metrics) and at brain voxels away from lesions (calibration). ``cache`` (a dict
    kept by the caller) keeps each case's :class:`CaseTruth` for the next model with the same preprocessing."""
    out = SplitScores()
    threshold = bundle.card.thresholds.get("pixel")
    pre = bundle.card.preprocessing
    for case in cases:
        started = time.perf_counter()
        key = (str(case.image), json.dumps(pre.to_dict(), sort_keys=True), masking)
        truth = cache[key] if cache is not None and key in cache else case_truth(case, pre, masking)
        if cache is not None:
            cache[key] = truth
        prepared, inside = truth.prepared, truth.inside
        out.masks_made_by.add(truth.masking)
        scored = score_volume(method, prepared, batch_size, map_normalisation=bundle.card.map_normalisation)
        eligible = scored.eligible
        out.slice_labels.append(lesion_slices(prepared)[eligible])
        out.slice_scores.append(scored.slice_scores[eligible])
        out.healthy_slice_scores.append(scored.slice_scores[healthy_slices(prepared)])

        values = sitk.GetArrayFromImage(to_input_grid(scored.maps, prepared))[inside].astype(np.float32)
        out.voxel_labels.append(truth.labels)
        out.voxel_regions.append(truth.regions)
        out.voxel_scores.append(values)
        out.healthy_voxel_scores.append(values[~truth.near_lesion])

        row = {"case": case.case_id, "slices": int(eligible.sum()), "lesion_slices": int(out.slice_labels[-1].sum()),
               "volume_score": scored.volume_score, "lesion_voxels": int(truth.labels.sum())}
        if threshold is not None:
            if truth.labels.any():
                row["dice_at_threshold"] = round(dice_at(truth.labels, values, threshold), 4)
            row["healthy_fpr_at_threshold"] = round(float((values[~truth.labels] >= threshold).mean()), 5)
        row["seconds"] = round(time.perf_counter() - started, 2)
        out.rows.append(row)
    return out


def lesion_regions(lesion: sitk.Image) -> np.ndarray:
    """Connected lesion regions (face-connected, 3-D) of a lesion mask, numbered from 1; 0 elsewhere."""
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.Cast(lesion > 0, sitk.sitkUInt8)))


def summarise(scores: SplitScores, threshold: float | None) -> dict:
    """Slice AUROC/AP, voxel AUROC/AP inside the brain, ⌈Dice⌉ (one threshold for the split), AU-PRO up to 30 %
    false-positive rate, and at the card's threshold the Dice and the share of healthy (non-lesion) brain voxels
    flagged, pooled over the split's cases; and how the brain was masked."""
    slice_labels = np.concatenate(scores.slice_labels)
    slice_scores = np.concatenate(scores.slice_scores)
    result = {"cases": len(scores.rows), "slices": int(len(slice_labels)),
              "abnormal_slices": int(slice_labels.sum()), "masking": "; ".join(sorted(scores.masks_made_by))}
    slice_metrics = auroc_ap(slice_labels, slice_scores)
    result["slice_auroc"], result["slice_ap"] = slice_metrics["auroc"], slice_metrics["ap"]
    if scores.voxel_labels:
        labels = np.concatenate(scores.voxel_labels)
        values = np.concatenate(scores.voxel_scores)
        if labels.any():
            voxel = auroc_ap(labels, values)
            result["voxel_auroc"], result["voxel_ap"] = voxel["auroc"], voxel["ap"]
            result["best_dice"], result["best_dice_threshold"] = best_dice(labels, values)
            result["pro"] = pro_auc(scores.voxel_regions, scores.voxel_scores)
            if threshold is not None:
                result["dice_at_threshold"] = dice_at(labels, values, threshold)
        if threshold is not None:  # brain voxels outside the lesion masks that the threshold flags
            result["healthy_fpr_at_threshold"] = float((values[~labels] >= threshold).mean())
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}


def write_report(scores: SplitScores, summary: dict, title: str, out_dir: Path) -> None:
    """metrics.json, cases.csv, roc.png and scores.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out_dir / "cases.csv", "w", newline="") as handle:
        keys = list(dict.fromkeys(k for row in scores.rows for k in row))
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(scores.rows)
    labels = np.concatenate(scores.slice_labels)
    if labels.any() and not labels.all():
        curves = {title.split(" on ")[0]: (labels, np.concatenate(scores.slice_scores))}
        plot_roc(curves, f"slice-level ROC: {title}", out_dir / "roc.png")
        plot_score_distributions(curves, title, out_dir / "scores.png")


def rate_threshold(sources: list[np.ndarray], rate: float) -> float:
    """The threshold t at which the mean over ``sources`` of the share of values >= t is ``rate`` (each source, e.g.
    a dataset's healthy voxels, weighs the same however many values it has)."""
    ordered = [np.sort(np.asarray(values, dtype=np.float64)) for values in sources]

    def flagged(t: float) -> float:
        return float(np.mean([1.0 - np.searchsorted(v, t, side="left") / len(v) for v in ordered]))

    low, high = min(v[0] for v in ordered), max(v[-1] for v in ordered)
    for _ in range(100):  # flagged() falls as t rises
        middle = 0.5 * (low + high)
        low, high = (middle, high) if flagged(middle) > rate else (low, middle)
    return high


def calibrate(sources: dict[str, SplitScores], pixel_fpr: float, slice_fpr: float) -> dict:
    """Thresholds at which healthy material is flagged at the given rates, averaged over ``sources`` (name -> the
    split's scores) with equal weight: brain voxels at least LESION_MARGIN_MM from any lesion on the input grid
    (where the label map is made), and healthy slices."""
    pixels = [np.concatenate(s.healthy_voxel_scores) for s in sources.values()]
    slices = [np.concatenate(s.healthy_slice_scores) for s in sources.values()]
    pixel = rate_threshold(pixels, pixel_fpr)
    if pixel <= 0:  # label maps need a positive threshold: maps are 0 outside the brain
        raise InputError(f"at {100 * pixel_fpr:g} % of healthy voxels the threshold would be {pixel:.3g}, not above "
                         "0 (outside the brain, where maps are 0, would be flagged); choose a lower --pixel-fpr")
    return {"pixel": pixel, "pixel_fpr": pixel_fpr,
            "slice": rate_threshold(slices, slice_fpr), "slice_fpr": slice_fpr,
            "meaning": f"pixel: flags {100 * pixel_fpr:g} % of healthy brain voxels (at least {LESION_MARGIN_MM:g} mm "
                       f"from any lesion), slice: {100 * slice_fpr:g} % of healthy slices, on average over "
                       f"{', '.join(sources)}",
            "healthy_voxels": {name: int(len(p)) for name, p in zip(sources, pixels)},
            "healthy_slices": {name: int(len(p)) for name, p in zip(sources, slices)}}

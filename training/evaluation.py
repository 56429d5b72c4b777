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
from MedicalAnomalyDetectionLib.methods import AnomalyMethod
from MedicalAnomalyDetectionLib.pipeline import score_volume
from MedicalAnomalyDetectionLib.preprocessing import PreparedVolume, to_input_grid

from .datasets import Case
from .metrics import auroc_ap, best_dice, dice_at, pro_auc
from .plots import plot_roc, plot_score_distributions
from .slices import healthy_slices, lesion_slices, prepare_case


@dataclass
class SplitScores:
    """Everything measured on one split, pooled over its cases."""

    slice_labels: list[np.ndarray] = field(default_factory=list)
    slice_scores: list[np.ndarray] = field(default_factory=list)
    voxel_labels: list[np.ndarray] = field(default_factory=list)
    voxel_scores: list[np.ndarray] = field(default_factory=list)
    voxel_regions: list[np.ndarray] = field(default_factory=list)  # connected lesion region of each voxel (0: none)
    healthy_pixel_scores: list[np.ndarray] = field(default_factory=list)
    healthy_slice_scores: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


@dataclass
class CaseTruth:
    """What scoring a case needs besides the model: its preprocessing, and brain, lesion labels and lesion regions
    on the input grid (brain voxels only). Independent of the model but for the card's preprocessing."""

    prepared: PreparedVolume
    inside: np.ndarray  # (K, J, I) bool brain
    labels: np.ndarray  # lesion label of each brain voxel
    regions: np.ndarray  # connected lesion region of each brain voxel (0: none)


def case_truth(case: Case, pre: Preprocessing) -> CaseTruth:
    image, brain, lesion = case.read()
    prepared = prepare_case((image, brain, lesion), pre)
    inside = sitk.GetArrayFromImage(brain) > 0 if brain is not None else prepared_mask_on_input(prepared)
    if lesion is None:
        return CaseTruth(prepared, inside, np.zeros(int(inside.sum()), dtype=bool),
                         np.zeros(int(inside.sum()), dtype=np.int32))
    return CaseTruth(prepared, inside, sitk.GetArrayViewFromImage(lesion)[inside] > 0, lesion_regions(lesion)[inside])


def score_split(method: AnomalyMethod, bundle: Bundle, cases: list[Case], batch_size: int = 32,
                cache: dict | None = None) -> SplitScores:
    """Run the inference path on every case; keep the scores of eligible slices, and the map's values on the input
    grid inside the brain (voxel metrics) and inside the brain of healthy slices (calibration). ``cache`` (a dict
    kept by the caller) keeps each case's :class:`CaseTruth` for the next model with the same preprocessing."""
    out = SplitScores()
    threshold = bundle.card.thresholds.get("pixel")
    pre = bundle.card.preprocessing
    for case in cases:
        started = time.perf_counter()
        key = (str(case.image), json.dumps(pre.to_dict(), sort_keys=True))
        truth = cache[key] if cache is not None and key in cache else case_truth(case, pre)
        if cache is not None:
            cache[key] = truth
        prepared, inside = truth.prepared, truth.inside
        scored = score_volume(method, prepared, batch_size)
        eligible = scored.eligible
        healthy = healthy_slices(prepared)
        out.slice_labels.append(lesion_slices(prepared)[eligible])
        out.slice_scores.append(scored.slice_scores[eligible])
        out.healthy_slice_scores.append(scored.slice_scores[healthy])

        anomaly_map = sitk.GetArrayFromImage(to_input_grid(scored.maps, prepared))
        out.voxel_labels.append(truth.labels)
        out.voxel_regions.append(truth.regions)
        out.voxel_scores.append(anomaly_map[inside].astype(np.float32))
        numpy_axis = 2 - prepared.slice_axis  # arrays are (K, J, I)
        healthy_index = prepared.slice_index[healthy]
        out.healthy_pixel_scores.append(np.take(anomaly_map, healthy_index, axis=numpy_axis)[
            np.take(inside, healthy_index, axis=numpy_axis)])

        row = {"case": case.case_id, "slices": int(eligible.sum()), "lesion_slices": int(out.slice_labels[-1].sum()),
               "volume_score": scored.volume_score, "lesion_voxels": int(truth.labels.sum())}
        if threshold is not None and truth.labels.any():
            row["dice_at_threshold"] = round(dice_at(out.voxel_labels[-1], out.voxel_scores[-1], threshold), 4)
        row["seconds"] = round(time.perf_counter() - started, 2)
        out.rows.append(row)
    return out


def lesion_regions(lesion: sitk.Image) -> np.ndarray:
    """Connected lesion regions (face-connected, 3-D) of a lesion mask, numbered from 1; 0 elsewhere."""
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.Cast(lesion > 0, sitk.sitkUInt8)))


def prepared_mask_on_input(prepared: PreparedVolume) -> np.ndarray:
    """The model-grid mask put back on the input grid (for cases without a brain mask)."""
    return sitk.GetArrayFromImage(to_input_grid(prepared.mask.astype(np.float32), prepared,
                                                sitk.sitkNearestNeighbor)) > 0


def summarise(scores: SplitScores, threshold: float | None) -> dict:
    """Slice AUROC/AP, voxel AUROC/AP inside the brain, ⌈Dice⌉ (one threshold for the split), AU-PRO up to 30 %
    false-positive rate and Dice at the card's threshold, pooled over the split's cases."""
    slice_labels = np.concatenate(scores.slice_labels)
    slice_scores = np.concatenate(scores.slice_scores)
    result = {"cases": len(scores.rows), "slices": int(len(slice_labels)),
              "abnormal_slices": int(slice_labels.sum())}
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
        elif threshold is not None:  # healthy split: how much is flagged
            result["flagged_voxel_fraction"] = float((values >= threshold).mean())
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


def calibrate(scores: SplitScores, pixel_fpr: float, slice_fpr: float) -> dict:
    """Thresholds at which healthy material of the split is flagged at the given false-positive rates: brain voxels
    of healthy slices on the input grid (where the label map is made), and healthy slices."""
    pixels = np.concatenate(scores.healthy_pixel_scores)
    slices = np.concatenate(scores.healthy_slice_scores)
    return {"pixel": float(np.quantile(pixels, 1.0 - pixel_fpr)), "pixel_fpr": pixel_fpr,
            "slice": float(np.quantile(slices, 1.0 - slice_fpr)), "slice_fpr": slice_fpr,
            "healthy_pixels": int(len(pixels)), "healthy_slices": int(len(slices))}

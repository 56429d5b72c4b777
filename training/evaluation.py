"""``evaluate`` and ``calibrate``: the core inference path run over a dataset split, and what it measures.

Every case goes through :func:`~MedicalAnomalyDetectionLib.inference.stage_volume` and
:func:`~MedicalAnomalyDetectionLib.inference.score_staged`, the functions ``mad-detect`` and Slicer run, so the
anomaly map, the slice scores and the label map measured here are the ones a user gets."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MedicalAnomalyDetectionLib import inference
from MedicalAnomalyDetectionLib.bundle import Bundle, read_card, write_card
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods import AnomalyMethod
from MedicalAnomalyDetectionLib.operating_point import operating_point
from MedicalAnomalyDetectionLib.volume_io import read_volume, validate_mask

from .datasets import Case
from .metrics import auroc_ap, best_dice, dice, dice_at, pro_auc
from .plots import plot_roc, plot_score_distributions
from .slices import healthy_slices, lesion_slices


# Brain voxels closer than this to a lesion are not counted as healthy, neither when calibrating nor in the healthy
# rates reported (lesion masks are drawn tight, and oedema or partial volume around a lesion is not healthy tissue).
LESION_MARGIN_MM = 3.0
# Content-free slice scores: how well a slice's position alone tells lesion slices from others (a reference every
# slice-level AUROC is to be read against: large, central slices hold more lesion in most cohorts).
POSITION_ONLY = ("brain_area", "centrality")
# The threshold score_staged is given for a card without a pixel threshold (before calibration); that label map is
# not used.
_NO_THRESHOLD = float(np.finfo(np.float32).max)


def metrics_key(dataset: str, split: str, ablation: str | None = None, masking: str = "dataset") -> str:
    """Where a card keeps an evaluation: "lgg_flair/test", "lgg_flair/test (ranking off)",
    "lgg_flair/test (auto masking)"."""
    key = f"{dataset}/{split}" + (f" ({ablation})" if ablation else "")
    return key + ("" if masking == "dataset" else f" ({masking} masking)")


@dataclass
class SplitScores:
    """Everything measured on one split, one list entry per case (in the order of ``case_ids``)."""

    slice_labels: list[np.ndarray] = field(default_factory=list)  # eligible slices holding lesion
    slice_scores: list[np.ndarray] = field(default_factory=list)  # the eligible slices' scores
    voxel_labels: list[np.ndarray] = field(default_factory=list)  # lesion label of each reference-brain voxel
    voxel_scores: list[np.ndarray] = field(default_factory=list)  # the anomaly map at those voxels
    voxel_regions: list[np.ndarray] = field(default_factory=list)  # connected lesion region of each voxel (0: none)
    healthy_voxel_scores: list[np.ndarray] = field(default_factory=list)  # brain voxels >= LESION_MARGIN_MM from lesion
    healthy_slice_scores: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    masks_made_by: set[str] = field(default_factory=set)  # how the cases' brain masks were obtained
    case_ids: list[str] = field(default_factory=list)
    # The detector's default label map (Detection.label_map) at the reference-brain voxels, and at the healthy ones;
    # empty when the card has no pixel threshold.
    voxel_flags: list[np.ndarray] = field(default_factory=list)
    healthy_voxel_flags: list[np.ndarray] = field(default_factory=list)
    operating_points: set[str] = field(default_factory=set)  # how the label maps' thresholds were chosen
    # Content-free scores of the same eligible slices (see POSITION_ONLY), name -> one array per case.
    position_scores: dict[str, list[np.ndarray]] = field(default_factory=lambda: {name: [] for name in POSITION_ONLY})


@dataclass
class StagedCase:
    """A case made ready for scoring, independent of the model but for the card's preprocessing and the masking:
    the core's staged volume, and the reference (brain, lesion labels, regions, near-lesion voxels) on the input
    grid, where metrics are counted."""

    staged: inference.StagedVolume
    lesion_model_grid: np.ndarray | None  # (N, H, W) lesion mask on the model grid (slice labels), or None
    inside: np.ndarray  # (K, J, I) bool: the reference brain (the dataset's mask; without one, the mask used)
    labels: np.ndarray  # lesion label of each brain voxel
    regions: np.ndarray  # connected lesion region of each brain voxel (0: none)
    near_lesion: np.ndarray  # brain voxels within LESION_MARGIN_MM of a lesion (lesions included)
    masking: str  # how the brain mask the maps were made in was obtained

    @property
    def prepared(self):
        """The staged PreparedVolume, with the lesion on the model grid as its label (for ``slices``' helpers)."""
        labels = [] if self.lesion_model_grid is None else [self.lesion_model_grid]
        return dataclasses.replace(self.staged.prepared, labels=labels)


def stage_case(case: Case, bundle: Bundle, masking: str = "dataset",
               device: torch.device = torch.device("cpu")) -> StagedCase:
    """Read ``case`` as ``mad-detect`` reads its files and stage it with :func:`inference.stage_volume`: with
    ``masking`` "dataset" the dataset's brain mask is given as the brain mask (a case without one is masked "auto"),
    with "auto"/"none" the detector masks it itself. Metrics are counted inside the dataset's brain mask."""
    image = read_volume(case.image)
    brain = read_volume(case.brain) if case.brain else None
    lesion = sitk.ReadImage(str(case.lesion)) if case.lesion else None
    given = brain if masking == "dataset" else None
    staged = inference.stage_volume(image, bundle, given, device, "auto" if masking == "dataset" else masking)
    how = "the dataset's reference brain mask" if given is not None else staged.brain.how
    reference = validate_mask(brain, staged.prepared.input_grid) if brain is not None else staged.brain.mask
    inside = sitk.GetArrayFromImage(reference) > 0
    if lesion is None:
        nothing = np.zeros(int(inside.sum()), dtype=bool)
        return StagedCase(staged, None, inside, nothing, nothing.astype(np.int32), nothing, how)
    lesion = validate_mask(lesion, staged.prepared.input_grid, "lesion mask", allow_empty=True)
    # Slice labels: the lesion on the model grid, resampled as the core resamples masks (nearest neighbour).
    on_model_grid = sitk.GetArrayFromImage(sitk.Resample(lesion, staged.prepared.model_grid, sitk.Transform(),
                                                         sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)) > 0
    near = sitk.GetArrayFromImage(_dilated(lesion, LESION_MARGIN_MM))[inside] > 0
    return StagedCase(staged, on_model_grid, inside, sitk.GetArrayViewFromImage(lesion)[inside] > 0,
                      lesion_regions(lesion)[inside], near, how)


def _dilated(mask: sitk.Image, millimetres: float) -> sitk.Image:
    radius = [max(1, int(np.ceil(millimetres / spacing))) for spacing in mask.GetSpacing()]
    return sitk.BinaryDilate(sitk.Cast(mask > 0, sitk.sitkUInt8), radius, sitk.sitkBall)


def position_scores(brain_area: np.ndarray) -> dict[str, np.ndarray]:
    """Content-free scores of each slice from the (N,) brain pixels of its slices: its brain area, and its centrality
    -|p - 0.5|, p the slice's relative position (0 to 1) within the slab of slices holding brain."""
    brain_area = np.asarray(brain_area)
    holding = np.flatnonzero(brain_area > 0)
    index = np.arange(len(brain_area), dtype=np.float64)
    if len(holding) > 1:
        relative = (index - holding[0]) / (holding[-1] - holding[0])
    else:
        relative = np.full(len(brain_area), 0.5)
    return {"brain_area": brain_area.astype(np.float64), "centrality": -np.abs(relative - 0.5)}


def score_split(method: AnomalyMethod, bundle: Bundle, cases: list[Case], batch_size: int = 32,
                cache: dict | None = None, masking: str = "dataset") -> SplitScores:
    """Run the detector's path (``inference.stage_volume`` + ``inference.score_staged``) on every case; keep the
    scores of eligible slices, the anomaly map and the default label map at the reference brain's voxels (voxel
    metrics) and at brain voxels away from lesions (calibration, healthy rates). ``cache`` (a dict kept by the caller)
    keeps each case's :class:`StagedCase` for the next model with the same preprocessing and masking."""
    out = SplitScores()
    threshold = bundle.card.thresholds.get("pixel")
    # the label map mad-detect makes by default (the card's default operating point: per scan where the card has one)
    point = operating_point(bundle.card) if threshold is not None else operating_point(bundle.card, _NO_THRESHOLD)
    pre = bundle.card.preprocessing
    device = method.device
    for case in cases:
        started = time.perf_counter()
        key = (str(case.image), json.dumps(pre.to_dict(), sort_keys=True), masking)
        ready = cache[key] if cache is not None and key in cache else stage_case(case, bundle, masking, device)
        if cache is not None:
            cache[key] = ready
        out.masks_made_by.add(ready.masking)
        detection = inference.score_staged(ready.staged, bundle, method, point, batch_size)
        prepared = ready.prepared
        eligible = detection.slice_eligible
        out.case_ids.append(case.case_id)
        out.slice_labels.append(lesion_slices(prepared)[eligible])
        out.slice_scores.append(np.asarray(detection.slice_scores)[eligible])
        out.healthy_slice_scores.append(np.asarray(detection.slice_scores)[healthy_slices(prepared)])
        for name, values in position_scores(prepared.brain_area).items():
            out.position_scores[name].append(values[eligible])

        inside, healthy = ready.inside, ~ready.near_lesion
        values = sitk.GetArrayFromImage(detection.anomaly_map)[inside].astype(np.float32)
        out.voxel_labels.append(ready.labels)
        out.voxel_regions.append(ready.regions)
        out.voxel_scores.append(values)
        out.healthy_voxel_scores.append(values[healthy])
        if threshold is not None:
            flags = sitk.GetArrayFromImage(detection.label_map)[inside] > 0
            out.voxel_flags.append(flags)
            out.healthy_voxel_flags.append(flags[healthy])
            out.operating_points.add(detection.operating_point)

        row = {"case": case.case_id, "slices": int(eligible.sum()), "lesion_slices": int(out.slice_labels[-1].sum()),
               "volume_score": detection.volume_score, "lesion_voxels": int(ready.labels.sum())}
        if threshold is not None:
            if ready.labels.any():
                row["dice_at_threshold"] = round(dice_at(ready.labels, values, threshold), 4)
                row["label_map_dice"] = round(dice(ready.labels, flags), 4)
            row["label_map_threshold"] = round(float(detection.threshold), 5)
            if healthy.any():
                row["healthy_fpr_at_threshold"] = round(float((values[healthy] >= threshold).mean()), 5)
                row["label_map_healthy_fpr"] = round(float(flags[healthy].mean()), 5)
        row["seconds"] = round(time.perf_counter() - started, 2)
        out.rows.append(row)
    return out


def lesion_regions(lesion: sitk.Image) -> np.ndarray:
    """Connected lesion regions (face-connected, 3-D) of a lesion mask, numbered from 1; 0 elsewhere."""
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.Cast(lesion > 0, sitk.sitkUInt8)))


def per_case(values: dict[str, float]) -> dict | None:
    """Mean, standard deviation (n - 1; 0 for one case) and the worst (lowest) of per-case values, with that case's
    id; None without any."""
    if not values:
        return None
    ids, numbers = list(values), np.array(list(values.values()), dtype=np.float64)
    worst = int(np.argmin(numbers))
    return {"mean": float(numbers.mean()), "sd": float(numbers.std(ddof=1)) if len(numbers) > 1 else 0.0,
            "worst": float(numbers[worst]), "worst_case": ids[worst], "cases": len(numbers)}


def summarise(scores: SplitScores, threshold: float | None) -> dict:
    """Slice AUROC/AP, and beside it the slice AUROC of the content-free position-only scores of the same slices;
    voxel AUROC/AP inside the brain, ⌈Dice⌉ (one threshold for the split), AU-PRO up to 30 % false-positive rate; at
    the card's fixed ``threshold`` and for the detector's default label map (its default operating point, per scan
    where the card has one): Dice pooled over the split's voxels and per lesion-holding case (mean, SD, worst case),
    and the healthy rate, the share of brain voxels at least LESION_MARGIN_MM from any lesion that is flagged; and
    how the brain was masked."""
    slice_labels = np.concatenate(scores.slice_labels)
    slice_scores = np.concatenate(scores.slice_scores)
    ids = scores.case_ids or [row.get("case", str(i)) for i, row in enumerate(scores.rows)] \
        or [str(i) for i in range(len(scores.voxel_labels))]
    result = {"cases": len(ids), "slices": int(len(slice_labels)),
              "abnormal_slices": int(slice_labels.sum()), "masking": "; ".join(sorted(scores.masks_made_by))}
    slice_metrics = auroc_ap(slice_labels, slice_scores)
    result["slice_auroc"], result["slice_ap"] = slice_metrics["auroc"], slice_metrics["ap"]
    position = {name: auroc_ap(slice_labels, np.concatenate(values))["auroc"]
                for name, values in scores.position_scores.items() if values}
    if position:
        result["position_only_slice_auroc"] = position
    if scores.voxel_labels:
        labels = np.concatenate(scores.voxel_labels)
        values = np.concatenate(scores.voxel_scores)
        lesion_cases = [i for i, case_labels in enumerate(scores.voxel_labels) if case_labels.any()]
        if labels.any():
            voxel = auroc_ap(labels, values)
            result["voxel_auroc"], result["voxel_ap"] = voxel["auroc"], voxel["ap"]
            result["best_dice"], result["best_dice_threshold"] = best_dice(labels, values)
            result["pro"] = pro_auc(scores.voxel_regions, scores.voxel_scores)
            if threshold is not None:
                result["dice_at_threshold"] = dice_at(labels, values, threshold)
                result["dice_at_threshold_per_case"] = per_case(
                    {ids[i]: dice_at(scores.voxel_labels[i], scores.voxel_scores[i], threshold) for i in lesion_cases})
        healthy = np.concatenate(scores.healthy_voxel_scores) if scores.healthy_voxel_scores else np.zeros(0)
        if threshold is not None and len(healthy):  # brain voxels >= LESION_MARGIN_MM from any lesion, flagged
            result["healthy_fpr_at_threshold"] = float((healthy >= threshold).mean())
        if scores.voxel_flags:  # the label map the detector returns (Detection.label_map)
            if scores.operating_points:
                result["label_map_operating_point"] = "; ".join(sorted(scores.operating_points))
            if labels.any():
                result["label_map_dice"] = dice(labels, np.concatenate(scores.voxel_flags))
                result["label_map_dice_per_case"] = per_case(
                    {ids[i]: dice(scores.voxel_labels[i], scores.voxel_flags[i]) for i in lesion_cases})
            healthy_flags = np.concatenate(scores.healthy_voxel_flags)
            if len(healthy_flags):
                result["label_map_healthy_fpr"] = float(healthy_flags.mean())
    return _rounded(result)


def _rounded(value, digits: int = 4):
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return round(value, digits) if isinstance(value, float) else value


def write_report(scores: SplitScores, summary: dict, title: str, out_dir: Path) -> None:
    """metrics.json, cases.csv, roc.png (with the position-only references) and scores.png in ``out_dir``."""
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
        references = {f"position only: {name.replace('_', ' ')}": (labels, np.concatenate(values))
                      for name, values in scores.position_scores.items() if values}
        plot_roc({**curves, **references}, f"slice-level ROC: {title}", out_dir / "roc.png")
        plot_score_distributions(curves, title, out_dir / "scores.png")


def rate_threshold(sources: list[np.ndarray], rate: float) -> float:
    """The threshold t at which the mean over ``sources`` of the share of values >= t is ``rate`` (each source, e.g.
    a dataset's healthy voxels, weighs the same however many values it has)."""
    ordered = [np.sort(np.asarray(values, dtype=np.float64)) for values in sources]

    def flagged(t: float) -> float:
        # (count of values >= t) / size: exact where the share is a round number (1 - k/n is not, by float noise)
        return float(np.mean([(len(v) - np.searchsorted(v, t, side="left")) / len(v) for v in ordered]))

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


def add_metrics(folder: Path, metrics: dict[str, dict]) -> None:
    """Add ``metrics`` (key -> summary) to the card in ``folder``, read afresh just before writing, so that runs
    side by side (compare, evaluate) never drop each other's entries."""
    card = read_card(folder)
    card.metrics.update(metrics)
    write_card(folder, card)

"""Learning normal from a user's own healthy reference volumes: references -> model-grid slices -> the fit of a
method that learns from references (``AnomalyMethod.fit_references``, PathoSCOPE's few-shot fit) -> a bundle in the
user's model folder. Used by the Slicer panel's "Learn normal from references" (and scriptable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .bundle import CARD_FILE, Bundle, bundled_models_dir, load_bundle, save_bundle
from .card import Preprocessing
from .errors import InputError
from .methods import build_method, method_class
from .pipeline import score_volume
from .preprocessing import PreparedVolume, prepare_volume
from .progress import CancelCallback, ProgressCallback, check_cancel, sub_progress
from .run_record import RunRecord, card_from_run
from .operating_point import PER_SCAN_MEANING
from .scoring import PIXEL_FPR, SLICE_FPR, TRAIN_MIN_BRAIN_SHARE, eligible_slices

# A reference in which the modality's intensity baseline flags a connected region of at least this many mL at its
# calibrated threshold probably holds a lesion; chosen on healthy and lesioned validation volumes, with its false-alarm
# rate on the healthy ones, in docs/analysis/lesion_check.md.
LESION_WARNING_ML = 10.0
# A reference is acquired in a plane when its slices are this much thicker than the in-plane spacing.
THICK_SLICE_RATIO = 2.0
# Without validation scans, thresholds come from the references themselves at scoring.PIXEL_FPR of their brain
# pixels and scoring.SLICE_FPR of their slices (in-sample, so on new healthy scans somewhat more is flagged); label
# maps are made per scan with the k the method's fit says (ReferenceFit.per_scan_k).


@dataclass(frozen=True)
class Reference:
    """One healthy reference volume; ``slices`` (first, last), inclusive input indices along the model's slice axis,
    restricts it to part of the volume."""

    name: str
    image: sitk.Image
    brain_mask: sitk.Image | None = None
    slices: tuple[int, int] | None = None


@dataclass
class FittedModel:
    """The new model's bundle and what the user should know about the references."""

    bundle: Bundle
    warnings: list[str] = field(default_factory=list)


def acquisition_plane(image: sitk.Image) -> str | None:
    """The plane a volume was acquired in when its slices are clearly thicker than its pixels, else None."""
    spacing = np.array(image.GetSpacing())
    thick = int(np.argmax(spacing))
    if spacing[thick] < THICK_SLICE_RATIO * np.delete(spacing, thick).max():
        return None
    world_axis = int(np.argmax(np.abs(np.array(image.GetDirection()).reshape(3, 3)[:, thick])))
    return {0: "sagittal", 1: "coronal", 2: "axial"}[world_axis]


def plane_warning(reference: Reference, plane: str) -> str | None:
    acquired = acquisition_plane(reference.image)
    if acquired is None or acquired == plane:
        return None
    return (f"{reference.name} was acquired in {acquired} slices ({max(reference.image.GetSpacing()):.1f} mm apart); "
            f"the model works on {plane} slices, so it learns from {reference.name} resampled across thick slices")


def largest_flagged_region_ml(maps: np.ndarray, mask: np.ndarray, threshold: float, grid: sitk.Image) -> float:
    """The volume in mL of the largest connected region of brain voxels whose map reaches ``threshold``, on the
    model grid (``grid`` gives its spacing)."""
    flagged = sitk.GetImageFromArray(((maps >= threshold) & mask).astype(np.uint8))
    flagged.SetSpacing(grid.GetSpacing())
    sizes = np.bincount(sitk.GetArrayFromImage(sitk.ConnectedComponent(flagged)).ravel())[1:]
    return float(sizes.max(initial=0)) * float(np.prod(grid.GetSpacing())) / 1000.0


def lesion_warning(reference: Reference, modality: str) -> str | None:
    """A warning when the modality's bundled intensity baseline finds a connected region of at least
    LESION_WARNING_ML at its threshold in the reference's slices (None when no such baseline exists)."""
    try:
        baseline = load_bundle(f"intensity-{modality.lower()}")
    except InputError:
        return None
    prepared = prepare_volume(reference.image, baseline.card.preprocessing, reference.brain_mask)
    scored = score_volume(build_method(baseline, torch.device("cpu")), prepared,
                          map_normalisation=baseline.card.map_normalisation)
    inside = prepared.mask & _in_range(prepared, reference.slices)[:, None, None]
    region = largest_flagged_region_ml(scored.maps, inside, baseline.card.thresholds["pixel"], prepared.model_grid)
    if region < LESION_WARNING_ML:
        return None
    look = "dark" if baseline.card.hyperparameters.get("sign") == "negative" else "bright"
    return (f"{reference.name}: a {region:.1f} mL region is unusually {look} for healthy {modality.upper()}; "
            "if it is a lesion, the model will learn that lesion as normal")


def _in_range(prepared: PreparedVolume, slices: tuple[int, int] | None) -> np.ndarray:
    """(N,) model slices within a reference's slice range (input indices along the slice axis), all without one."""
    if slices is None:
        return np.ones(len(prepared.slice_index), dtype=bool)
    return (prepared.slice_index >= slices[0]) & (prepared.slice_index <= slices[1])


def reference_slices(reference: Reference, pre: Preprocessing) -> tuple[PreparedVolume, np.ndarray]:
    """The reference prepared on the model grid, and which of its slices are training slices: (N,) True where a
    slice shows brain (TRAIN_MIN_BRAIN_SHARE) within the reference's slice range."""
    prepared = prepare_volume(reference.image, pre, reference.brain_mask)
    keep = eligible_slices(prepared.brain_area, TRAIN_MIN_BRAIN_SHARE) & _in_range(prepared, reference.slices)
    if not keep.any():
        where = "" if reference.slices is None else f" between slices {reference.slices[0]} and {reference.slices[1]}"
        raise InputError(f"reference {reference.name} shows no brain{where}")
    return prepared, keep


def reference_thresholds(bundle: Bundle, references: list[tuple[PreparedVolume, np.ndarray]],
                         per_scan_k: float) -> dict:
    """Pixel and slice thresholds at PIXEL_FPR / SLICE_FPR of the fitted model's maps on the references' training
    slices, each reference scored as ``detect`` scores a volume (``pipeline.score_volume``: the maps normalised over
    the volume as the card says), so the thresholds are in the units the model's maps will have."""
    method = build_method(bundle, torch.device("cpu"))
    pixels, scores = [], []
    for prepared, keep in references:
        scored = score_volume(method, prepared, map_normalisation=bundle.card.map_normalisation)
        pixels.append(scored.maps[prepared.mask & keep[:, None, None]])
        scores.append(scored.slice_scores[keep])
    return {"pixel": float(np.quantile(np.concatenate(pixels), 1.0 - PIXEL_FPR)), "pixel_fpr": PIXEL_FPR,
            "slice": float(np.quantile(np.concatenate(scores), 1.0 - SLICE_FPR)), "slice_fpr": SLICE_FPR,
            "per_scan_k": per_scan_k, "per_scan_meaning": PER_SCAN_MEANING,
            "calibrated_on": "the references themselves (in-sample, model grid); calibrate on healthy validation "
                             "scans with `python -m training calibrate` when you have them"}


def fit_references(references: list[Reference], name: str, models_dir: Path, modality: str,
                   pre: Preprocessing = Preprocessing(), method: str = "pathoscope",
                   progress: ProgressCallback | None = None, cancel: CancelCallback | None = None,
                   **options) -> FittedModel:
    """Fit ``method`` (one that learns from references) to ``references`` and save it as bundle ``name`` in
    ``models_dir`` (never over an existing model); ``options`` go to its ``fit_references`` (for PathoSCOPE:
    ``settings``, ``config``, ``backbone``, ``texture_dir``). Names, options and slice ranges are checked before the
    fit; nothing is written unless the fit completes (a cancel, also after training, saves nothing)."""
    report = progress or (lambda fraction, stage: None)
    learner = method_class(method)
    if learner.min_references == 0:
        raise InputError(f"method {method} does not learn from reference volumes")
    if len(references) < learner.min_references:
        raise InputError(f"learning normal needs at least {learner.min_references} healthy reference volumes; "
                         f"got {len(references)}")
    if len({r.name for r in references}) != len(references):
        raise InputError("the same reference volume was given twice")
    if not name or Path(name).name != name or name.startswith("."):
        raise InputError(f"model name {name!r} must be a plain folder name")
    folder = Path(models_dir) / name
    _check_new_model(folder)
    learner.check_reference_options(**options)

    report(0.0, "checking references")
    prepared = [reference_slices(reference, pre) for reference in references]
    slices = [volume.slices[keep] for volume, keep in prepared]
    masks = [volume.mask[keep] for volume, keep in prepared]
    ids = [reference.name for reference, (_, keep) in zip(references, prepared) for _ in range(int(keep.sum()))]
    warnings = [w for r in references for w in (plane_warning(r, pre.plane), lesion_warning(r, modality)) if w]
    result = learner.fit_references(torch.from_numpy(np.concatenate(slices)), torch.from_numpy(np.concatenate(masks)),
                                    ids, progress=sub_progress(report, 0.1, 0.95), cancel=cancel, **options)
    names = [r.name for r in references]
    run = RunRecord(method=method, config=result.hyperparameters, settings=result.settings,
                    source={"dataset": "reference volumes", "modality": modality.lower(),
                            "licence": "the user's own reference scans (their terms apply)",
                            "preprocessing": pre.to_dict()},
                    data=f"{len(references)} reference volumes ({', '.join(names)}), {result.record['slices']} slices",
                    seed=result.seed, device="cpu", seconds=result.record["seconds"], done=result.steps,
                    planned=result.steps, command="fit_references (Learn normal from references)",
                    losses=[result.record["final_losses"]], references=names,
                    notes={"fit": result.record, "warnings": warnings})
    card = card_from_run(run, name)
    card.thresholds = reference_thresholds(Bundle(card=card, state_dict=result.state_dict, path=folder), prepared,
                                           result.per_scan_k)
    check_cancel(cancel)
    report(0.95, "saving the model")
    _check_new_model(folder)  # again: another fit may have taken the name meanwhile
    save_bundle(folder, card, result.state_dict)
    report(1.0, "done")
    return FittedModel(bundle=load_bundle(folder), warnings=warnings)


def _check_new_model(folder: Path) -> None:
    if (folder / CARD_FILE).exists() or (bundled_models_dir() / folder.name / CARD_FILE).exists():
        raise InputError(f"a model named {folder.name} already exists; choose another name")


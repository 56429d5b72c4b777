"""A small reader of the BIDS layout (anatomical images of ``sub-*/[ses-*/]anat/``, filtered by entities) and the
names of our BIDS derivatives (``derivatives/medical-anomaly-detection/``). Only what cohort runs need: no index, no
metadata inheritance, no validation beyond what a file name must hold."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import InputError
from .outputs import OutputPaths
from .volume_io import write_outputs

PIPELINE = "medical-anomaly-detection"
BIDS_VERSION = "1.10.0"
# The BIDS suffix of each modality a model card names.
SUFFIX_FOR_MODALITY = {"flair": "FLAIR", "t1": "T1w", "t2": "T2w"}
_ENTITY = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9]+)$")
_NIFTI = (".nii.gz", ".nii")


@dataclass(frozen=True)
class BidsImage:
    """One image file of a BIDS dataset: its entities in file-name order (``sub`` first) and its suffix."""

    path: Path
    entities: tuple[tuple[str, str], ...]
    suffix: str

    @property
    def subject(self) -> str:
        return dict(self.entities)["sub"]

    @property
    def session(self) -> str | None:
        return dict(self.entities).get("ses")

    @property
    def stem(self) -> str:
        """The file name without its extension, e.g. ``sub-01_ses-1_FLAIR``."""
        return "_".join(f"{key}-{value}" for key, value in self.entities) + f"_{self.suffix}"

    def relative_folder(self) -> Path:
        """``sub-<label>/[ses-<label>/]anat``: where this image and its derivatives live in their datasets."""
        return Path(f"sub-{self.subject}", *([f"ses-{self.session}"] if self.session else []), "anat")


def parse_name(path: Path) -> BidsImage | None:
    """The entities and suffix of a BIDS NIfTI file name (``sub-01_acq-fast_FLAIR.nii.gz``), or None for a name
    that is not one."""
    name = path.name
    extension = next((e for e in _NIFTI if name.endswith(e)), None)
    if extension is None:
        return None
    *pairs, suffix = name[:-len(extension)].split("_")
    matches = [_ENTITY.match(pair) for pair in pairs]
    if not pairs or not all(matches) or not suffix.isalnum() or matches[0].group(1) != "sub":
        return None
    return BidsImage(path, tuple((m.group(1), m.group(2)) for m in matches), suffix)


def _labels(values: tuple[str, ...], key: str) -> set[str]:
    """Entity labels as given on the command line, with or without their ``key-`` prefix."""
    return {value[len(key) + 1:] if value.startswith(f"{key}-") else value for value in values}


def find_images(root: Path, suffix: str, subjects: tuple[str, ...] = (),
                sessions: tuple[str, ...] = ()) -> list[BidsImage]:
    """The anatomical images of the BIDS dataset at ``root`` with ``suffix`` (e.g. FLAIR), of the given subjects and
    sessions (all without), sorted by path. Files whose name disagrees with their folders are left out."""
    root = Path(root)
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"not a BIDS dataset (no dataset_description.json): {root}")
    wanted_subjects, wanted_sessions = _labels(subjects, "sub"), _labels(sessions, "ses")
    found = []
    for folder in sorted(list(root.glob("sub-*/anat")) + list(root.glob("sub-*/ses-*/anat"))):
        for path in sorted(folder.iterdir()):
            image = parse_name(path)
            if image is None or image.suffix != suffix or image.relative_folder() != folder.relative_to(root):
                continue
            if (wanted_subjects and image.subject not in wanted_subjects
                    or wanted_sessions and image.session not in wanted_sessions):
                continue
            found.append(image)
    if not found:
        chosen = ", ".join(f"{k} {' '.join(sorted(v))}" for k, v in (("subjects", wanted_subjects),
                                                                       ("sessions", wanted_sessions)) if v)
        raise InputError(f"no {suffix} images in the BIDS dataset {root}" + (f" for {chosen}" if chosen else ""))
    return found


def derivative_outputs(image: BidsImage, derivatives: Path) -> OutputPaths:
    """Our outputs for ``image`` under the derivative dataset ``derivatives``, named ``<source entities>_`` and
    ``desc-anomaly_map.nii.gz`` (its JSON sidecar is the report), ``desc-anomaly_mask.nii.gz``,
    ``desc-brain_mask.nii.gz``, ``desc-anomaly_slicescores.tsv``, ``desc-anomaly_regions.tsv``."""
    base = "_".join(f"{key}-{value}" for key, value in image.entities)
    return OutputPaths(Path(derivatives) / image.relative_folder(), anomaly_map=f"{base}_desc-anomaly_map.nii.gz",
                       label_map=f"{base}_desc-anomaly_mask.nii.gz", brain_mask=f"{base}_desc-brain_mask.nii.gz",
                       slice_scores=f"{base}_desc-anomaly_slicescores.tsv", regions=f"{base}_desc-anomaly_regions.tsv",
                       report=f"{base}_desc-anomaly_map.json")

def sidecar_fields(image: BidsImage, root: Path) -> dict:
    """What BIDS asks of a derivative's sidecar: where it came from."""
    return {"Description": "anomaly map of a model trained on healthy scans only (mad-detect)",
            "Sources": [f"bids:raw:{image.path.relative_to(root).as_posix()}"]}


def dataset_description(root: Path) -> dict:
    """A BIDS dataset's ``dataset_description.json`` (empty when it cannot be read)."""
    try:
        description = json.loads((Path(root) / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return description if isinstance(description, dict) else {}


def write_dataset_description(derivatives: Path, root: Path, model: str) -> Path:
    """The derivative dataset's ``dataset_description.json`` (DatasetType derivative, GeneratedBy, SourceDatasets),
    written atomically; the raw dataset's own description is never overwritten (an InputError)."""
    source_name = dataset_description(root).get("Name") or Path(root).name
    description = {"Name": f"{PIPELINE} outputs for {source_name}", "BIDSVersion": BIDS_VERSION,
                   "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": PIPELINE, "Version": __version__,
                                    "Description": f"mad-detect with model {model}"}],
                   "SourceDatasets": [{"URL": Path(root).resolve().as_uri()}],
                   "DatasetLinks": {"raw": Path(root).resolve().as_uri()}}
    path = derivatives / "dataset_description.json"
    write_outputs(derivatives, {path.name: lambda target: target.write_text(json.dumps(description, indent=2) + "\n")},
                  inputs=(Path(root) / "dataset_description.json",))
    return path

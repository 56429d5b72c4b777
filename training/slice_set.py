"""A set of preprocessed healthy slices, cached as .npz so training needs neither SimpleITK nor the raw data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from MedicalAnomalyDetectionLib.errors import InputError


@dataclass
class SliceSet:
    """Healthy training slices gathered from many cases (float16 to keep caches small)."""

    slices: np.ndarray  # (N, H, W) float16
    masks: np.ndarray  # (N, H, W) bool
    case_ids: list[str]  # one per slice
    source: dict  # dataset, split, modality, preprocessing (the card's dict), licence

    @property
    def cases(self) -> int:
        return len(set(self.case_ids))

    def describe(self) -> str:
        """The slices in words for a model card, e.g. "lgg_flair train (52 cases, 763 healthy slices)"."""
        return (f"{self.source.get('dataset', 'unknown')} {self.source.get('split', '')} "
                f"({self.cases} cases, {len(self.slices)} healthy slices)")

    def save(self, path: Path) -> None:
        np.savez_compressed(path, slices=self.slices, masks=self.masks, case_ids=np.array(self.case_ids),
                            source=np.array(json.dumps(self.source)))

    @classmethod
    def load(cls, path: Path) -> "SliceSet":
        """A cache written by :meth:`save` (``python -m training prepare``), or an InputError saying why not."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(slices=data["slices"], masks=data["masks"], case_ids=[str(c) for c in data["case_ids"]],
                           source=json.loads(str(data["source"])))
        except FileNotFoundError:
            raise InputError(f"slice cache not found: {path} (write one with `python -m training prepare`)") from None
        except (OSError, ValueError, KeyError) as error:
            raise InputError(f"{path} is not a slice cache of `python -m training prepare` "
                             f"({type(error).__name__}: {str(error)[:80]})") from None

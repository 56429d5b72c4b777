"""What one fit did (the run record, ``run.json`` in a run folder) and the one function that turns it into a model
card. Every way of fitting a model (``python -m training fit``, the few-shot fit from references in Slicer, the
few-shot tables) records its run here, so every card is assembled the same way."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .atomic import write_text_atomically
from .card import ModelCard, Preprocessing
from .errors import InputError
from .methods import method_class

RUN_FILE = "run.json"


@dataclass
class RunRecord:
    """A finished (or paused) fit: written once per fit, read by export."""

    method: str
    config: dict  # the method's hyper-parameters, as its card stores them
    settings: dict  # how it was fitted: epochs or steps, batch size, learning rate, ...
    source: dict  # training data: dataset, split, modality, licence, preprocessing (the card's dict)
    data: str  # the training data in words, e.g. "lgg_flair train (52 cases, 763 healthy slices)"
    seed: int
    device: str  # what it ran on, e.g. "cpu" or "NVIDIA H100 80GB HBM3"
    seconds: float
    done: int  # epochs (or steps) done
    planned: int  # epochs (or steps) asked for
    command: str  # the command line (or call) that made it
    losses: list[dict] = field(default_factory=list)  # the last entries of the loss history
    references: list[str] = field(default_factory=list)  # few-shot: the reference cases or volumes
    notes: dict = field(default_factory=dict)  # method-specific facts worth keeping in the card

    @property
    def modality(self) -> str:
        return str(self.source.get("modality", ""))

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.source["preprocessing"])

    def save(self, run_dir: Path) -> Path:
        """Write ``run.json`` into ``run_dir`` (atomically: never half-written)."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return write_text_atomically(run_dir / RUN_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord":
        path = Path(run_dir) / RUN_FILE
        if not path.is_file():
            raise InputError(f"not a finished run folder (no {RUN_FILE}): {run_dir}")
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as error:
            raise InputError(f"run record {path} is malformed: {error}") from None


def card_from_run(run: RunRecord, name: str, export_command: str = "", has_weights: bool = True) -> ModelCard:
    """The model card of a bundle made from ``run`` (thresholds, metrics and benchmarks are filled in later by
    calibration, evaluation and benchmarking)."""
    data_licence = str(run.source.get("licence", ""))
    non_commercial = "NC" in data_licence
    if not has_weights:
        weights = "none"
    elif non_commercial:
        weights = f"non-commercial (derived from training data under: {data_licence})"
    else:
        weights = f"derived from: {data_licence}"
    training = {"data": run.data, "fit_command": run.command, "export_command": export_command,
                "epochs": run.done, "seed": run.seed, "settings": run.settings, "seconds": run.seconds,
                "device": run.device, "final_losses": run.losses[-1] if run.losses else {}}
    if run.references:
        training["references"] = list(run.references)
    training.update(run.notes)
    return ModelCard(name=name, method=run.method, version=__version__, modality=run.modality,
                     preprocessing=run.preprocessing, hyperparameters=dict(run.config), training=training,
                     map_normalisation=method_class(run.method).map_normalisation,
                     licence={"weights": weights, "training_data": data_licence or "none",
                              "non_commercial": non_commercial})

"""Methods and their recipes are plug-ins: a toy method registered here goes through fit -> export -> detect with no
other file knowing about it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from MedicalAnomalyDetectionLib.bundle import Bundle, load_bundle
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.methods import (AnomalyMethod, SliceResult, applicable_ablations, build_method,
                                               method_class, method_names, register, with_overrides)
from MedicalAnomalyDetectionLib.methods.common import load_module
from MedicalAnomalyDetectionLib.run_record import RunRecord
from MedicalAnomalyDetectionLib.serialise import DictSerialisable
from training.cli import main
from training.loop import CHECKPOINT, save_checkpoint
from training.recipes import Recipe, recipe, recipe_names
from training.recipes import register as register_recipe
from training.recipes.base import RecipeSettings, RunOptions
from training.recipes.settings import option
from training.slice_set import SliceSet

from conftest import head_array, make_image


@dataclass(frozen=True)
class ToyConfig(DictSerialisable):
    """The toy has no settings besides its learned gain."""


@register
class ToyBrightness(AnomalyMethod):
    """Map = slice x a learned gain (one parameter); score = the map's maximum."""

    name: ClassVar[str] = "toy-brightness"
    Config = ToyConfig
    weights: ClassVar[tuple[str, ...]] = ("gain",)

    def __init__(self, gain: nn.Module) -> None:
        super().__init__(ToyConfig())
        self.gain = gain

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device) -> "ToyBrightness":
        cls.configure(bundle.card.hyperparameters)
        return cls(load_module(nn.Linear(1, 1, bias=False), bundle, "gain"))

    def score(self, slices: torch.Tensor, mask: torch.Tensor) -> SliceResult:
        with torch.no_grad():
            maps = slices.float() * self.gain.weight[0, 0] * mask
        return SliceResult(maps=maps, scores=maps.flatten(1).max(dim=1).values)


@dataclass(frozen=True, kw_only=True)
class ToySettings(RecipeSettings):
    gain: float = option(2.0, "the gain the toy learns")


@register_recipe
class ToyBrightnessRecipe(Recipe):
    name = ToyBrightness.name
    help = "test method"
    Settings = ToySettings

    @classmethod
    def fit(cls, settings: ToySettings, data: SliceSet | None, run_dir: Path, run: RunOptions = RunOptions(),
            command: str = "") -> RunRecord:
        gain = nn.Linear(1, 1, bias=False)
        nn.init.constant_(gain.weight, settings.gain)
        save_checkpoint({"modules": {"gain": gain.state_dict(), "scratch": {"x": torch.zeros(1)}}},
                        run_dir / CHECKPOINT)
        return RunRecord(method=cls.name, config={}, settings=settings.to_dict(), source=data.source,
                         data=data.describe(), seed=settings.seed, device="cpu", seconds=0.0, done=1, planned=1,
                         command=command)


def test_only_ablations_that_change_a_model_are_scored(tiny_bundle, tiny_bundle_dir, toy_dataset, tmp_path):
    assert tiny_bundle.card.hyperparameters.get("intensity_prior", 0.0) == 0.0
    # it has no intensity prior to take away
    assert set(applicable_ablations(tiny_bundle)) == {"ranking off", "top-2 ranking"}
    with_prior = with_overrides(tiny_bundle, {"intensity_prior": 0.1})
    assert set(applicable_ablations(with_prior)) == {"ranking off", "top-2 ranking", "no intensity prior"}
    with_prior.card.slice_score = "peak-z"  # slices scored by peak z: the patch ranking changes nothing
    assert set(applicable_ablations(with_prior)) == {"no intensity prior"}
    assert main(["evaluate", "--model", str(tiny_bundle_dir), "--dataset", str(toy_dataset), "--split", "test",
                 "--ablation", "no intensity prior", "--out", str(tmp_path / "r")]) == 1


def test_the_registries_know_the_shipped_methods():
    assert {"patchgan", "pathoscope", "intensity", "ae", "alocc", "ocsvm"} <= set(method_names())
    assert set(method_names()) >= set(recipe_names()) - {"toy-brightness"}
    assert recipe_names(few_shot=True) == ["pathoscope"]
    assert method_class("patchgan").weights == ("reconstructor",)
    assert method_class("patchgan").ablations["ranking off"] == {"ranking": {"ranking": False}}
    with pytest.raises(InputError, match="unknown method 'nope'"):
        method_class("nope")
    with pytest.raises(InputError, match="no training recipe"):
        recipe("nope")


def test_a_registered_method_goes_from_fit_to_detect(toy_dataset, tmp_path):
    cache, run, bundle_dir = tmp_path / "c.npz", tmp_path / "run", tmp_path / "bundle"
    assert main(["prepare", "--dataset", str(toy_dataset), "--modality", "flair", "--out", str(cache),
                 "--size", "32", "--spacing", "4"]) == 0
    assert main(["fit", "--method", "toy-brightness", "--data", str(cache), "--run-dir", str(run),
                 "--gain", "3"]) == 0
    record = RunRecord.load(run)
    assert record.settings == {"seed": 0, "gain": 3.0} and "--gain 3" in record.command
    assert main(["export", "--run", str(run), "--name", "toy", "--out", str(bundle_dir)]) == 0
    bundle = load_bundle(bundle_dir)
    assert set(bundle.state_dict) == {"gain.weight"}  # only the modules the method names, not "scratch"
    assert bundle.card.method == "toy-brightness" and bundle.card.licence["non_commercial"] is True
    result = detect(make_image(head_array()), bundle, threshold=1.0)
    brain_max = float(sitk.GetArrayFromImage(result.anomaly_map).max())
    plain = detect(make_image(head_array()), bundle, threshold=1.0,
                   method=ToyBrightness(nn.Linear(1, 1, bias=False).requires_grad_(False).apply(
                       lambda m: nn.init.constant_(m.weight, 1.0))))
    assert brain_max == pytest.approx(3.0 * float(sitk.GetArrayFromImage(plain.anomaly_map).max()), rel=1e-4)
    assert type(build_method(bundle, torch.device("cpu"))) is ToyBrightness


def test_export_refuses_a_checkpoint_without_the_methods_modules(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"modules": {"scratch": {"x": torch.zeros(1)}}}, run / CHECKPOINT)
    RunRecord(method="toy-brightness", config={}, settings={}, source={"preprocessing": {
        "plane": "axial", "size": [32, 32], "spacing_mm": 4.0, "normalisation": "percentile", "clip": [-1, 3]}},
        data="", seed=0, device="cpu", seconds=0.0, done=1, planned=1, command="").save(run)
    assert main(["export", "--run", str(run), "--name", "toy", "--out", str(tmp_path / "b")]) == 1
    assert not (tmp_path / "b").exists()


def test_run_records_round_trip_and_refuse_garbage(tmp_path):
    record = RunRecord(method="ae", config={"a": 1}, settings={}, source={}, data="d", seed=1, device="cpu",
                       seconds=1.5, done=2, planned=3, command="c", losses=[{"loss": 0.5}])
    record.save(tmp_path)
    assert RunRecord.load(tmp_path) == record
    (tmp_path / "run.json").write_text('{"method": "ae"}')
    with pytest.raises(InputError, match="malformed"):
        RunRecord.load(tmp_path)
    with pytest.raises(InputError, match="no run.json"):
        RunRecord.load(tmp_path / "missing")


def test_maps_of_the_toy_method_are_finite(tmp_path):
    """The toy's map through the core's one scoring pipeline keeps zero outside the brain."""
    from MedicalAnomalyDetectionLib.card import Preprocessing
    from MedicalAnomalyDetectionLib.pipeline import score_volume
    from MedicalAnomalyDetectionLib.preprocessing import prepare_volume

    prepared = prepare_volume(make_image(head_array()), Preprocessing(size=(32, 32), spacing_mm=4.0))
    gain = nn.Linear(1, 1, bias=False).requires_grad_(False)
    nn.init.constant_(gain.weight, 1.0)
    scores = score_volume(ToyBrightness(gain), prepared, batch_size=5)
    assert np.isfinite(scores.maps).all() and (scores.maps[~prepared.mask] == 0).all()
    assert scores.volume_score == pytest.approx(float(scores.slice_scores[scores.eligible].max()))


@pytest.mark.parametrize("name", [n for n in recipe_names() if n != "intensity"])
def test_the_command_line_of_a_fit_has_the_defaults_of_its_settings(name, tmp_path):
    """Each default lives in the recipe's settings dataclass; the generated command line must give the same."""
    from training.cli import _chosen_method, build_parser
    from training.recipes.settings import settings_from_args

    argv = ["fit", "--method", name, "--run-dir", str(tmp_path)]
    args = build_parser(_chosen_method(argv)).parse_args(argv)
    assert settings_from_args(recipe(name).Settings, args) == recipe(name).Settings()


def test_a_fit_is_called_from_python_with_typed_settings(toy_dataset, tmp_path):
    from training.recipes.patchgan import PatchGANSettings

    assert main(["prepare", "--dataset", str(toy_dataset), "--modality", "flair", "--out", str(tmp_path / "c.npz"),
                 "--size", "32", "--spacing", "4"]) == 0
    settings = PatchGANSettings(epochs=1, batch_size=4, widths=(4, 8), hole=8, recon_weight=0.5)
    record = recipe("patchgan").fit(settings, SliceSet.load(tmp_path / "c.npz"), tmp_path / "run")
    assert record.done == 1 and record.settings["recon_weight"] == 0.5 and record.config["widths"] == [4, 8]
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    with pytest.raises(TypeError):
        PatchGANSettings(epochs=1, width=(4, 8))  # a misspelt setting is refused, not ignored


def test_learning_from_references_is_asked_of_the_method_through_the_registry(tmp_path):
    from MedicalAnomalyDetectionLib.references import Reference, fit_references

    assert method_class("pathoscope").min_references == 2 and method_class("intensity").min_references == 0
    references = [Reference(f"h{i}", make_image(head_array(seed=i))) for i in range(2)]
    with pytest.raises(InputError, match="method intensity does not learn from reference volumes"):
        fit_references(references, "x", tmp_path, "flair", method="intensity")
    with pytest.raises(InputError, match="unknown method 'nope'"):
        fit_references(references, "x", tmp_path, "flair", method="nope")
    assert not any(tmp_path.iterdir())  # nothing written

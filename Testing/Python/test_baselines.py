"""The paper's baselines (AE, OCSVM, ALOCC) behind the method interface: they learn, flag what is unlike their
training data, export, and run through detect()."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from sklearn.svm import OneClassSVM

from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.methods.autoencoder import Autoencoder, AutoencoderConfig
from MedicalAnomalyDetectionLib.methods.ocsvm import OCSVMConfig, OneClassSVMMethod, RBFDecision
from training.recipes.ae import autoencoder_trainee
from training.recipes.ocsvm import fit_ocsvm
from training.cli import main
from training.loop import FitSettings, train
from training.slice_set import SliceSet

from conftest import head_array, make_image


def _smooth_slices(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0.3, 0.7, 32, dtype=np.float32)
    return np.stack([np.add.outer(base, base) / 2 + 0.02 * rng.standard_normal((32, 32)) for _ in range(count)])


def _with_spot(slices: np.ndarray, at: tuple[int, int] = (12, 12)) -> torch.Tensor:
    spotted = torch.from_numpy(slices.copy())
    spotted[:, at[0]:at[0] + 8, at[1]:at[1] + 8] += 1.0
    return spotted


def test_sizes_the_autoencoder_cannot_take_are_refused():
    with pytest.raises(InputError, match="not divisible by 16"):
        AutoencoderConfig().check_size((120, 128))
    with pytest.raises(InputError, match="odd"):
        AutoencoderConfig(map_smoothing=6)
    with pytest.raises(InputError, match="divisible by its grid"):
        OCSVMConfig(patch=12, patch_grid=8)


def test_rbf_decision_matches_scikit_learn():
    features = np.random.default_rng(0).standard_normal((200, 6))
    svm = OneClassSVM(kernel="rbf", gamma="scale", nu=0.1).fit(features)
    ours = RBFDecision(torch.from_numpy(svm.support_vectors_).float(), torch.from_numpy(svm.dual_coef_[0]),
                       torch.tensor(svm.intercept_[0]), torch.tensor(svm._gamma))
    probe = np.random.default_rng(1).standard_normal((50, 6)) * 1.5
    np.testing.assert_allclose(ours(torch.from_numpy(probe).float()).numpy(), svm.decision_function(probe),
                               atol=1e-4)


def test_ocsvm_flags_the_slice_and_the_patch_with_a_spot(tmp_path):
    healthy = _smooth_slices(40)
    data = SliceSet(slices=healthy.astype(np.float16), masks=np.ones(healthy.shape, bool), case_ids=["a"] * 40,
                    source={})
    config = OCSVMConfig(slice_pool=4, patch=8, patch_grid=4, nu=0.1)
    fit_ocsvm(data, config, tmp_path / "run")
    modules = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["modules"]
    method = OneClassSVMMethod(config, *(RBFDecision(**modules[name]) for name in ("slice_svm", "patch_svm")),
                               torch.device("cpu"))
    normal = torch.from_numpy(_smooth_slices(4, seed=9))
    spotted = _with_spot(_smooth_slices(4, seed=9), at=(20, 4))  # off centre: the map must land where the spot is
    result = method.score(torch.cat([normal, spotted]), torch.ones(8, 32, 32))
    assert result.scores[4:].min() > result.scores[:4].max()
    spotted_map = result.maps[4]
    assert spotted_map[20:28, 4:12].mean() > 2 * spotted_map[:12, 20:].mean()
    hottest = divmod(int(spotted_map.argmax()), 32)
    assert 16 <= hottest[0] < 32 and hottest[1] < 16


def test_autoencoder_residual_lights_up_a_spot(tmp_path):
    healthy = _smooth_slices(32)
    data = SliceSet(slices=healthy.astype(np.float16), masks=np.ones(healthy.shape, bool), case_ids=["a"] * 32,
                    source={})
    config = AutoencoderConfig(widths=(8, 16), latent_channels=4, map_smoothing=1)
    settings = FitSettings(epochs=25, batch_size=8, learning_rate=3e-3, checkpoint_every=25)
    trainee = autoencoder_trainee(config, settings, torch.device("cpu"), (32, 32))
    record = train(trainee, data, settings, tmp_path / "run", torch.device("cpu"))
    assert record.losses[-1]["loss_r"] < 0.05  # from ~0.33 in the first epoch
    method = Autoencoder(config, trainee.modules["autoencoder"], torch.device("cpu"))
    spotted = _with_spot(_smooth_slices(2, seed=5))
    result = method.score(torch.cat([torch.from_numpy(_smooth_slices(2, seed=5)), spotted]), torch.ones(4, 32, 32))
    assert result.scores[2:].min() > 1.5 * result.scores[:2].max()
    assert result.maps[2, 12:20, 12:20].mean() > 5 * result.maps[2, :, :8].mean()


@pytest.mark.parametrize("method", ["ae", "alocc", "ocsvm"])
def test_fit_export_and_detect_through_the_command_line(method, toy_dataset, tmp_path):
    cache, run, bundle_dir = tmp_path / "c.npz", tmp_path / "run", tmp_path / "bundle"
    assert main(["prepare", "--dataset", str(toy_dataset), "--modality", "flair", "--out", str(cache),
                 "--size", "32", "--spacing", "4"]) == 0
    options = {"ae": ["--epochs", "1", "--batch-size", "8", "--widths", "4", "8", "--device", "cpu"],
               "alocc": ["--epochs", "1", "--batch-size", "8", "--widths", "4", "8", "--device", "cpu"],
               "ocsvm": ["--patch", "8"]}[method]
    assert main(["fit", "--method", method, "--data", str(cache), "--run-dir", str(run), *options]) == 0
    assert main(["export", "--run", str(run), "--name", f"toy-{method}", "--out", str(bundle_dir)]) == 0
    # the toy's one healthy val case: at 1 % the OCSVM's threshold would not be positive (see calibrate)
    assert main(["calibrate", "--model", str(bundle_dir), "--dataset", str(toy_dataset), "--device", "cpu",
                 "--pixel-fpr", "0.001"]) == 0
    bundle = load_bundle(bundle_dir)
    assert bundle.card.method == method and bundle.card.thresholds["pixel"] > 0
    image = make_image(head_array())
    result = detect(image, bundle, device="cpu")
    assert result.anomaly_map.GetSize() == image.GetSize()
    assert np.isfinite(sitk.GetArrayFromImage(result.anomaly_map)).all()
    assert type(build_method(bundle, torch.device("cpu"))).name == method


def test_compare_writes_the_table_and_figures(toy_dataset, tiny_bundle_dir, intensity_bundle, tmp_path):
    main(["calibrate", "--model", str(tiny_bundle_dir), "--dataset", str(toy_dataset), "--device", "cpu"])
    out = tmp_path / "comparison"
    assert main(["compare", "--models", str(tiny_bundle_dir), str(intensity_bundle.path), "--data-root",
                 str(toy_dataset.parent), "--datasets", "toy", "--out", str(out), "--device", "cpu"]) == 0
    results = json.loads((out / "comparison.json").read_text())
    assert set(results) == {"tiny", "tiny (ranking off)", "tiny (top-2 ranking)", "intensity-tiny"}
    assert all(0.0 <= r["toy"]["slice_auroc"] <= 1.0 for r in results.values())
    assert results["intensity-tiny"]["toy"]["voxel_auroc"] > 0.9  # the toy lesion is the brightest thing
    table = (out / "comparison.md").read_text().splitlines()
    assert len(table) == 2 + 4 + 2 and table[0].startswith("| method | training budget | toy slice AUROC")
    assert table[-2].startswith("| position only: brain area | none | 0.") and table[-1].startswith("| position only: cent")
    assert {"brain_area", "centrality"} == set(results["intensity-tiny"]["toy"]["position_only_slice_auroc"])
    assert (out / "roc_toy.png").stat().st_size > 0 and (out / "scores_toy.png").stat().st_size > 0
    assert table[2].startswith("| tiny | none | ") and table[5].startswith("| intensity-tiny | none | ")
    written = (out / "comparison.md").read_text()
    (out / "comparison.md").unlink()
    assert main(["compare", "--models", str(tiny_bundle_dir), str(intensity_bundle.path), "--datasets", "toy",
                 "--out", str(out), "--table-only"]) == 0
    assert (out / "comparison.md").read_text() == written  # the same table again, from the JSON and the cards

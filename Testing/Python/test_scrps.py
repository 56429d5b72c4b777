"""SCRPS: retrieval (Eqs. 3-4) on hand-made latents, the swap (Eq. 5), the perceptual map, batched inversion, bad
input (VGG16 files, repositories, divergence), and the tiny configuration end to end: a GAN for a few iterations,
a repository of a few slices, a tiny encoder, export, calibrate, mad-detect and the Slicer Logic."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedicalAnomalyDetectionLib.bundle import load_bundle, save_bundle
from MedicalAnomalyDetectionLib.cli import main as detect_main
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.methods import build_method, method_class, with_overrides
from MedicalAnomalyDetectionLib.methods.scrps import SCRPS, InversionCache, SCRPSConfig, scaled_layers
from MedicalAnomalyDetectionLib.methods.scrps.inversion import invert, inversion_loss, perceptual_map, retrieve, swap
from MedicalAnomalyDetectionLib.networks.perceptual import DiscriminatorFeatures, VGG16Features, load_vgg16_state
from MedicalAnomalyDetectionLib.networks.stylegan2 import REDUCED, TINY, Generator
from training.cli import main
from training.slice_set import SliceSet

from conftest import head_array, make_image

TINY_FIT = ["--gan-config", "tiny", "--gan-iterations", "4", "--gan-batch-size", "4", "--encoder-steps", "3",
            "--encoder-batch", "4", "--encoder-widths", "8", "8", "8", "--encoder-hidden", "32",
            "--repository-slices", "6", "--repository-steps", "2", "--refine-steps", "2", "--device", "cpu",
            "--quiet"]


def _codes(*rows) -> torch.Tensor:
    """A (N, 4, 2) batch of W+ codes from rows of four 2-vectors: codes 0-1 are 'coarse', 2-3 'fine' (L1 = 2)."""
    return torch.tensor(rows, dtype=torch.float32)


# Test code: coarse along x, fine along y.
TEST = _codes([[1, 0], [1, 0], [0, 1], [0, 1]])
REPOSITORY = _codes(
    [[1, 0], [1, 0], [1, 1], [1, 1]],  # 0: coarse identical (cos 1), fine at 45 degrees (cos 0.707)
    [[1, 0.2], [1, 0.2], [0, 1], [0, 1]],  # 1: coarse close (cos 0.981), fine identical (cos 1)
    [[0, 1], [0, 1], [0, 5], [0, 5]],  # 2: coarse orthogonal (cos 0), fine identical (cos 1)
    [[-1, 0], [-1, 0], [0, -1], [0, -1]],  # 3: opposite everywhere
)


def test_scaled_layers_give_the_papers_defaults_for_twelve_codes():
    assert scaled_layers(12) == (6, 9) and scaled_layers(10) == (5, 7)
    config = SCRPSConfig(gan=REDUCED)
    assert (config.layer1, config.layer2, config.k1, config.k2) == (5, 7, 100, 20)
    assert SCRPSConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == SCRPSConfig(gan=REDUCED, l1=5, l2=7,
                                                                                          map_layers=(1, 2, 3))
    with pytest.raises(InputError, match="L2"):
        SCRPSConfig(gan=REDUCED, l2=11)
    with pytest.raises(InputError, match="K2"):
        SCRPSConfig(gan=REDUCED, k1=5, k2=10)


def test_coarse_to_fine_retrieval_keeps_the_coarse_candidates_then_ranks_their_fine_codes():
    found = retrieve(TEST, REPOSITORY, k1=2, k2=2, l1=2)
    # Eq. 3 keeps items 0 and 1 (coarse cos 1 and 0.98); item 2, with a perfect fine match, never enters.
    assert found.index.tolist() == [[1, 0]]
    fine = torch.tensor([1.0, 2 ** -0.5])
    torch.testing.assert_close(found.weights[0], fine / fine.sum())
    torch.testing.assert_close(found.codes[0], (found.weights[0][:, None, None] * REPOSITORY[[1, 0]]).sum(0))
    # K1 = 1: only item 0 survives the coarse stage.
    assert retrieve(TEST, REPOSITORY, k1=1, k2=1, l1=2).index.tolist() == [[0]]
    # One stage (Fig. 3a ablation) ranks by the whole code: item 1 (cos 0.99), then item 0 (0.82), then item 2 (0.71).
    assert retrieve(TEST, REPOSITORY, k1=3, k2=3, l1=2, retrieval="one-stage").index.tolist() == [[1, 0, 2]]
    # K1 and K2 beyond the repository are capped; a batch retrieves per slice.
    batch = retrieve(torch.cat([TEST, -TEST]), REPOSITORY, k1=100, k2=1, l1=2)
    assert batch.index.tolist() == [[1], [3]] and batch.weights.tolist() == [[1.0], [1.0]]


def test_swap_takes_the_first_l2_codes_from_the_slice_and_the_rest_from_the_combination():
    codes, combined = torch.zeros(2, 6, 3), torch.ones(2, 6, 3)
    swapped = swap(codes, combined, 4)
    assert swapped[:, :4].eq(0).all() and swapped[:, 4:].eq(1).all()
    assert swap(codes, combined, 0).eq(1).all() and swap(codes, combined, 6).eq(0).all()


def test_perceptual_map_is_zero_for_equal_or_rescaled_features_and_peaks_at_a_local_change():
    torch.manual_seed(0)
    features = DiscriminatorFeatures(TINY).eval()
    x = torch.rand(1, 1, 20, 16)
    changed = x.clone()
    changed[..., 12:16, 10:14] += 1.0
    with torch.no_grad():
        same = perceptual_map(features(x), features(x), (0, 1), (20, 16))
        scaled = perceptual_map(features(x), [2 * t for t in features(x)], (0, 1), (20, 16))
        moved = perceptual_map(features(x), features(changed), (0, 1), (20, 16))
    assert same.abs().max() == 0 and scaled.abs().max() < 1e-5  # channel-normalised features
    assert moved.shape == (1, 20, 16)
    assert moved[0, 12:16, 10:14].mean() > 3 * moved[0, :6, :6].mean()


def test_batched_inversion_equals_one_slice_at_a_time_and_lowers_eq1():
    torch.manual_seed(1)
    G, features = Generator(TINY).eval().requires_grad_(False), DiscriminatorFeatures(TINY).eval()
    features.requires_grad_(False)
    truth = G.mapping(torch.randn(3, TINY.z_dim))
    x = G.synthesis(truth).detach()
    start = G.mean_w().unsqueeze(0).repeat(3, 1, 1)
    together = invert(G, features, x, start, 15, 0.05, 10.0, snapshots=(0, 5))
    alone = [invert(G, features, x[i:i + 1], start[i:i + 1], 5, 0.05, 10.0)[5] for i in range(3)]
    torch.testing.assert_close(together[5], torch.cat(alone), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        target = features(x)
        before = inversion_loss(features, target, x, G.synthesis(together[0]), 10.0)
        after = inversion_loss(features, target, x, G.synthesis(together[15]), 10.0)
    assert (after < 0.5 * before).all()


def test_diverging_inversion_is_an_input_error():
    torch.manual_seed(2)
    G, features = Generator(TINY).eval().requires_grad_(False), DiscriminatorFeatures(TINY).eval()
    x = torch.rand(2, 1, 20, 16)
    start = torch.full((2, TINY.num_ws, TINY.w_dim), float("nan"))
    with pytest.raises(InputError, match="diverged"):
        invert(G, features, x, start, 3, 0.01, 10.0)


def test_vgg16_state_dicts_are_checked_key_by_key_and_never_unpickled(tmp_path):
    good = VGG16Features().state_dict()
    torch.save(good, tmp_path / "vgg.pt")
    loaded = load_vgg16_state(tmp_path / "vgg.pt")
    assert set(loaded) == set(good) and len(loaded) == 26
    torch.save({**good, "extra.weight": torch.zeros(1)}, tmp_path / "keys.pt")
    with pytest.raises(InputError, match="unexpected keys extra.weight"):
        load_vgg16_state(tmp_path / "keys.pt")
    torch.save({k: v for k, v in good.items() if k != "features.28.bias"}, tmp_path / "missing.pt")
    with pytest.raises(InputError, match="missing keys features.28.bias"):
        load_vgg16_state(tmp_path / "missing.pt")
    torch.save({**good, "features.0.weight": torch.zeros(64, 1, 3, 3)}, tmp_path / "shape.pt")
    with pytest.raises(InputError, match=r"features.0.weight is \(64, 1, 3, 3\)"):
        load_vgg16_state(tmp_path / "shape.pt")
    with open(tmp_path / "pickled.pt", "wb") as handle:
        pickle.dump({"features.0.weight": InputError("an object")}, handle)
    torch.save({"model": InputError("an object")}, tmp_path / "object.pt")
    with pytest.raises(InputError, match="unpickling"):
        load_vgg16_state(tmp_path / "object.pt")
    with pytest.raises(InputError):
        load_vgg16_state(tmp_path / "pickled.pt")
    taps = VGG16Features()(torch.rand(1, 1, 80, 64))
    assert [t.shape[1] for t in taps] == [64, 128, 256, 512, 512] and taps[-1].shape[-2:] == (5, 4)


# ------------------------------------------------------------------------------------------ the tiny configuration

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A T1 toy dataset (3 healthy train cases, 1 val, 2 test of which one has a bright cube), its slice cache at
    20 x 16, a tiny SCRPS fit and its bundle."""
    root = tmp_path_factory.mktemp("scrps")
    data = root / "toy"
    splits = {"train": ["t0", "t1", "t2"], "val": ["v0"], "test": ["s0", "s1"]}
    for split, cases in splits.items():
        for i, case in enumerate(cases):
            folder = data / case
            folder.mkdir(parents=True)
            array = head_array(blob=(12, 20, 26) if split == "test" and i else None, seed=sum(map(ord, case)))
            sitk.WriteImage(make_image(array), str(folder / "t1.nii.gz"))
            sitk.WriteImage(make_image((array > 0).astype(np.uint8)), str(folder / "brain.nii.gz"))
            sitk.WriteImage(make_image((array == 250.0).astype(np.uint8)), str(folder / "lesion.nii.gz"))
    (data / "dataset.json").write_text(json.dumps({"name": "toy", "licence": "CC BY-SA 3.0 test", "splits": splits}))
    cache = root / "cache.npz"
    assert main(["prepare", "--dataset", str(data), "--modality", "t1", "--out", str(cache), "--size", "20", "16",
                 "--spacing", "6"]) == 0
    run = root / "run"
    assert main(["fit", "--method", "scrps", "--data", str(cache), "--run-dir", str(run), *TINY_FIT]) == 0
    bundle = root / "bundle"
    assert main(["export", "--run", str(run), "--name", "toy-scrps", "--out", str(bundle)]) == 0
    return {"root": root, "data": data, "cache": cache, "run": run, "bundle": bundle}


def test_fit_export_calibrate_detect_end_to_end(tiny_run, tmp_path):
    bundle = load_bundle(tiny_run["bundle"])
    card = bundle.card
    assert card.method == "scrps" and card.licence["training_data"] == "CC BY-SA 3.0 test"
    assert (card.hyperparameters["l1"], card.hyperparameters["l2"], card.hyperparameters["refine_steps"]) == (3, 3, 2)
    stages = card.training["stages"]
    assert stages["repository"]["slices"] == 6 and stages["encoder"]["steps"] == 3 and stages["gan"]["iterations"] == 4
    assert {k.split(".")[0] for k in bundle.state_dict} == set(method_class("scrps").weights)
    assert bundle.state_dict["repository.codes"].shape == (6, TINY.num_ws, TINY.w_dim)
    assert main(["calibrate", "--model", str(tiny_run["bundle"]), "--dataset", str(tiny_run["data"]),
                 "--split", "val", "--device", "cpu"]) == 0
    bundle = load_bundle(tiny_run["bundle"])
    assert bundle.card.thresholds["pixel"] > 0
    result = detect(make_image(head_array()), bundle, device="cpu")
    assert np.isfinite(result.slice_scores).all() and result.volume_score > 0
    out = tmp_path / "out"
    volume = tmp_path / "head.nii.gz"
    sitk.WriteImage(make_image(head_array()), str(volume))
    assert detect_main([str(volume), "--model", str(tiny_run["bundle"]), "--output-dir", str(out),
                        "--device", "cpu"]) == 0
    assert json.loads((out / "report.json").read_text())["model"] == "toy-scrps"


def test_rerunning_the_fit_resumes_finished_stages_and_refuses_other_settings(tiny_run):
    run = tiny_run["run"]
    stages = [run / "gan" / "checkpoint.pt", run / "encoder.pt", run / "repository.pt"]
    written = [path.stat().st_mtime_ns for path in stages]
    encoder_before = torch.load(run / "encoder.pt", weights_only=True)["encoder"]
    assert main(["fit", "--method", "scrps", "--data", str(tiny_run["cache"]), "--run-dir", str(run), *TINY_FIT]) == 0
    assert [path.stat().st_mtime_ns for path in stages] == written  # finished stages are read, not redone
    after = torch.load(run / "checkpoint.pt", weights_only=True)["modules"]["encoder"]
    assert all(torch.equal(encoder_before[k], after[k]) for k in encoder_before)
    changed = list(TINY_FIT)
    changed[changed.index("--encoder-steps") + 1] = "5"
    assert main(["fit", "--method", "scrps", "--data", str(tiny_run["cache"]), "--run-dir", str(run),
                 *changed]) == 1


def test_bad_vgg_file_is_refused_before_anything_is_written(tiny_run, tmp_path):
    bad = tmp_path / "vgg.pt"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, bad)
    run = tmp_path / "run"
    assert main(["fit", "--method", "scrps", "--data", str(tiny_run["cache"]), "--run-dir", str(run),
                 *TINY_FIT, "--vgg16", str(bad)]) == 1
    assert not any(p.is_file() for p in run.rglob("*"))


def test_repository_that_does_not_match_the_generator_is_refused(tiny_run, tmp_path):
    bundle = load_bundle(tiny_run["bundle"])
    for codes, message in ((torch.zeros(4, TINY.num_ws + 1, TINY.w_dim), "L = 6 codes"),
                           (torch.zeros(4, TINY.num_ws, 2 * TINY.w_dim), "w_dim = 16"),
                           (torch.zeros(4, TINY.num_ws * TINY.w_dim), r"\(K, L, w_dim\)"),
                           (torch.full((4, TINY.num_ws, TINY.w_dim), float("nan")), "NaN")):
        state = {**bundle.state_dict, "repository.codes": codes}
        broken = load_bundle(save_bundle(tmp_path / f"b{len(message)}", bundle.card, state))
        with pytest.raises(InputError, match=message):
            build_method(broken, torch.device("cpu"))


def test_diverging_inversion_in_mad_detect_writes_nothing(tiny_run, tmp_path):
    bundle = load_bundle(tiny_run["bundle"])
    bundle.card.hyperparameters.update(refine_lr=1e20, refine_steps=3)
    bundle.card.thresholds = {"pixel": 1.0}
    broken = save_bundle(tmp_path / "diverging", bundle.card, bundle.state_dict)
    volume, out = tmp_path / "head.nii.gz", tmp_path / "out"
    sitk.WriteImage(make_image(head_array()), str(volume))
    assert detect_main([str(volume), "--model", str(broken), "--output-dir", str(out), "--device", "cpu"]) == 1
    assert not out.exists() or not any(out.iterdir())


def test_inversion_cache_reuses_codes_across_ablations(tiny_run):
    bundle = load_bundle(tiny_run["bundle"])
    method = build_method(bundle, torch.device("cpu"))
    cache = InversionCache(snapshots=(0, 1))
    method.inversion_cache = cache
    slices = torch.rand(3, 20, 16)
    mask = torch.ones(3, 20, 16, dtype=torch.bool)
    first = method.score(slices, mask)
    assert len(cache.codes) == 3 * 3  # steps 0, 1 and 2 of each slice
    variant = SCRPS.from_bundle(bundle, torch.device("cpu"))
    variant.config = SCRPSConfig.from_dict({**bundle.card.hyperparameters, "refine_steps": 1})
    variant.inversion_cache = cache
    cached = variant.score(slices, mask)
    assert len(cache.codes) == 9  # served from the snapshots
    torch.testing.assert_close(method.score(slices, mask).maps, first.maps)
    uncached = SCRPS.from_bundle(bundle, torch.device("cpu"))
    uncached.config = variant.config
    torch.testing.assert_close(uncached.score(slices, mask).maps, cached.maps)  # a snapshot = a shorter run


def test_every_ablation_builds_and_scores_on_a_generator_of_six_codes(tiny_run):
    bundle = load_bundle(tiny_run["bundle"])
    assert TINY.num_ws == 6
    slices, mask = torch.rand(2, 20, 16), torch.ones(2, 20, 16, dtype=torch.bool)
    maps = {}
    for name, change in SCRPS.ablations.items():
        maps[name] = build_method(with_overrides(bundle, change), torch.device("cpu")).score(slices, mask).maps
        assert torch.isfinite(maps[name]).all(), name
    plain = build_method(with_overrides(bundle, {"l2": TINY.num_ws}), torch.device("cpu")).score(slices, mask).maps
    torch.testing.assert_close(maps["no retrieval (plain inversion)"], plain)  # keeping every own code = no swap
    assert not torch.allclose(maps["L2=0 (swap off)"], plain)


def test_slicer_logic_runs_scrps_on_a_real_scene(tiny_run):
    pytest.importorskip("slicer")
    from slicer_fixtures import add_volume, new_scene

    from MedicalAnomalyDetectionSlicer.logic import MedicalAnomalyDetectionLogic

    scene, colours = new_scene()
    volume = add_volume(scene, head_array(), "T1 axial")
    steps = []
    outputs = MedicalAnomalyDetectionLogic().process(volume, model=tiny_run["bundle"], device="cpu",
                                                     threshold=0.5, progress=lambda fraction, stage: steps.append(stage))
    assert outputs.anomalyMap is not None and np.isfinite(outputs.volumeScore)
    assert "scoring slices" in steps
    del colours


def test_a_gan_of_another_contrast_is_refused_before_training(tiny_run, tmp_path, capsys):
    flair = SliceSet.load(tiny_run["cache"])
    flair.source["modality"] = "flair"
    flair.save(tmp_path / "flair.npz")
    run = tmp_path / "run"
    assert main(["fit", "--method", "scrps", "--data", str(tmp_path / "flair.npz"), "--run-dir", str(run),
                 "--gan", str(tiny_run["run"] / "gan"), *TINY_FIT]) == 1
    assert "was trained on T1 slices; --data holds FLAIR slices" in capsys.readouterr().err
    assert not any(p.is_file() for p in run.rglob("*"))
    shutil.copytree(tiny_run["run"] / "gan", run / "gan")  # a GAN this run folder began on T1 slices
    before = (run / "gan" / "checkpoint.pt").read_bytes()
    more = list(TINY_FIT)
    more[more.index("--gan-iterations") + 1] = "8"  # would continue training it
    assert main(["fit", "--method", "scrps", "--data", str(tmp_path / "flair.npz"), "--run-dir", str(run),
                 *more]) == 1
    assert f"the GAN in {run / 'gan'} was trained on T1 slices" in capsys.readouterr().err
    assert (run / "gan" / "checkpoint.pt").read_bytes() == before

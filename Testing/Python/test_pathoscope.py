"""PathoSCOPE: backbone loading, losses, anomaly synthesis, coreset, the few-shot fit and learning from references."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TINY_PRE, head_array, make_image

from MedicalAnomalyDetectionLib.bundle import Bundle, load_bundle
from MedicalAnomalyDetectionLib.card import ModelCard
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods.pathoscope.coreset import greedy_coreset
from MedicalAnomalyDetectionLib.methods.pathoscope.fit import (PAPER_TYPICAL_DISTANCE, TYPICAL_DISTANCE, FewShotSettings,
                                                   fit_pathoscope, pieg)
from MedicalAnomalyDetectionLib.methods.pathoscope.losses import local_distance, tritanh
from MedicalAnomalyDetectionLib.references import (Reference, acquisition_plane, fit_references,
                                                           lesion_warning, reference_slices)
from MedicalAnomalyDetectionLib.methods.pathoscope.synthesis import TextureBank, folder_textures, local_pathology, perlin_mask
from MedicalAnomalyDetectionLib.inference import detect
from MedicalAnomalyDetectionLib.pipeline import score_volume
from MedicalAnomalyDetectionLib.progress import Cancelled
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.networks.resnet18 import ResNet18Trunk, load_resnet18_state
from MedicalAnomalyDetectionLib.methods.pathoscope import Discriminator, PathoSCOPEConfig

TINY_SETTINGS = FewShotSettings(steps=3, batch_size=4, pool=8, pieg_steps=2, locations=8, max_anchors=64)
TINY_PATHOSCOPE = PathoSCOPEConfig(backbone_size=64, hidden=16)


def _references(count: int = 3) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Tiny healthy 'slices' (32 x 32) from head_array, two per reference."""
    slices, masks, ids = [], [], []
    for r in range(count):
        volume = head_array(shape_zyx=(6, 32, 32), blob=None, seed=r)
        for z in (2, 3):
            slices.append(volume[z] / 200.0)
            masks.append(volume[z] > 0)
            ids.append(f"ref{r}")
    return torch.from_numpy(np.stack(slices)), torch.from_numpy(np.stack(masks)), ids


def _torchvision_like_state(tmp_path, edit=None):
    state = ResNet18Trunk().state_dict()
    state["layer4.0.conv1.weight"] = torch.zeros(512, 256, 3, 3)
    state["fc.weight"] = torch.zeros(1000, 512)
    if edit:
        edit(state)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return path


def test_backbone_state_loads_a_torchvision_resnet18_and_ignores_layer4(tmp_path):
    state = load_resnet18_state(_torchvision_like_state(tmp_path))
    assert set(state) == set(ResNet18Trunk().state_dict())
    ResNet18Trunk().load_state_dict(state)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("layer2.0.conv1.weight"), "missing: layer2.0.conv1.weight"),
    (lambda s: s.__setitem__("layer3.1.conv2.weight", torch.zeros(256, 256, 1, 1)), "wrong shape"),
    (lambda s: s.__setitem__("head.weight", torch.zeros(3)), "unexpected: head.weight"),
])
def test_backbone_with_wrong_keys_or_shapes_is_refused(tmp_path, edit, message):
    with pytest.raises(InputError, match=message):
        load_resnet18_state(_torchvision_like_state(tmp_path, edit))


def test_backbone_that_needs_unpickling_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": torch.zeros(1), "why": object()}, handle)
    with pytest.raises(InputError, match="refusing"):
        load_resnet18_state(path)
    with pytest.raises(InputError, match="not found"):
        load_resnet18_state(tmp_path / "missing.pt")
    for name, content in (("empty.pt", b""), ("text.pt", b"hello, not weights")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match="corrupt or not a PyTorch file"):
            load_resnet18_state(tmp_path / name)


def test_tritanh_is_eq2_and_does_not_overflow():
    pull, push = torch.tensor([0.3, 2.0]), torch.tensor([1.0, 0.5])
    expected = (torch.exp(2 * pull) - torch.exp(3 * push) + 0.1) / (torch.exp(2 * pull) + torch.exp(3 * push) + 0.1)
    torch.testing.assert_close(tritanh(pull, push, 2.0, 3.0, 0.1), expected)
    huge = tritanh(torch.tensor([1000.0]), torch.tensor([0.0]), 1.0, 1.0, 1e-6)
    assert math.isclose(float(huge), 1.0, abs_tol=1e-6)
    assert float(tritanh(torch.tensor([0.0]), torch.tensor([1000.0]), 1.0, 1.0, 1e-6)) == pytest.approx(-1.0)


def test_local_distance_averages_over_the_masked_cells_only():
    anchors = torch.zeros(1, 2)
    embeddings = torch.zeros(2, 2, 2, 2)
    embeddings[0, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5, in the mask
    embeddings[0, 1, 1] = torch.tensor([30.0, 40.0])  # distance 50, outside it
    cells = torch.zeros(2, 2, 2, dtype=torch.bool)
    cells[0, 0, 0] = cells[0, 0, 1] = True
    torch.testing.assert_close(local_distance(embeddings, cells, anchors), torch.tensor([2.5, 0.0]))


def test_coreset_covers_every_cluster():
    generator = torch.Generator().manual_seed(0)
    clusters = torch.cat([torch.randn(50, 8) * 0.01 + c for c in (0.0, 10.0, -10.0)])
    chosen = greedy_coreset(clusters, 3, generator, projection_dim=4)
    assert sorted((chosen // 50).tolist()) == [0, 1, 2]


def test_synthetic_lesions_stay_inside_the_brain_and_change_only_their_region():
    generator = torch.Generator().manual_seed(1)
    slices, masks, _ = _references()
    textures = TextureBank(slices, masks)
    assert {"procedural", "healthy"} <= set(textures.sources)
    for index in range(len(slices)):
        lesioned, region = local_pathology(slices[index], masks[index].float(), textures, generator)
        assert not region[~masks[index]].any()
        torch.testing.assert_close(lesioned[region == 0], slices[index][region == 0])
    assert perlin_mask(torch.zeros(32, 32), generator).sum() == 0


def test_texture_folder_with_unreadable_or_foreign_files_is_refused(tmp_path):
    folder = tmp_path / "textures"
    folder.mkdir()
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (40, 40)).astype(np.uint8))
    sitk.WriteImage(image, str(folder / "ok.png"))
    assert len(folder_textures(folder)) == 1
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png"):
        folder_textures(folder)
    (folder / "broken.png").unlink()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="notes.txt"):
        folder_textures(folder)


def test_pieg_moves_at_most_noise_plus_t_eta_and_keeps_the_graph():
    generator = torch.Generator().manual_seed(0)
    healthy = torch.randn(2, 5, 384, requires_grad=True)
    settings = FewShotSettings(noise_std=0.0, eta=0.01, pieg_steps=4)
    synthetic = pieg(healthy, Discriminator(8), torch.randn(7, 384), settings, (1.0, 1.0), generator)
    moved = torch.linalg.vector_norm((synthetic - healthy).detach(), dim=-1)
    assert float(moved.max()) <= 4 * 0.01 * TYPICAL_DISTANCE / PAPER_TYPICAL_DISTANCE + 1e-5  # T steps of eta
    assert float(moved.min()) > 0
    synthetic.sum().backward()
    torch.testing.assert_close(healthy.grad, torch.ones_like(healthy))


def test_fit_gives_a_bundle_the_method_scores_with():
    slices, masks, ids = _references()
    result = fit_pathoscope(slices, masks, ids, TINY_PATHOSCOPE, TINY_SETTINGS)
    assert result.record["references"] == 3 and result.record["anchors"] >= 2
    card = ModelCard(name="tiny-pathoscope", method="pathoscope", version="test", modality="flair",
                     preprocessing=TINY_PRE, hyperparameters={**TINY_PATHOSCOPE.to_dict(),
                                                              "fit": TINY_SETTINGS.to_dict()})
    method = build_method(Bundle(card=card, state_dict=result.state_dict, path=None), torch.device("cpu"))
    scored = method.score(slices, masks)
    assert scored.maps.shape == slices.shape
    assert float(scored.maps[~masks].abs().max()) == 0.0
    assert 0.0 <= float(scored.maps.min()) and float(scored.maps.max()) <= 1.0
    torch.testing.assert_close(scored.scores, scored.maps.flatten(1).max(dim=1).values)


def test_fit_needs_two_references_and_can_be_cancelled():
    slices, masks, ids = _references()
    with pytest.raises(InputError, match="at least 2"):
        fit_pathoscope(slices, masks, ["one"] * len(ids), TINY_PATHOSCOPE, TINY_SETTINGS)
    with pytest.raises(Cancelled):
        fit_pathoscope(slices, masks, ids, TINY_PATHOSCOPE, TINY_SETTINGS, cancel=lambda: True)


def _volume(seed: int, blob=None, spacing=(3.0, 3.0, 3.0)) -> sitk.Image:
    return make_image(head_array(blob=blob, seed=seed), spacing=spacing)


def test_fit_references_saves_a_model_detect_uses_and_never_overwrites(tmp_path):
    references = [Reference(f"healthy{i}", _volume(i)) for i in range(2)]
    fitted = fit_references(references, "my-normal", tmp_path, "flair", pre=TINY_PRE, settings=TINY_SETTINGS,
                            config=TINY_PATHOSCOPE)
    card = fitted.bundle.card
    assert (card.method, card.modality) == ("pathoscope", "flair")
    assert card.map_normalisation == "volume" and card.thresholds["pixel_fpr"] == 0.01
    assert card.thresholds["per_scan_k"] == 2.5  # models fitted from references label per scan, as the bundled one
    assert 1.0 < card.thresholds["pixel"] < 10.0  # robust SDs above each volume's typical brain value
    assert card.training["references"] == ["healthy0", "healthy1"] and fitted.warnings == []
    # the threshold is in the units detect gives the maps: scored as detect scores them, 1 % of the references'
    # training-slice brain voxels lie above it
    method, flagged, voxels = build_method(fitted.bundle, torch.device("cpu")), 0, 0
    for reference in references:
        prepared, keep = reference_slices(reference, TINY_PRE)
        maps = score_volume(method, prepared, map_normalisation=card.map_normalisation).maps
        inside = maps[prepared.mask & keep[:, None, None]]
        flagged, voxels = flagged + int((inside > card.thresholds["pixel"]).sum()), voxels + inside.size
    assert flagged / voxels == pytest.approx(0.01, abs=0.002)
    assert load_bundle(tmp_path / "my-normal").card.sha256 == card.sha256
    patient = _volume(5, blob=(12, 20, 26))
    before = sitk.GetArrayFromImage(patient).copy()
    detection = detect(patient, fitted.bundle, device="cpu")
    assert sitk.GetArrayViewFromImage(detection.anomaly_map).shape == before.shape
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(patient), before)
    with pytest.raises(InputError, match="already exists"):
        fit_references(references, "my-normal", tmp_path, "flair", pre=TINY_PRE, settings=TINY_SETTINGS,
                       config=TINY_PATHOSCOPE)


def test_mad_detect_runs_a_fitted_model(tmp_path):
    from MedicalAnomalyDetectionLib.cli import main

    fit_references([Reference(f"h{i}", _volume(i)) for i in range(2)], "cli-model", tmp_path, "flair",
                   pre=TINY_PRE, settings=TINY_SETTINGS, config=TINY_PATHOSCOPE)
    sitk.WriteImage(_volume(7, blob=(12, 20, 26)), str(tmp_path / "case.nii.gz"))
    out = tmp_path / "out"
    assert main([str(tmp_path / "case.nii.gz"), "--model", str(tmp_path / "cli-model"), "--output-dir", str(out),
                 "--device", "cpu"]) == 0
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "anomaly_label.nii.gz")))
    anomaly = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "anomaly_map.nii.gz")))
    threshold = json.loads((out / "report.json").read_text())["threshold"]  # per scan, from this volume's map
    assert threshold != load_bundle(tmp_path / "cli-model").card.thresholds["pixel"]
    np.testing.assert_array_equal(label, (anomaly >= np.float32(threshold)).astype(np.uint8))


def test_fit_references_refuses_too_few_and_warns_of_lesions_and_thick_slices(tmp_path):
    with pytest.raises(InputError, match="at least 2"):
        fit_references([Reference("only", _volume(0))], "x", tmp_path, "flair", pre=TINY_PRE)
    with pytest.raises(InputError, match="no brain between slices 100 and 120"):
        fit_references([Reference("a", _volume(0), slices=(100, 120)), Reference("b", _volume(1))], "x", tmp_path,
                       "flair", pre=TINY_PRE, settings=TINY_SETTINGS, config=TINY_PATHOSCOPE)
    assert not (tmp_path / "x").exists()
    bad = tmp_path / "bad-textures"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    healthy = [Reference("a", _volume(0)), Reference("b", _volume(1))]
    with pytest.raises(InputError, match="broken.png"):
        fit_references(healthy, "textured", tmp_path, "flair", pre=TINY_PRE, settings=TINY_SETTINGS,
                       config=TINY_PATHOSCOPE, texture_dir=bad)
    (tmp_path / "resnet.pt").write_bytes(b"")
    with pytest.raises(InputError, match="corrupt"):
        fit_references(healthy, "backboned", tmp_path, "flair", pre=TINY_PRE, backbone=tmp_path / "resnet.pt")
    assert not (tmp_path / "textured").exists() and not (tmp_path / "backboned").exists()

    assert acquisition_plane(_volume(1, spacing=(1.0, 1.0, 5.0))) == "axial"
    sagittal = make_image(head_array(seed=1), spacing=(1.0, 1.0, 5.0), direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))
    assert acquisition_plane(sagittal) == "sagittal"
    tumour = head_array(seed=0)
    tumour[8:16, 14:22, 18:26] = 250.0  # 8 x 8 x 8 voxels of 3 mm: 13.8 mL, above LESION_WARNING_ML
    lesioned = Reference("lesioned", make_image(tumour))
    references = [lesioned, Reference("thick", sagittal)]
    fitted = fit_references(references, "warned", tmp_path, "flair", pre=TINY_PRE, settings=TINY_SETTINGS,
                            config=TINY_PATHOSCOPE)
    assert any(re.match(r"lesioned: a \d+\.\d mL region is unusually bright", w) and "learn that lesion as normal" in w
               for w in fitted.warnings)
    assert any(w.startswith("thick was acquired in sagittal slices") for w in fitted.warnings)
    assert lesion_warning(Reference("small", _volume(0, blob=(12, 20, 26))), "flair") is None  # 6.6 mL: no
    assert lesion_warning(replace(lesioned, slices=(17, 23)), "flair") is None  # the tumour left out of the range


def _slice_set() -> "SliceSet":
    from training.slice_set import SliceSet

    slices, masks, ids = _references(4)
    return SliceSet(slices=slices.numpy().astype(np.float16), masks=masks.numpy(), case_ids=ids,
                    source={"dataset": "toy", "split": "train", "modality": "flair", "licence": "CC BY-NC test",
                            "cases": 4, "preprocessing": TINY_PRE.to_dict()})


def test_shots_are_drawn_per_case_and_reproducibly():
    from training.recipes.pathoscope import draw_shots

    data = _slice_set()
    index, drawn = draw_shots(data, 2, seed=3)
    again, drawn_again = draw_shots(data, 2, seed=3)
    np.testing.assert_array_equal(index, again)
    assert drawn == drawn_again and len(drawn) == 2
    assert sorted({data.case_ids[i] for i in index}) == drawn and len(index) == 4  # both slices of each case
    one, _ = draw_shots(data, 3, seed=0, slices_per_shot=1)
    assert len(one) == 3
    for shots in (1, 5):
        with pytest.raises(InputError, match="--shots"):
            draw_shots(data, shots, seed=0)


def test_a_fitted_run_exports_to_a_bundle_that_loads(tmp_path):
    from training.cli import main
    from training.recipes.pathoscope import fit_shots, run_record, save_run

    data = _slice_set()
    result, drawn = fit_shots(data, 2, TINY_PATHOSCOPE, TINY_SETTINGS)
    save_run(result, tmp_path / "run")
    run_record(result, drawn, TINY_PATHOSCOPE, TINY_SETTINGS, data, "test").save(tmp_path / "run")
    assert main(["export", "--run", str(tmp_path / "run"), "--name", "ps", "--out", str(tmp_path / "ps")]) == 0
    bundle = load_bundle(tmp_path / "ps")
    assert bundle.card.method == "pathoscope" and bundle.card.licence["non_commercial"] is True
    assert ", ".join(drawn) in bundle.card.training["data"]
    slices, masks, _ = _references(1)
    assert build_method(bundle, torch.device("cpu")).score(slices, masks).maps.shape == slices.shape


def test_pro_is_one_for_perfect_maps_and_the_mean_fpr_for_random_ones():
    from training.metrics import pro_auc

    rng = np.random.default_rng(0)
    regions = np.zeros(20000, dtype=int)
    regions[:600], regions[600:900] = 1, 2
    perfect = rng.random(20000)
    perfect[:900] += 2
    assert pro_auc([regions], [perfect]) > 0.99
    assert pro_auc([regions], [rng.random(20000)]) == pytest.approx(0.15, abs=0.03)
    one_region = rng.random(20000)
    one_region[:600] += 2  # the large region found, the small one missed: each region counts once
    assert pro_auc([regions], [one_region]) == pytest.approx(0.575, abs=0.04)
    assert pro_auc([np.zeros(10, dtype=int)], [rng.random(10)]) is None
    tied = np.where(rng.random(20000) < 0.8, 0.0, rng.random(20000))  # most healthy scores exactly 0
    tied[:900] = 2.0
    assert pro_auc([regions], [tied]) > 0.99


def test_fewshot_table_fills_results_and_refuses_other_settings(tmp_path, toy_dataset):
    from training.fewshot_eval import run_fewshot_table
    from training.recipes import recipe

    out = tmp_path / "fewshot"
    args = dict(datasets=["toy"], shots=[2], draws=1, ablation_draws=1, ablation_dataset="toy", baselines=[],
                out=out, command="test")
    tiny = {k: v for k, v in TINY_SETTINGS.to_dict().items() if k != "seed"}
    results = run_fewshot_table(recipe("pathoscope"), _slice_set(), toy_dataset.parent, settings=tiny, **args)
    variants = {key.split("|")[0] for key in results if "|" in key}
    assert variants == {"PathoSCOPE L_LC + L_GC", "PathoSCOPE L_LC", "PathoSCOPE L_GC"}
    entry = results["PathoSCOPE L_LC + L_GC|2|0|toy"]
    assert 0.0 <= entry["slice_auroc"] <= 1.0 and len(entry["shots"]) == 2
    table = (out / "table.md").read_text()
    assert "| PathoSCOPE (1) | 2 |" in table and "| L_GC |" in table
    with pytest.raises(InputError, match="other fit settings"):
        run_fewshot_table(recipe("pathoscope"), _slice_set(), toy_dataset.parent, settings={**tiny, "steps": 4},
                          **args)

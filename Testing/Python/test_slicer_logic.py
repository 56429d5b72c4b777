"""The Slicer module's Logic against a real MRML scene from the ``slicer-core`` wheel (skipped without it)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from conftest import head_array, make_image  # noqa: E402
from slicer_fixtures import add_volume, ijk_to_ras, new_scene, node_ids  # noqa: E402

from MedicalAnomalyDetectionLib import catalogue  # noqa: E402
from MedicalAnomalyDetectionLib.bundle import WEIGHTS_FILE, load_bundle, read_card, save_bundle  # noqa: E402
from MedicalAnomalyDetectionLib.errors import InputError  # noqa: E402
from MedicalAnomalyDetectionLib.findings import COLUMNS as FINDINGS_COLUMNS, find_regions  # noqa: E402
from MedicalAnomalyDetectionLib.inference import detect, label_from_map  # noqa: E402
from MedicalAnomalyDetectionLib.modality import described_modalities  # noqa: E402
from MedicalAnomalyDetectionLib.catalogue import pending_download  # noqa: E402
from MedicalAnomalyDetectionLib.progress import Cancelled  # noqa: E402
from MedicalAnomalyDetectionSlicer.conversion import LPS_FROM_RAS, imageFromVolume, maskFromNode  # noqa: E402
from MedicalAnomalyDetectionSlicer.logic import (FINDINGS_RAS_COLUMNS, REFERENCE_ROLES,  # noqa: E402
                                                 MedicalAnomalyDetectionLogic, SCORE_COLUMN, SLICE_COLUMN,
                                                 VOXELS_COLUMN)
from MedicalAnomalyDetectionSlicer.worker import Worker  # noqa: E402
from weights_server import closed_port, serving  # noqa: E402

# An LPS-aligned volume as most scanners write it: I runs to the left, J to posterior (RAS directions -1, -1, 1).
LPS_AXES = np.diag([-1.0, -1.0, 1.0])
ORIGIN_RAS = (90.0, 120.0, -30.0)
BLOB = (12, 20, 26)  # K, J, I of the bright cube in head_array()


@pytest.fixture
def scene():
    scene, colours = new_scene()
    yield scene
    del colours


@pytest.fixture
def volume(scene):
    return add_volume(scene, head_array(), "FLAIR axial", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES)


def two_lesions() -> np.ndarray:
    """head_array() with a second, smaller bright cube: two findings at the intensity model's threshold."""
    array = head_array()
    array[5:8, 10:13, 10:13] = 250.0
    return array


# A catalogued model whose weights are a release asset, served from 127.0.0.1 (or from nowhere) ---------------------

def release(models_dir: Path, bundle_dir: Path, monkeypatch, base_url: str) -> bytes:
    """Copy ``bundle_dir`` into the package's models folder ``models_dir`` as a released catalogued model: its card
    only, the catalogue rewritten (weight-free models there stay bundled), the weights returned for a server at
    ``base_url`` (``$MAD_MODEL_BASE_URL``, as a mirror) to offer as ``/<name>-<version>.pt``."""
    name = read_card(bundle_dir).name
    shutil.copytree(bundle_dir, models_dir / name)
    catalogue.write_catalogue(models_dir)
    weights = (models_dir / name / WEIGHTS_FILE).read_bytes()
    (models_dir / name / WEIGHTS_FILE).unlink()
    monkeypatch.setenv("MAD_MODELS_DIR", str(models_dir))
    monkeypatch.setenv(catalogue.BASE_URL_ENV, base_url)
    return weights


def _mask_array(shape=(24, 40, 40)) -> np.ndarray:
    return (head_array(shape, blob=None) > 0).astype(np.uint8)


def _array(node) -> np.ndarray:
    return slicer.util.arrayFromVolume(node).copy()


def test_conversion_keeps_oblique_geometry(scene):
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    node = add_volume(scene, head_array(), spacing=(1.5, 2.0, 3.0), origin_ras=(10, -20, 5), directions_ras=rotation)
    image = imageFromVolume(node)
    ras = ijk_to_ras(node)
    for ijk in [(0, 0, 0), (39, 0, 0), (5, 17, 23)]:
        expected_lps = LPS_FROM_RAS @ (ras @ [*ijk, 1.0])[:3]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(ijk), expected_lps, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), _array(node))


def test_outputs_match_the_core_on_the_input_grid(scene, volume, intensity_bundle):
    before = _array(volume)
    outputs = MedicalAnomalyDetectionLogic().process(volume, model=intensity_bundle.path)

    np.testing.assert_array_equal(_array(volume), before)
    for node in (outputs.anomalyMap, outputs.anomalyLabel):
        np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(volume))
        assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()

    # The same volume given to the core directly, with the equivalent LPS geometry.
    expected = detect(make_image(head_array(), origin=(-90.0, -120.0, -30.0)), intensity_bundle)
    anomaly = _array(outputs.anomalyMap)
    np.testing.assert_allclose(anomaly, sitk.GetArrayViewFromImage(expected.anomaly_map), atol=1e-5)
    label = _array(outputs.anomalyLabel)
    np.testing.assert_array_equal(label, (anomaly >= intensity_bundle.card.thresholds["pixel"]).astype(np.uint8))
    assert label.sum() == outputs.anomalousVoxels > 0

    table = outputs.sliceTable
    slices = slicer.util.arrayFromTableColumn(table, SLICE_COLUMN)
    order = np.argsort(expected.slice_index)
    np.testing.assert_array_equal(slices, expected.slice_index[order])
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, SCORE_COLUMN),
                               expected.slice_scores[order], rtol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromTableColumn(table, VOXELS_COLUMN),
                                  label.sum(axis=(1, 2))[slices])
    assert outputs.chart.GetNthPlotSeriesNode(0).GetTableNodeID() == table.GetID()
    assert outputs.volumeScore == pytest.approx(expected.volume_score)
    assert outputs.mostAnomalousSlice == expected.most_anomalous_slice
    assert abs(outputs.mostAnomalousSlice - BLOB[0]) <= 2  # within the bright cube
    assert outputs.device == "cpu"


def test_lesion_scores_higher_than_the_rest_of_the_head(scene, volume, tiny_bundle_dir):
    outputs = MedicalAnomalyDetectionLogic().process(volume, model=tiny_bundle_dir, device="cpu")
    anomaly = _array(outputs.anomalyMap)
    lesion = np.zeros(anomaly.shape, bool)
    z, y, x = BLOB
    lesion[z - 2:z + 3, y - 3:y + 4, x - 3:x + 4] = True
    head = _mask_array() > 0
    assert anomaly[lesion].mean() > anomaly[head & ~lesion].mean()
    display = outputs.anomalyMap.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat"
    assert display.GetWindowLevelMax() == pytest.approx(2 * outputs.threshold)


def test_second_run_reuses_the_output_nodes(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    first = logic.process(volume, model=intensity_bundle.path)
    ids = node_ids(scene)
    second = MedicalAnomalyDetectionLogic().process(volume, model=intensity_bundle.path, threshold=1.5)
    assert node_ids(scene) == ids
    assert second.anomalyMap is first.anomalyMap and second.sliceTable is first.sliceTable
    assert _array(second.anomalyLabel).sum() == second.anomalousVoxels > first.anomalousVoxels


def test_given_output_nodes_are_used(scene, volume, intensity_bundle):
    chosen = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my map")
    outputs = MedicalAnomalyDetectionLogic().process(volume, model=intensity_bundle.path, outputMap=chosen)
    assert outputs.anomalyMap is chosen
    assert volume.GetNodeReference(REFERENCE_ROLES["map"]) is chosen


def test_cancel_leaves_the_scene_as_it_was(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    with pytest.raises(Cancelled):
        logic.process(volume, model=intensity_bundle.path, cancel=lambda: True)
    assert volume.GetNodeReference(REFERENCE_ROLES["map"]) is None

    outputs = logic.process(volume, model=intensity_bundle.path)
    ids, previous = node_ids(scene), _array(outputs.anomalyMap)
    with pytest.raises(Cancelled):
        logic.process(volume, model=intensity_bundle.path, threshold=9.0, cancel=lambda: True)
    assert node_ids(scene) == ids
    np.testing.assert_array_equal(_array(outputs.anomalyMap), previous)


def test_cancel_adds_no_node(scene, volume, intensity_bundle):
    ids = node_ids(scene)
    with pytest.raises(Cancelled):
        MedicalAnomalyDetectionLogic().process(volume, model=intensity_bundle.path, cancel=lambda: True)
    assert node_ids(scene) == ids


def test_deleted_output_is_recreated(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    first = logic.process(volume, model=intensity_bundle.path)
    scene.RemoveNode(first.anomalyLabel)
    second = logic.process(volume, model=intensity_bundle.path)
    assert second.anomalyLabel.GetScene() is scene and second.anomalyLabel is not first.anomalyLabel
    assert second.anomalyMap is first.anomalyMap
    assert _array(second.anomalyLabel).sum() == second.anomalousVoxels > 0


def test_relabel_rethresholds_without_new_nodes(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    outputs = logic.process(volume, model=intensity_bundle.path)
    ids, anomaly, before = node_ids(scene), _array(outputs.anomalyMap), outputs.anomalousVoxels
    relabelled = logic.relabel(1.5)
    label = _array(outputs.anomalyLabel)
    np.testing.assert_array_equal(label, (anomaly >= 1.5).astype(np.uint8))
    assert relabelled.anomalousVoxels == label.sum() > before > 0
    assert relabelled.threshold == 1.5
    assert slicer.util.arrayFromTableColumn(outputs.sliceTable, VOXELS_COLUMN).sum() == label.sum()
    assert node_ids(scene) == ids
    np.testing.assert_array_equal(_array(outputs.anomalyMap), anomaly)
    with pytest.raises(InputError):
        logic.relabel(0.0)


def test_relabel_before_detect_is_a_clear_error():
    with pytest.raises(InputError, match="run Detect first"):
        MedicalAnomalyDetectionLogic().relabel(1.0)


def test_label_map_mask_on_another_grid_is_a_clear_error(scene, volume, intensity_bundle):
    mask = add_volume(scene, _mask_array((24, 40, 40)), "brain", spacing=(2.0, 3.0, 3.0),
                      directions_ras=LPS_AXES, class_name="vtkMRMLLabelMapVolumeNode")
    ids = node_ids(scene)
    with pytest.raises(InputError, match="another grid"):
        MedicalAnomalyDetectionLogic().process(volume, model=intensity_bundle.path, brainMask=mask)
    assert node_ids(scene) == ids


def test_inputs_are_never_used_as_outputs(scene, volume, intensity_bundle):
    mask = add_volume(scene, _mask_array(), "brain", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES,
                      class_name="vtkMRMLLabelMapVolumeNode")
    volume_before, mask_before, ids = _array(volume).copy(), _array(mask).copy(), node_ids(scene)
    logic = MedicalAnomalyDetectionLogic()
    for outputs in ({"outputMap": volume}, {"outputLabel": mask}):
        with pytest.raises(InputError, match="is an input of this run"):
            logic.process(volume, model=intensity_bundle.path, brainMask=mask, **outputs)
    np.testing.assert_array_equal(_array(volume), volume_before)
    np.testing.assert_array_equal(_array(mask), mask_before)
    assert node_ids(scene) == ids


def test_segmentation_mask_matches_label_map_mask(scene, volume, intensity_bundle):
    label = add_volume(scene, _mask_array(), "brain", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES,
                       class_name="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, segmentation)
    logic = MedicalAnomalyDetectionLogic()
    with_label = _array(logic.process(volume, model=intensity_bundle.path, brainMask=label).anomalyMap)
    ids = node_ids(scene)
    with_segmentation = _array(logic.process(volume, model=intensity_bundle.path, brainMask=segmentation).anomalyMap)
    assert node_ids(scene) == ids  # the temporary export node and its display/colour nodes are gone
    np.testing.assert_allclose(with_segmentation, with_label, atol=1e-6)


def test_bad_inputs_are_clear_errors(scene, volume, intensity_bundle):
    label = add_volume(scene, _mask_array(), "brain", class_name="vtkMRMLLabelMapVolumeNode")
    logic = MedicalAnomalyDetectionLogic()
    with pytest.raises(InputError, match="not a label map"):
        logic.process(label, model=intensity_bundle.path)
    with pytest.raises(InputError, match="device"):
        logic.process(volume, model=intensity_bundle.path, device="gpu")
    with pytest.raises(InputError, match="model bundle not found"):
        logic.process(volume, model="no-such-model")
    constant = add_volume(scene, np.ones((24, 40, 40), np.float32), "flat")
    with pytest.raises(InputError, match="constant"):
        logic.process(constant, model=intensity_bundle.path)


def test_outputs_go_beside_the_input_in_the_subject_hierarchy(scene, volume, intensity_bundle):
    hierarchy = scene.GetSubjectHierarchyNode()
    study = hierarchy.CreateStudyItem(hierarchy.GetSceneItemID(), "study")
    hierarchy.CreateItem(study, volume)
    outputs = MedicalAnomalyDetectionLogic().process(volume, model=intensity_bundle.path)
    for node in (outputs.anomalyMap, outputs.anomalyLabel, outputs.sliceTable, outputs.chart):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study


def test_outputs_follow_the_input_transform(scene, volume, intensity_bundle):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    outputs = MedicalAnomalyDetectionLogic().process(volume, model=intensity_bundle.path)
    assert outputs.anomalyMap.GetTransformNodeID() == transform.GetID()
    assert outputs.anomalyLabel.GetTransformNodeID() == transform.GetID()


@pytest.mark.parametrize("name, warned", [("T1 MPRAGE", True), ("t2_tse", True), ("FLAIR axial", False),
                                          ("T2-FLAIR", False), ("volume 7", False)])
def test_modality_mismatch_is_a_warning(scene, intensity_bundle, name, warned):
    node = add_volume(scene, head_array(), name)
    outputs = MedicalAnomalyDetectionLogic().process(node, model=intensity_bundle.path)
    assert bool(outputs.warnings) is warned
    if warned:
        assert "FLAIR" in outputs.warnings[0]


def test_described_modalities():
    assert described_modalities("3: AX T1 POST") == {"t1"}
    assert described_modalities("t1ce") == {"t1"}
    assert described_modalities("T10 brain") == set()
    assert described_modalities("sag 3D FLAIR") == {"flair"}


def test_slice_centre_ras(scene, volume):
    ras = MedicalAnomalyDetectionLogic.sliceCenterRAS(volume, axis=2, index=BLOB[0])
    # I and J centres at 19.5 voxels of 3 mm towards L and P from the origin; K at slice 12.
    assert ras == pytest.approx((90.0 - 19.5 * 3, 120.0 - 19.5 * 3, -30.0 + 12 * 3))


def test_worker_runs_in_a_thread_and_cancels(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    worker = Worker(logic.prepare(volume, intensity_bundle.path))
    worker.start()
    assert worker.wait(20)
    assert worker.error is None and worker.progress == (1.0, "done")
    outputs = logic.apply(worker.job, worker.result)
    assert _array(outputs.anomalyLabel).sum() == outputs.anomalousVoxels > 0

    ids = node_ids(scene)
    cancelled = Worker(logic.prepare(volume, intensity_bundle.path))
    cancelled.cancel()
    cancelled.start()
    assert cancelled.wait(20) and cancelled.cancelled and cancelled.result is None
    assert node_ids(scene) == ids


def test_learn_normal_from_references_then_detect_with_the_new_model(scene, volume, tmp_path):
    from test_pathoscope import TINY_PATHOSCOPE, TINY_SETTINGS

    from conftest import TINY_PRE

    references = [add_volume(scene, head_array(blob=None, seed=s), f"healthy FLAIR {s}", origin_ras=ORIGIN_RAS,
                             directions_ras=LPS_AXES) for s in (1, 2)]
    before = [_array(node) for node in references]
    ids = node_ids(scene)
    logic = MedicalAnomalyDetectionLogic()
    options = dict(modelsDir=tmp_path, pre=TINY_PRE, settings=TINY_SETTINGS, config=TINY_PATHOSCOPE)
    fitted = logic.fitReferences(references, "my-normal", "flair", **options)
    assert fitted.bundle.path == tmp_path / "my-normal" and fitted.bundle.card.method == "pathoscope"
    assert fitted.bundle.card.training["references"] == ["healthy FLAIR 1", "healthy FLAIR 2"]
    assert node_ids(scene) == ids  # fitting adds nothing to the scene
    for node, array in zip(references, before):
        np.testing.assert_array_equal(_array(node), array)

    outputs = logic.process(volume, model=fitted.bundle.path, device="cpu")
    assert outputs.model == "my-normal" and outputs.operatingPoint == "per-scan"  # as the bundled PathoSCOPE
    assert _array(outputs.anomalyMap).shape == _array(volume).shape
    np.testing.assert_array_equal(_array(outputs.anomalyLabel), _array(outputs.anomalyMap) >= outputs.threshold)

    with pytest.raises(InputError, match="at least 2"):
        logic.fitReferences(references[:1], "one", "flair", **options)
    with pytest.raises(InputError, match="selected twice"):
        logic.fitReferences([references[0], references[0]], "twice", "flair", **options)
    label = add_volume(scene, head_array(), "label", class_name="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="scalar MRI volumes"):
        logic.fitReferences([references[0], label], "label", "flair", **options)
    t1 = add_volume(scene, head_array(blob=None, seed=3), "T1 MPRAGE", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES)
    assert any("looks like T1" in w for w in logic.prepareFit([references[0], t1], "t1", "flair", **options).warnings)


def test_fit_runs_in_a_worker_and_cancel_writes_nothing(scene, tmp_path):
    from test_pathoscope import TINY_PATHOSCOPE, TINY_SETTINGS

    from conftest import TINY_PRE

    references = [add_volume(scene, head_array(blob=None, seed=s), f"healthy {s}") for s in (1, 2)]
    logic = MedicalAnomalyDetectionLogic()
    options = dict(modelsDir=tmp_path, pre=TINY_PRE, settings=TINY_SETTINGS, config=TINY_PATHOSCOPE)
    stages = []
    with pytest.raises(Cancelled):  # cancelled in the middle of training: no folder, no card
        logic.fitReferences(references, "cancelled", "flair", progress=lambda f, stage: stages.append(stage),
                            cancel=lambda: "training adapter and discriminator" in stages, **options)
    assert not (tmp_path / "cancelled").exists()
    worker = Worker(logic.prepareFit(references, "fitted", "flair", **options))
    worker.start()
    assert worker.wait(60) and worker.error is None and worker.progress == (1.0, "done")
    assert worker.result.bundle.card.name == "fitted" and (tmp_path / "fitted" / "weights.pt").exists()


def _segment_array(segmentation, volume) -> np.ndarray:
    return sitk.GetArrayFromImage(maskFromNode(segmentation, volume))


def _replace_segment(segmentation, volume, array: np.ndarray) -> None:
    """What an edit in the Segment Editor amounts to: the brain segment now holds ``array``."""
    scene = volume.GetScene()
    labelmap = add_volume(scene, array.astype(np.uint8), "edit", origin_ras=volume.GetOrigin(),
                          directions_ras=LPS_AXES, class_name="vtkMRMLLabelMapVolumeNode")
    segmentation.GetSegmentation().RemoveAllSegments()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    scene.RemoveNode(labelmap)


def test_the_brain_found_is_a_segmentation_beside_the_input_and_reused(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    first = logic.process(volume, model=intensity_bundle.path)
    first_map = _array(first.anomalyMap)
    brain = first.brainMask
    assert brain.IsA("vtkMRMLSegmentationNode") and brain.GetName() == "FLAIR axial brain"
    assert first.masking == "foreground of a skull-stripped input"
    np.testing.assert_array_equal(_segment_array(brain, volume) > 0, head_array() > 0)
    hierarchy = scene.GetSubjectHierarchyNode()
    assert (hierarchy.GetItemParent(hierarchy.GetItemByDataNode(brain))
            == hierarchy.GetItemParent(hierarchy.GetItemByDataNode(first.anomalyMap)))

    # The user edits the segmentation (drops the half of the brain with the lesion); the next run uses the edit.
    edited = _segment_array(brain, volume).copy()
    edited[:, :, 20:] = 0
    _replace_segment(brain, volume, edited)
    count = scene.GetNumberOfNodes()
    second = logic.process(volume, model=intensity_bundle.path)
    assert second.brainMask is brain and second.masking == f"brain mask {brain.GetName()}"
    assert scene.GetNumberOfNodes() == count
    assert second.anomalyMap is first.anomalyMap
    assert _array(second.anomalyMap)[:, :, 21:].max() == 0 and first_map[:, :, 21:].max() > 0


def test_masking_none_does_not_reuse_the_brain_found(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    logic.process(volume, model=intensity_bundle.path)
    job = logic.prepare(volume, intensity_bundle.path, masking="none")
    assert job.mask is None and job.maskNode is None
    # a masking="none" run saves its foreground mask, but a later "auto" run does not take it for a brain
    outputs = logic.process(volume, model=intensity_bundle.path, masking="none")
    assert outputs.brainMask.IsA("vtkMRMLSegmentationNode")
    assert logic.previousBrainMask(volume) is None
    logic.process(volume, model=intensity_bundle.path)
    assert logic.previousBrainMask(volume) is outputs.brainMask  # the auto run's brain, reusable again
    with pytest.raises(InputError, match="masking must be one of"):
        logic.prepare(volume, intensity_bundle.path, masking="skull")


# Findings -----------------------------------------------------------------------------------------------------------

def _table_columns(table) -> list[str]:
    return [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]


def test_findings_are_a_table_beside_the_outputs_and_follow_relabel(scene, intensity_bundle):
    volume = add_volume(scene, two_lesions(), "FLAIR axial", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES)
    hierarchy = scene.GetSubjectHierarchyNode()
    study = hierarchy.CreateStudyItem(hierarchy.GetSceneItemID(), "study")
    hierarchy.CreateItem(study, volume)
    logic = MedicalAnomalyDetectionLogic()
    outputs = logic.process(volume, model=intensity_bundle.path)

    # the core on the same volume (its LPS geometry), independent of the Logic
    core = detect(make_image(two_lesions(), origin=(-90.0, -120.0, -30.0)), intensity_bundle)
    expected = find_regions(core.label_map, core.anomaly_map, core.slice_axis)
    assert len(expected) == 2 and expected[0].ml > expected[1].ml  # the big cube, then the small one
    found = outputs.findings
    assert [(r.id, r.voxels, r.ml, r.first_slice, r.last_slice) for r in found] == [
        (r.id, r.voxels, r.ml, r.first_slice, r.last_slice) for r in expected]
    for mine, theirs in zip(found, expected):
        assert (mine.centroid_l_mm, mine.centroid_p_mm, mine.centroid_s_mm, mine.peak_score) == pytest.approx(
            (theirs.centroid_l_mm, theirs.centroid_p_mm, theirs.centroid_s_mm, theirs.peak_score), abs=1e-4)
    assert outputs.operatingPoint == "fixed" and outputs.threshold == 3.0

    table = outputs.findingsTable
    assert table.GetName() == "FLAIR axial findings" and table.GetScene() is scene
    assert volume.GetNodeReference(REFERENCE_ROLES["findings"]) is table
    assert _table_columns(table) == [*FINDINGS_COLUMNS, *FINDINGS_RAS_COLUMNS]
    column = lambda name: slicer.util.arrayFromTableColumn(table, name)  # noqa: E731
    np.testing.assert_array_equal(column("id"), [1, 2])
    np.testing.assert_allclose(column("ml"), [r.ml for r in found])
    np.testing.assert_array_equal(column("first_slice"), [r.first_slice for r in found])
    np.testing.assert_array_equal(column("last_slice"), [r.last_slice for r in found])
    np.testing.assert_allclose(column("centroid_r_mm"), [-r.centroid_l_mm for r in found])  # R = -L
    np.testing.assert_allclose(column("centroid_a_mm"), [-r.centroid_p_mm for r in found])  # A = -P
    np.testing.assert_allclose(column("centroid_s_mm"), [r.centroid_s_mm for r in found])
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(table)) == study
    # the big cube of head_array() (K 10-14, J 17-23, I 23-29): its centre in RAS from the volume's own matrix
    centre = ijk_to_ras(volume) @ [26.0, 20.0, 12.0, 1.0]
    assert logic.findingCenterRAS(volume, found[0]) == pytest.approx(tuple(centre[:3]), abs=0.5)

    ids = node_ids(scene)
    anomaly = imageFromVolume(outputs.anomalyMap)
    for threshold in (1.5, 100.0):
        relabelled = logic.relabel(threshold)
        expected = find_regions(label_from_map(anomaly, threshold), anomaly, outputs.sliceAxis)
        assert relabelled.findings == expected and table.GetNumberOfRows() == len(expected)
        assert relabelled.findingsTable is table and relabelled.operatingPoint == "given"
        assert node_ids(scene) == ids
    assert relabelled.findings == [] and _table_columns(table) == [*FINDINGS_COLUMNS, *FINDINGS_RAS_COLUMNS]

    second = logic.process(volume, model=intensity_bundle.path, threshold=2.0)  # a fixed choice from the console
    assert node_ids(scene) == ids and second.findingsTable is table and table.GetNumberOfRows() == 2
    assert second.operatingPoint == "given" and second.threshold == 2.0

    scene.RemoveNode(table)  # a deleted findings table: relabel still updates the findings, a run makes a new one
    assert len(logic.relabel(1.5).findings) > 2
    third = logic.process(volume, model=intensity_bundle.path)
    assert third.findingsTable is not table and third.findingsTable.GetNumberOfRows() == 2


def test_a_finding_centre_follows_the_parent_transform(scene, intensity_bundle):
    volume = add_volume(scene, two_lesions(), "FLAIR", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES)
    outputs = MedicalAnomalyDetectionLogic().process(volume, model=intensity_bundle.path)
    region = outputs.findings[1]
    local = (-region.centroid_l_mm, -region.centroid_p_mm, region.centroid_s_mm)
    assert MedicalAnomalyDetectionLogic.findingCenterRAS(volume, region) == pytest.approx(local)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk_translation(10.0, -5.0, 2.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert MedicalAnomalyDetectionLogic.findingCenterRAS(volume, region) == pytest.approx(
        (local[0] + 10.0, local[1] - 5.0, local[2] + 2.0))


def vtk_translation(x: float, y: float, z: float):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for axis, value in enumerate((x, y, z)):
        matrix.SetElement(axis, 3, value)
    return matrix


def test_a_per_scan_card_runs_per_scan_unless_a_threshold_is_given(scene, volume, intensity_bundle, tmp_path):
    card = replace(intensity_bundle.card, name="intensity-per-scan",
                   thresholds={"pixel": 3.0, "pixel_fpr": 0.01, "per_scan_k": 3.5})
    folder = save_bundle(tmp_path / "per-scan", card, None)
    logic = MedicalAnomalyDetectionLogic()
    outputs = logic.process(volume, model=folder)
    core = detect(make_image(head_array(), origin=(-90.0, -120.0, -30.0)), load_bundle(folder))
    assert outputs.operatingPoint == core.operating_point == "per-scan"
    assert outputs.threshold == pytest.approx(core.threshold) and outputs.threshold != 3.0
    np.testing.assert_array_equal(_array(outputs.anomalyLabel), _array(outputs.anomalyMap) >= outputs.threshold)
    fixed = logic.process(volume, model=folder, threshold=3.0)
    assert fixed.operatingPoint == "given" and fixed.threshold == 3.0


# Catalogued models whose weights are not downloaded yet --------------------------------------------------------------

def test_prepare_does_not_download_and_the_job_does(scene, volume, tiny_bundle_dir, tmp_path, monkeypatch):
    user = tmp_path / "user"
    monkeypatch.setenv("MAD_USER_MODELS_DIR", str(user))
    weights = release(tmp_path / "packaged", tiny_bundle_dir, monkeypatch, f"http://127.0.0.1:{closed_port()}")
    logic = MedicalAnomalyDetectionLogic()
    ids = node_ids(scene)

    job = logic.prepare(volume, "tiny", device="cpu")  # nothing can leave the machine: prepare does not try
    entry = job.download
    assert job.bundle is None and entry is not None and pending_download("tiny") == entry
    assert (entry.name, entry.size) == ("tiny", len(weights)) and entry.url.endswith("/tiny-test.pt")
    assert not user.exists() and node_ids(scene) == ids
    with pytest.raises(InputError, match=r"^could not download model tiny from http://127\.0\.0\.1:\d+/tiny-test\.pt: "
                                         r"the server is unreachable \(.*\); install it from a file"):
        job.run()
    assert not (user / "tiny").exists() and node_ids(scene) == ids

    with serving({"/tiny-test.pt": weights}) as server:
        monkeypatch.setenv(catalogue.BASE_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}")
        stages = []
        job = logic.prepare(volume, "tiny", device="cpu")
        with pytest.raises(Cancelled):  # cancelled during the download: no model installed
            job.run(lambda fraction, stage: stages.append(stage), cancel=lambda: bool(stages))
        assert stages[0].startswith("downloading tiny test") and not (user / "tiny").exists()
        assert node_ids(scene) == ids

        worker = Worker(logic.prepare(volume, "tiny", device="cpu"))
        worker.start()
        assert worker.wait(30) and worker.error is None
        outputs = logic.apply(worker.job, worker.result)
    assert (user / "tiny" / WEIGHTS_FILE).read_bytes() == weights and outputs.model == "tiny"
    assert [path for path, _ in server.state["requests"]] == ["/tiny-test.pt"]  # the cancelled transfer's bytes were kept and checked, not fetched again
    assert pending_download("tiny") is None
    job = logic.prepare(volume, "tiny", device="cpu")
    assert job.download is None and job.bundle.path == user / "tiny"

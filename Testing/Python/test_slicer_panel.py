"""The module's real panel (``MedicalAnomalyDetectionSlicer/widget.py``, its .ui and the module file) used as a
clinician would, on a real MRML scene, through the PythonQt-style layer of ``pythonqt_shim.py`` (PySide6 offscreen
and the ``slicer-core`` wheel). What that layer cannot prove is listed in its docstring. Skipped without either.

Models: two weight-free intensity bundles in a temporary ``MAD_MODELS_DIR`` (the fit test writes to a temporary
``MAD_USER_MODELS_DIR``); the few-shot fit through the panel is the real one at the tiny sizes of test_pathoscope.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
pytest.importorskip("PySide6.QtWidgets")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pythonqt_shim  # noqa: E402
from conftest import TINY_PRE, head_array, make_image, tiny_card  # noqa: E402
from slicer_fixtures import add_volume, ijk_to_ras, new_scene, node_ids, slice_view  # noqa: E402

from MedicalAnomalyDetectionLib.bundle import load_bundle, save_bundle  # noqa: E402
from MedicalAnomalyDetectionLib.card import Preprocessing  # noqa: E402
from MedicalAnomalyDetectionLib.inference import detect  # noqa: E402
from MedicalAnomalyDetectionSlicer import resourcePath  # noqa: E402
from MedicalAnomalyDetectionSlicer.logic import SLICE_COLUMN, VOXELS_COLUMN  # noqa: E402

# Imported anew inside every test (they import qt, ctk or the parameter node wrapper), and dropped afterwards.
FRESH = ("MedicalAnomalyDetection", "MedicalAnomalyDetectionSlicer.widget", "MedicalAnomalyDetectionSlicer.parameters",
         "MedicalAnomalyDetectionSlicer.dependencies", "MedicalAnomalyDetectionSlicer.sample_data")
LPS_AXES = np.diag([-1.0, -1.0, 1.0])
ORIGIN_RAS = (90.0, 120.0, -30.0)
THRESHOLDS = {"intensity-a": 3.0, "intensity-b": 2.5}
LOAD_BUNDLE_TEXT = "Load model bundle…"


def _intensity_bundle(folder, name: str, pixel: float):
    card = tiny_card(name, "intensity")
    card.preprocessing = Preprocessing(plane="axial", size=(32, 32), spacing_mm=4.0, normalisation="zscore")
    card.thresholds = {"pixel": pixel}
    return save_bundle(folder / name, card, None)


@pytest.fixture
def models(tmp_path, monkeypatch):
    for name, pixel in THRESHOLDS.items():
        _intensity_bundle(tmp_path / "models", name, pixel)
    monkeypatch.setenv("MAD_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MAD_USER_MODELS_DIR", str(tmp_path / "user"))
    return tmp_path / "models"


@pytest.fixture
def scene():
    scene, colours = new_scene()
    views = slice_view(scene)  # one slice view (Red), so the overlay has somewhere to go
    yield scene
    del views, colours


@pytest.fixture
def volume(scene):
    return add_volume(scene, head_array(), "FLAIR", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES)


@pytest.fixture
def app(scene, models):
    with pythonqt_shim.slicerApp(scene, FRESH) as app:
        yield app
        assert app.exceptions == [], "exceptions in Qt slots or VTK observers"


@pytest.fixture
def panel(app):
    from MedicalAnomalyDetectionSlicer.widget import MedicalAnomalyDetectionPanel

    panel = MedicalAnomalyDetectionPanel()
    panel.widget.show()  # offscreen, as in the module panel: ``visible`` then means what a user sees
    yield panel
    panel.cleanup()
    panel.widget.deleteLater()
    app.processEvents()


def _parameters(panel):
    from MedicalAnomalyDetectionSlicer.parameters import parameterNode

    return parameterNode()


def _array(node) -> np.ndarray:
    return slicer.util.arrayFromVolume(node).copy()


def _detect(app, panel, timeout: float = 30.0) -> None:
    """Click Detect and let the panel's own timer poll the run to its end."""
    ui = panel.ui
    assert ui.detectButton.enabled, ui.detectButton.toolTip
    ui.detectButton.click()
    assert ui.detectButton.text == "Cancel" and ui.progressBar.visible
    app.waitUntil(lambda: not panel.tasks.busy, timeout, "Detect to finish")
    app.processEvents()
    assert ui.detectButton.text == "Detect" and not ui.progressBar.visible


def _select_model(panel, name: str) -> None:
    combo = panel.ui.modelComboBox
    combo.currentIndex = combo.findData(name)
    assert combo.currentText == name


def _expected(bundle_name: str, threshold: float | None = None):
    """The core's own result on the same volume (its LPS geometry), independent of the panel and the Logic."""
    return detect(make_image(head_array(), origin=(-90.0, -120.0, -30.0)), load_bundle(bundle_name),
                  device="cpu", threshold=threshold)


def _tiny_fits(monkeypatch) -> None:
    """The panel's own fit, at the sizes the core's tests use (the default fit takes minutes)."""
    from test_pathoscope import TINY_PATHOSCOPE, TINY_SETTINGS

    import MedicalAnomalyDetectionSlicer.logic as logic_module

    monkeypatch.setattr(logic_module, "fit_references", functools.partial(
        logic_module.fit_references, pre=TINY_PRE, settings=TINY_SETTINGS, config=TINY_PATHOSCOPE))


class Gate:
    """Wraps the jobs the panel's Logic prepares: the run stops at ``stage`` until Cancel (or ``release``)."""

    def __init__(self, logic, stage: str = "scoring slices") -> None:
        self.prepare, self.stage = logic.prepare, stage
        self.reached, self.released = threading.Event(), threading.Event()
        logic.prepare = self._prepare

    def _prepare(self, *args, **kwargs):
        return _GatedJob(self.prepare(*args, **kwargs), self)


class _GatedJob:
    def __init__(self, job, gate: Gate) -> None:
        self._job, self._gate = job, gate

    def __getattr__(self, name):  # the rest of the DetectionJob, for the Logic's apply()
        return getattr(self._job, name)

    def run(self, progress=None, cancel=None):
        def report(fraction: float, stage: str) -> None:
            progress(fraction, stage)
            if stage == self._gate.stage:
                self._gate.reached.set()
                while not self._gate.released.wait(0.01) and not cancel():
                    pass
        return self._job.run(report, cancel)


# --------------------------------------------------------------------------------------------------------------------


def test_the_parameter_node_binds_to_the_panel(scene, volume, models):
    with pythonqt_shim.slicerApp(scene, FRESH):
        from MedicalAnomalyDetectionSlicer.widget import MedicalAnomalyDetectionPanel

        panel = MedicalAnomalyDetectionPanel()
        try:
            assert panel.ui.brainMaskSelector.nodeTypes == ["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"]
        finally:
            panel.cleanup()


def test_the_panel_opens_on_the_scene(app, volume, panel):
    ui = panel.ui
    p = _parameters(panel)
    assert ui.inputSelector.currentNode() is volume and p.inputVolume is volume  # the first volume, picked on enter
    assert ui.brainMaskSelector.nodeTypes == ["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"]
    assert ui.brainMaskSelector.currentNode() is None
    combo = ui.modelComboBox
    assert [combo.itemText(i) for i in range(combo.count)] == ["intensity-a", "intensity-b", LOAD_BUNDLE_TEXT]
    assert "intensity model for FLAIR MRI, version test" in combo.itemData(1, pythonqt_shim.QtCore.Qt.ToolTipRole)
    # The default model (patchgan-flair) is not among these: the first one is shown, and used.
    assert combo.currentText == "intensity-a" and p.model == "intensity-a"
    assert ui.modelInfoLabel.text.startswith("intensity, FLAIR, axial slices; weights licence: test")
    slider = ui.thresholdSlider
    assert (slider.minimum, slider.maximum, slider.value) == (0.03, 9.0, 3.0) and p.threshold == 3.0
    assert [ui.deviceComboBox.itemText(i) for i in range(ui.deviceComboBox.count)] == ["Auto", "GPU", "CPU"]
    assert ui.detectButton.enabled and ui.detectButton.toolTip == "Find anomalies in the input volume"
    assert ui.resultsCollapsibleButton.collapsed and not ui.progressBar.visible
    assert app.errors == []


def test_detect_is_disabled_without_an_input(app, panel, scene):
    ui = panel.ui
    assert not ui.detectButton.enabled and ui.detectButton.toolTip == "Select an input volume"
    ids = node_ids(scene)
    ui.detectButton.click()  # a disabled button does nothing
    app.processEvents()
    assert node_ids(scene) == ids and app.errors == [] and not panel.tasks.busy
    volume = add_volume(scene, head_array(), "FLAIR", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES)
    assert not ui.detectButton.enabled  # a new volume is not picked for the user
    ui.inputSelector.setCurrentNode(volume)
    assert _parameters(panel).inputVolume is volume
    assert ui.detectButton.enabled and ui.detectButton.toolTip == "Find anomalies in the input volume"


def test_detect_fills_the_scene_and_the_results(app, scene, volume, panel):
    ui = panel.ui
    _select_model(panel, "intensity-b")
    p = _parameters(panel)
    assert p.model == "intensity-b" and p.threshold == 2.5
    assert (ui.thresholdSlider.minimum, ui.thresholdSlider.maximum) == (0.025, 7.5)
    ui.deviceComboBox.currentIndex = 2
    assert p.device == "CPU"
    before = _array(volume)

    _detect(app, panel)

    assert app.errors == [] and ui.statusLabel.text == ""
    expected = _expected("intensity-b")
    anomalyMap, label, table = p.outputMap, p.outputLabel, p.outputTable
    for node in (anomalyMap, label, table):
        assert node is not None and node.GetScene() is scene
    assert (anomalyMap.GetName(), label.GetName(), table.GetName()) == (
        "FLAIR anomaly map", "FLAIR anomalies", "FLAIR slice scores")
    for node in (anomalyMap, label):
        np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(volume))
        assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_array_equal(_array(volume), before)
    anomaly = _array(anomalyMap)
    np.testing.assert_allclose(anomaly, sitk.GetArrayViewFromImage(expected.anomaly_map), atol=1e-5)
    voxels = int((anomaly >= 2.5).sum())
    np.testing.assert_array_equal(_array(label), anomaly >= 2.5)
    assert voxels > 0
    np.testing.assert_array_equal(slicer.util.arrayFromTableColumn(table, SLICE_COLUMN),
                                  np.sort(expected.slice_index))

    # what the clinician reads
    assert ui.volumeScoreLabel.text == f"{expected.volume_score:.3g}"
    assert ui.anomalousVoxelsLabel.text == f"{voxels} voxels at threshold 2.5"
    assert ui.deviceUsedLabel.text.startswith("CPU, ") and "model intensity-b; brain: " in ui.deviceUsedLabel.text
    assert ui.goToSliceButton.text == f"Go to most anomalous slice ({expected.most_anomalous_slice})"
    assert not ui.resultsCollapsibleButton.collapsed
    for selector, node in ((ui.outputMapSelector, anomalyMap), (ui.outputLabelSelector, label),
                           (ui.outputTableSelector, table)):
        assert selector.currentNode() is node
    composite = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetLabelVolumeID()) == (
        volume.GetID(), anomalyMap.GetID(), label.GetID())

    # Go to most anomalous slice: the centre of that axial slice of the input, in RAS
    ui.goToSliceButton.click()
    k = expected.most_anomalous_slice
    assert expected.slice_axis == 2
    centre = ijk_to_ras(volume) @ [19.5, 19.5, k, 1.0]
    assert len(app.jumps) == 1 and app.jumps[0][1] is True
    np.testing.assert_allclose(app.jumps[0][0], centre[:3])
    assert abs(k - 12) <= 2  # the bright cube of head_array

    ui.showChartButton.click()
    assert len(app.charts) == 1
    chart = app.charts[0]
    assert chart.GetScene() is scene and chart.GetNthPlotSeriesNode(0).GetTableNodeID() == table.GetID()

    # a second Detect reuses the nodes
    ids = node_ids(scene)
    _detect(app, panel)
    assert node_ids(scene) == ids and p.outputMap is anomalyMap and app.errors == []


def test_the_threshold_slider_relabels_without_new_nodes(app, scene, volume, panel):
    ui = panel.ui
    _detect(app, panel)
    p = _parameters(panel)
    ids, anomaly = node_ids(scene), _array(p.outputMap)
    first = ui.anomalousVoxelsLabel.text
    assert first == f"{int((anomaly >= 3.0).sum())} voxels at threshold 3"

    ui.thresholdSlider.value = 2.0
    assert p.threshold == 2.0  # bound to the parameter node at once; the relabel waits for the timer
    app.waitUntil(lambda: ui.anomalousVoxelsLabel.text != first, 5, "the relabel timer")

    voxels = int((anomaly >= 2.0).sum())
    assert voxels > int((anomaly >= 3.0).sum())
    assert ui.anomalousVoxelsLabel.text == f"{voxels} voxels at threshold 2"
    np.testing.assert_array_equal(_array(p.outputLabel), anomaly >= 2.0)
    assert int(slicer.util.arrayFromTableColumn(p.outputTable, VOXELS_COLUMN).sum()) == voxels
    np.testing.assert_array_equal(_array(p.outputMap), anomaly)
    assert node_ids(scene) == ids and app.errors == []

    panel.exit()  # leaving the module and coming back keeps the user's threshold and the model's slider range
    panel.enter()
    assert _parameters(panel).threshold == 2.0
    assert (ui.thresholdSlider.value, ui.thresholdSlider.minimum, ui.thresholdSlider.maximum) == (2.0, 0.03, 9.0)


def test_cancel_mid_run_leaves_the_scene_unchanged(app, scene, volume, panel):
    ui = panel.ui
    _detect(app, panel)
    p = _parameters(panel)
    ids, anomaly, label = node_ids(scene), _array(p.outputMap), _array(p.outputLabel)
    shown = (ui.volumeScoreLabel.text, ui.anomalousVoxelsLabel.text)
    ui.thresholdSlider.value = 1.5
    app.waitUntil(lambda: ui.anomalousVoxelsLabel.text != shown[1], 5, "the relabel timer")
    shown, label = (ui.volumeScoreLabel.text, ui.anomalousVoxelsLabel.text), _array(p.outputLabel)

    gate = Gate(panel.logic)
    ui.detectButton.click()
    app.waitUntil(gate.reached.is_set, 30, "the run to reach scoring")
    app.processEvents(0.25)  # the poll timer shows the progress
    assert ui.detectButton.text == "Cancel" and ui.detectButton.enabled
    assert not ui.fitButton.enabled and ui.fitButton.toolTip == "Wait until Detect has finished"
    assert ui.progressBar.visible and "scoring slices" in ui.progressBar.format
    ui.detectButton.click()
    assert ui.statusLabel.text == "Cancelling…"
    app.waitUntil(lambda: not panel.tasks.busy, 30, "the cancel")

    assert ui.statusLabel.text == "Cancelled; the scene was not changed."
    assert ui.detectButton.text == "Detect" and ui.detectButton.enabled and ui.fitButton.enabled
    assert node_ids(scene) == ids and app.errors == []
    np.testing.assert_array_equal(_array(p.outputMap), anomaly)
    np.testing.assert_array_equal(_array(p.outputLabel), label)
    assert (ui.volumeScoreLabel.text, ui.anomalousVoxelsLabel.text) == shown


def test_fit_from_two_references_adds_and_selects_the_model(app, scene, volume, panel, monkeypatch, tmp_path):
    _tiny_fits(monkeypatch)
    references = [add_volume(scene, head_array(blob=None, seed=s), f"healthy {s}", origin_ras=ORIGIN_RAS,
                             directions_ras=LPS_AXES) for s in (1, 2)]
    ui = panel.ui
    ids = node_ids(scene)
    ui.referencesCollapsibleButton.click()
    assert not ui.referencesCollapsibleButton.collapsed
    assert ui.referencesSelector.nodes() == [volume, *references]
    for reference in references:
        ui.referencesSelector.setCheckState(reference, app.qt.Qt.Checked)
    assert ui.referencesSelector.checkedNodes() == references
    ui.newModelNameLineEdit.text = "my-normal"
    assert ui.referenceModalityComboBox.currentText == "FLAIR"

    ui.fitButton.click()
    assert ui.fitButton.text == "Cancel" and not ui.detectButton.enabled
    app.waitUntil(lambda: not panel.tasks.busy, 60, "the fit")

    assert app.errors == [] and node_ids(scene) == ids  # fitting adds nothing to the scene
    folder = tmp_path / "user" / "my-normal"
    assert (folder / "card.json").exists() and (folder / "weights.pt").exists()
    combo = ui.modelComboBox
    assert [combo.itemText(i) for i in range(combo.count)] == [
        "intensity-a", "intensity-b", "my-normal", LOAD_BUNDLE_TEXT]
    p = _parameters(panel)
    assert combo.currentText == "my-normal" and p.model == "my-normal"
    card = load_bundle("my-normal").card
    assert card.method == "pathoscope" and card.training["references"] == ["healthy 1", "healthy 2"]
    assert ui.modelInfoLabel.text.startswith("pathoscope, FLAIR, axial slices")
    assert p.threshold == pytest.approx(card.thresholds["pixel"], abs=1e-3)  # the slider shows 3 decimals
    assert ui.fitStatusLabel.text.startswith(f"Model my-normal saved in {folder} (")
    assert ui.fitButton.text == "Fit" and ui.detectButton.enabled

    _detect(app, panel)  # and Detect uses it
    assert app.errors == [] and panel.logic.lastOutputs.model == "my-normal"
    assert ui.deviceUsedLabel.text.count("model my-normal;") == 1


def test_leaving_the_module_during_a_run_keeps_its_result(app, scene, volume, panel, monkeypatch):
    """Slicer calls exit() when the user switches to another module; a run started before still counts."""
    ui = panel.ui
    gate = Gate(panel.logic)
    ui.detectButton.click()
    app.waitUntil(gate.reached.is_set, 30, "the run to reach scoring")
    panel.exit()
    gate.released.set()
    app.waitUntil(lambda: not panel.tasks.busy, 30, "Detect to finish")
    assert app.errors == []
    p = _parameters(panel)
    assert p.outputMap is not None and p.outputMap.GetScene() is scene
    panel.enter()
    assert ui.outputMapSelector.currentNode() is p.outputMap and not ui.resultsCollapsibleButton.collapsed
    assert ui.anomalousVoxelsLabel.text == f"{panel.logic.lastOutputs.anomalousVoxels} voxels at threshold 3"
    assert ui.detectButton.enabled

    # a fit finishing while the user is elsewhere: its model is the one selected on return
    _tiny_fits(monkeypatch)
    references = [add_volume(scene, head_array(blob=None, seed=s), f"healthy {s}") for s in (1, 2)]
    for reference in references:
        ui.referencesSelector.setCheckState(reference, app.qt.Qt.Checked)
    ui.newModelNameLineEdit.text = "fitted-away"
    ui.fitButton.click()
    panel.exit()
    app.waitUntil(lambda: not panel.tasks.busy, 60, "the fit")
    panel.enter()
    assert app.errors == [] and ui.modelComboBox.currentText == "fitted-away"
    assert _parameters(panel).model == "fitted-away"


def test_scene_close_resets_the_panel(app, scene, volume, panel):
    ui = panel.ui
    _detect(app, panel)
    assert not ui.resultsCollapsibleButton.collapsed
    gate = Gate(panel.logic)
    ui.detectButton.click()
    app.waitUntil(gate.reached.is_set, 30, "the run to reach scoring")

    scene.Clear(0)  # File > Close Scene while Detect runs: the run is cancelled
    app.waitUntil(lambda: not panel.tasks.busy, 30, "the cancel")
    app.processEvents(0.2)
    assert app.errors == [] and ui.statusLabel.text == "Cancelled; the scene was not changed."
    p = _parameters(panel)
    assert p.inputVolume is None and p.outputMap is None
    assert ui.inputSelector.currentNode() is None and ui.outputMapSelector.currentNode() is None
    assert not ui.detectButton.enabled and ui.detectButton.toolTip == "Select an input volume"
    assert ui.resultsCollapsibleButton.collapsed  # no results of the closed scene on show
    assert ui.modelComboBox.itemData(ui.modelComboBox.currentIndex) == p.model
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    ui.goToSliceButton.click()
    ui.thresholdSlider.value = 1.0
    app.processEvents(0.3)
    assert app.jumps == [] and app.errors == []

    # and the panel works on the new scene
    gate.released.set()
    volume = add_volume(scene, head_array(), "FLAIR 2", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES)
    ui.inputSelector.setCurrentNode(volume)
    _detect(app, panel)
    assert app.errors == [] and p.outputMap.GetName() == "FLAIR 2 anomaly map"


def test_an_unknown_model_is_reported_and_adds_nothing(app, scene, volume, panel, models, tmp_path):
    ui = panel.ui
    _select_model(panel, "intensity-b")
    shutil.rmtree(models / "intensity-b")  # gone from disk after it was listed
    ids = node_ids(scene)
    ui.detectButton.click()
    app.processEvents(0.2)
    assert [text for text, _ in app.errors] == [
        "model bundle not found: intensity-b (known models: intensity-a)"]
    assert node_ids(scene) == ids and not panel.tasks.busy and ui.detectButton.text == "Detect"

    # "Load model bundle…" on a folder without a card: refused, and the list shows the model Detect uses
    _select_model(panel, "intensity-a")
    app.errors.clear()
    empty = tmp_path / "not-a-bundle"
    empty.mkdir()
    app.dialogAnswers.append(str(empty))
    combo = ui.modelComboBox
    combo.currentIndex = combo.findText(LOAD_BUNDLE_TEXT)
    assert [kind for kind, _ in app.dialogs] == ["getExistingDirectory"]
    assert len(app.errors) == 1 and app.errors[0][0].startswith("Cannot use this model bundle: ")
    assert "card.json" in app.errors[0][0]
    assert combo.currentText == "intensity-a" and _parameters(panel).model == "intensity-a"
    assert node_ids(scene) == ids


def test_a_model_bundle_folder_is_loaded_once_and_used(app, scene, volume, panel, models, tmp_path):
    ui = panel.ui
    combo = ui.modelComboBox
    folder = shutil.copytree(models / "intensity-b", tmp_path / "elsewhere" / "my-bundle")
    app.dialogAnswers.append(str(folder))
    combo.currentIndex = combo.findText(LOAD_BUNDLE_TEXT)
    assert [kind for kind, _ in app.dialogs] == ["getExistingDirectory"]  # asked once
    p = _parameters(panel)
    assert combo.currentText == "my-bundle" and p.model == str(folder) and p.threshold == 2.5
    assert [combo.itemText(i) for i in range(combo.count)] == [
        "intensity-a", "intensity-b", "my-bundle", LOAD_BUNDLE_TEXT]

    app.dialogAnswers.append("")  # Load… again, and cancel the dialog: back to the folder's model
    combo.currentIndex = combo.findText(LOAD_BUNDLE_TEXT)
    assert len(app.dialogs) == 2 and combo.currentText == "my-bundle" and p.model == str(folder)

    _detect(app, panel)
    assert app.errors == [] and panel.logic.lastOutputs.threshold == 2.5
    assert "model intensity-b;" in ui.deviceUsedLabel.text  # the card's name


def test_the_module_mounts_the_panel_and_its_self_test_drives_it(scene, monkeypatch):
    """MedicalAnomalyDetection.py under the layer: module registration, the widget's setup() mounting the panel, and
    the module's own self-test (as Slicer's "Reload and Test" runs it) on the sample case with the bundled models;
    with the fast weight-free model instead of patchgan-flair (52 s on two CPU cores)."""
    monkeypatch.delenv("MAD_MODELS_DIR", raising=False)  # the bundled models
    with pythonqt_shim.slicerApp(scene, FRESH) as app:
        import MedicalAnomalyDetection as module

        parent = type("Parent", (), {})()
        module.MedicalAnomalyDetection(parent)
        assert parent.title == "Medical Anomaly Detection" and [s for s, _ in app.appConnections] == [
            "startupCompleted()"]
        widget = app.addModuleWidget("MedicalAnomalyDetection", module.MedicalAnomalyDetectionWidget)
        assert widget.panel is not None and widget.installButton.isHidden()
        assert widget.layout.itemAt(0).widget() is widget.panel.widget

        class FastTest(module.MedicalAnomalyDetectionTest):
            MODEL = "intensity-flair"

        result = FastTest("runTest").run()
        assert result.wasSuccessful(), [text for _, text in result.failures + result.errors]
        assert len(app.delayed) == 2 and app.errors == [] and app.exceptions == []
        panel = widget.panel
        assert panel.ui.modelComboBox.currentText == "intensity-flair"
        assert panel.logic.lastOutputs.brainMask.GetName() == "brain"
        assert resourcePath("Sample", "mslub-patient19", "flair.nii.gz").exists()


def test_the_layer_leaves_nothing_behind(scene, models):
    import sys

    names = ("mrmlScene", "app", "modules", "parameterNodeWrapper", "qMRMLNodeComboBox")
    before = {name: getattr(slicer, name, None) for name in names}
    errorDisplay = slicer.util.errorDisplay
    with pythonqt_shim.slicerApp(scene, FRESH):
        from MedicalAnomalyDetectionSlicer.widget import MedicalAnomalyDetectionPanel

        MedicalAnomalyDetectionPanel  # noqa: B018 - imported under the layer
        assert slicer.mrmlScene is scene and slicer.util.errorDisplay is not errorDisplay
    assert {name: getattr(slicer, name, None) for name in names} == before
    assert slicer.util.errorDisplay is errorDisplay
    leaked = {"qt", "ctk", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", *FRESH} & set(sys.modules)
    assert leaked == set()

"""The module's real panel (``MedicalAnomalyDetectionSlicer/widget.py``, its .ui and the module file) used as a
clinician would, on a real MRML scene, through the PythonQt-style layer of ``pythonqt_shim.py`` (PySide6 offscreen
and the ``slicer-core`` wheel). What that layer cannot prove is listed in its docstring. Skipped without either.

Models: two weight-free intensity bundles in a temporary ``MAD_MODELS_DIR`` (the fit test writes to a temporary
``MAD_USER_MODELS_DIR``); the few-shot fit through the panel is the real one at the tiny sizes of test_pathoscope. The
download tests add a tiny PatchGAN as a released catalogued model whose weights come from a 127.0.0.1 server, or from
a closed port (``MAD_MODEL_BASE_URL``), so nothing can leave the machine.
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
from PySide6 import QtTest  # noqa: E402
from slicer_fixtures import add_volume, ijk_to_ras, new_scene, node_ids, slice_view  # noqa: E402
from test_slicer_logic import release, two_lesions  # noqa: E402
from weights_server import closed_port, serving  # noqa: E402

from MedicalAnomalyDetectionLib import catalogue, installation  # noqa: E402
from MedicalAnomalyDetectionLib.bundle import load_bundle, save_bundle  # noqa: E402
from MedicalAnomalyDetectionLib.card import Preprocessing  # noqa: E402
from MedicalAnomalyDetectionLib.findings import find_regions  # noqa: E402
from MedicalAnomalyDetectionLib.inference import detect, label_from_map  # noqa: E402
from MedicalAnomalyDetectionSlicer import resourcePath  # noqa: E402
from MedicalAnomalyDetectionSlicer.conversion import imageFromVolume  # noqa: E402
from MedicalAnomalyDetectionSlicer.logic import SLICE_COLUMN, VOXELS_COLUMN  # noqa: E402

# Imported anew inside every test (they import qt, ctk or the parameter node wrapper), and dropped afterwards.
FRESH = ("MedicalAnomalyDetection", "MedicalAnomalyDetectionSlicer.widget",
         "MedicalAnomalyDetectionSlicer.models_section", "MedicalAnomalyDetectionSlicer.parameters",
         "MedicalAnomalyDetectionSlicer.dependencies", "MedicalAnomalyDetectionSlicer.sample_data")
LPS_AXES = np.diag([-1.0, -1.0, 1.0])
ORIGIN_RAS = (90.0, 120.0, -30.0)
THRESHOLDS = {"intensity-a": 3.0, "intensity-b": 2.5}
LOAD_BUNDLE_TEXT = "Load model bundle…"
PER_SCAN_PIXEL = 0.15


def _intensity_bundle(folder, name: str, pixel: float, **thresholds):
    card = tiny_card(name, "intensity")
    card.preprocessing = Preprocessing(plane="axial", size=(32, 32), spacing_mm=4.0, normalisation="zscore")
    card.thresholds = {"pixel": pixel, **thresholds}
    return save_bundle(folder / name, card, None)


@pytest.fixture
def models(tmp_path, monkeypatch):
    for name, pixel in THRESHOLDS.items():
        _intensity_bundle(tmp_path / "models", name, pixel)
    monkeypatch.setenv("MAD_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MAD_USER_MODELS_DIR", str(tmp_path / "user"))
    return tmp_path / "models"


@pytest.fixture
def per_scan_model(models):
    """An intensity model whose card has a per-scan operating point (as test_operating_point builds one); its
    calibrated threshold is low, so the per-scan threshold of the test volume lies above the model's slider range."""
    return _intensity_bundle(models, "intensity-per-scan", PER_SCAN_PIXEL, pixel_fpr=0.01, per_scan_k=3.5)


@pytest.fixture
def catalogued(models, tiny_bundle_dir, monkeypatch):
    """The tiny PatchGAN ``tiny`` as a released catalogued model, its weights not downloaded; the mirror URL is a
    closed port (a test that lets the download happen starts a server and points MAD_MODEL_BASE_URL at it)."""
    port = closed_port()
    weights = release(models, tiny_bundle_dir, monkeypatch, f"http://127.0.0.1:{port}")
    return {"weights": weights, "port": port, "user": models.parent / "user"}


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

    import MedicalAnomalyDetectionSlicer.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "fit_references", functools.partial(
        jobs_module.fit_references, pre=TINY_PRE, settings=TINY_SETTINGS, config=TINY_PATHOSCOPE))


class Gate:
    """Wraps the jobs the panel's Logic prepares: the run stops at the stage that starts with ``stage`` until Cancel
    (or ``released``)."""

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
            if stage.startswith(self._gate.stage):
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
    assert ui.modelsCollapsibleButton.collapsed and not ui.removeModelButton.enabled
    assert [ui.modelsTable.item(row, 0).text() for row in range(ui.modelsTable.rowCount)] == ["intensity-a",
                                                                                             "intensity-b"]
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
    assert ui.operatingPointLabel.text == "(fixed)"  # the card has no per-scan operating point
    assert ui.findingsTable.rowCount == 1 and ui.findingsSummaryLabel.text.startswith("1 finding, ")
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


def _click_row(app, table, row: int) -> None:
    """A left click in the middle of ``row``'s first cell, as the user does it."""
    app.processEvents()
    rect = table.visualItemRect(table.item(row, 0))
    assert rect.height() > 0, "the row is not on screen"
    QtTest.QTest.mouseClick(table.viewport(), pythonqt_shim.QtCore.Qt.MouseButton.LeftButton,
                            pythonqt_shim.QtCore.Qt.KeyboardModifier.NoModifier, rect.center())
    app.processEvents()


def _rows(table) -> list[list[str]]:
    return [[table.item(row, column).text() for column in range(table.columnCount)] for row in range(table.rowCount)]


def _finding_rows(regions) -> list[list[str]]:
    """id, mL, slices (first–last, or the one slice), peak score."""
    return [[str(r.id), f"{r.ml:.3g}", f"{r.first_slice}–{r.last_slice}" if r.first_slice < r.last_slice
             else str(r.first_slice), f"{r.peak_score:.3g}"] for r in regions]


def test_findings_follow_detect_and_the_slider(app, scene, panel):
    volume = add_volume(scene, two_lesions(), "FLAIR", origin_ras=ORIGIN_RAS, directions_ras=LPS_AXES)
    ui = panel.ui
    ui.inputSelector.setCurrentNode(volume)
    _detect(app, panel)
    p = _parameters(panel)
    outputs = panel.logic.lastOutputs
    anomaly, label = imageFromVolume(p.outputMap), imageFromVolume(p.outputLabel)
    expected = find_regions(label, anomaly, outputs.sliceAxis)  # the core on the label map the panel shows
    assert len(expected) == 2 and all(r.first_slice < r.last_slice for r in expected)
    table = ui.findingsTable
    assert _rows(table) == _finding_rows(expected)
    assert ui.findingsSummaryLabel.text == f"2 findings, {sum(r.ml for r in expected):.3g} mL"
    node = outputs.findingsTable
    assert node.GetName() == "FLAIR findings" and node.GetNumberOfRows() == 2

    _click_row(app, table, 1)  # the second, smaller lesion: the views centre on its RAS centroid
    second = expected[1]
    assert len(app.jumps) == 1 and app.jumps[0][1] is True
    np.testing.assert_allclose(app.jumps[0][0], (-second.centroid_l_mm, -second.centroid_p_mm, second.centroid_s_mm))
    centre = ijk_to_ras(volume) @ [11.0, 11.0, 6.0, 1.0]  # the small cube: I and J 10-12, K 5-7
    np.testing.assert_allclose(app.jumps[0][0], centre[:3], atol=1.5)

    ids = node_ids(scene)
    ui.thresholdSlider.value = 1.5
    app.waitUntil(lambda: ui.operatingPointLabel.text == "(your threshold)", 5, "the relabel timer")
    lower = find_regions(label_from_map(anomaly, 1.5), anomaly, outputs.sliceAxis)
    assert len(lower) > 2 and _rows(table) == _finding_rows(lower) and node.GetNumberOfRows() == len(lower)
    assert ui.findingsSummaryLabel.text == f"{len(lower)} findings, {sum(r.ml for r in lower):.3g} mL"
    assert ui.anomalousVoxelsLabel.text.endswith("voxels at threshold 1.5")
    assert node_ids(scene) == ids and app.errors == []

    ui.thresholdSlider.value = 5.0  # above the whole map: an empty label map, no findings
    app.waitUntil(lambda: ui.findingsSummaryLabel.text == "No findings at this threshold", 5, "the relabel timer")
    assert table.rowCount == 0 and node.GetNumberOfRows() == 0 and _array(p.outputLabel).sum() == 0
    assert node_ids(scene) == ids and len(app.jumps) == 1 and app.errors == []


def test_detect_runs_per_scan_and_the_slider_starts_at_its_threshold(app, scene, volume, per_scan_model, panel,
                                                                     monkeypatch):
    ui = panel.ui
    slider = ui.thresholdSlider
    _select_model(panel, "intensity-per-scan")
    assert slider.maximum == pytest.approx(3 * PER_SCAN_PIXEL)  # the model's own range, before a run
    relabels = []
    relabel = panel.logic.relabel
    monkeypatch.setattr(panel.logic, "relabel", lambda threshold: relabels.append(threshold) or relabel(threshold))
    p = _parameters(panel)

    _detect(app, panel)
    app.processEvents(0.4)  # longer than the relabel timer: setting the slider to the run's threshold re-labels nothing
    outputs = panel.logic.lastOutputs
    core = _expected("intensity-per-scan")
    assert outputs.operatingPoint == core.operating_point == "per-scan" and relabels == []
    assert outputs.threshold == pytest.approx(core.threshold) and outputs.threshold > 3 * PER_SCAN_PIXEL
    assert slider.minimum <= outputs.threshold <= slider.maximum  # the range widened to hold it
    assert slider.value == round(outputs.threshold, 3) and p.threshold == pytest.approx(outputs.threshold, abs=1e-3)
    anomaly = _array(p.outputMap)
    np.testing.assert_array_equal(_array(p.outputLabel), anomaly >= outputs.threshold)
    voxels = int((anomaly >= outputs.threshold).sum())
    assert ui.anomalousVoxelsLabel.text == f"{voxels} voxels at threshold {outputs.threshold:.3g}"
    assert ui.operatingPointLabel.text == "(per scan)"

    slider.value = 0.6  # the user's threshold re-labels; the next Detect is per scan again
    app.waitUntil(lambda: ui.operatingPointLabel.text == "(your threshold)", 5, "the relabel timer")
    assert relabels == [0.6] and ui.anomalousVoxelsLabel.text.endswith("voxels at threshold 0.6")
    _detect(app, panel)
    app.processEvents(0.4)
    assert relabels == [0.6] and ui.operatingPointLabel.text == "(per scan)"
    assert panel.logic.lastOutputs.threshold == pytest.approx(core.threshold)
    assert slider.value == round(core.threshold, 3)

    _select_model(panel, "intensity-a")  # a card without a per-scan factor: its fixed threshold
    _detect(app, panel)
    assert ui.operatingPointLabel.text == "(fixed)" and slider.value == 3.0 and panel.logic.lastOutputs.threshold == 3.0
    assert app.errors == []


def test_the_models_section_lists_installs_and_removes_models(app, scene, volume, catalogued, panel, tmp_path):
    user = catalogued["user"]
    ui = panel.ui
    _intensity_bundle(user, "mine", 2.0)  # e.g. fitted earlier; the list is refreshed by the next change
    app.dialogAnswers.append(str(_intensity_bundle(tmp_path / "elsewhere", "theirs", 2.0) / "card.json"))
    ui.installModelButton.click()  # Install from file…: a bundle's card.json
    assert [kind for kind, _ in app.dialogs] == ["getOpenFileName"] and app.errors == []
    assert (user / "theirs" / "card.json").exists()
    combo = ui.modelComboBox
    assert [combo.itemText(i) for i in range(combo.count)] == [
        "intensity-a", "intensity-b", "tiny", "mine", "theirs", LOAD_BUNDLE_TEXT]
    p = _parameters(panel)
    assert combo.currentText == "theirs" and p.model == "theirs" and p.threshold == 2.0
    assert ui.modelsStatusLabel.text == f"Installed theirs in {user / 'theirs'}; it is selected for Detect."

    ui.modelsCollapsibleButton.click()
    table = ui.modelsTable
    assert table.visible
    rows = installation.model_rows()  # what the catalogue of these folders says
    size = f"{len(catalogued['weights']) / 1e6:.3g} MB"
    assert _rows(table) == [[row["name"], row["version"], row["modality"].upper(),
                             f"{row['size'] / 1e6:.3g} MB" if row["size"] else "-", row["licence"], row["where"]]
                            for row in rows]
    byName = {row[0]: row for row in _rows(table)}
    assert list(byName) == ["intensity-a", "intensity-b", "tiny", "mine", "theirs"]
    assert byName["intensity-a"][3:] == ["-", "test", str(tmp_path / "models" / "intensity-a")]
    assert byName["tiny"][1:5] == ["test", "FLAIR", size, "test"]
    assert byName["tiny"][5] == f"not downloaded: http://127.0.0.1:{catalogued['port']}/tiny-test.pt"
    assert byName["mine"][5] == str(user / "mine")

    remove = ui.removeModelButton
    for row, tip in ((0, "intensity-a ships with the extension and cannot be removed"),
                     (2, "tiny is not downloaded; nothing to remove")):  # bundled; catalogued but not downloaded
        table.selectRow(row)
        assert not remove.enabled and remove.toolTip == tip
    _select_model(panel, "mine")
    table.selectRow(3)
    assert remove.enabled and remove.toolTip == f"Delete mine from {user}"
    app.dialogAnswers.append(False)  # the user thinks again
    remove.click()
    assert (user / "mine").exists() and app.dialogs[-1] == (
        "confirmOkCancelDisplay", (f"Delete model mine from {user}?",))
    app.dialogAnswers.append(True)
    remove.click()
    assert not (user / "mine").exists() and app.errors == []
    assert [combo.itemText(i) for i in range(combo.count)] == [
        "intensity-a", "intensity-b", "tiny", "theirs", LOAD_BUNDLE_TEXT]
    assert combo.currentText == "intensity-a" and p.model == "intensity-a"  # the removed one was chosen
    assert [row[0] for row in _rows(table)] == ["intensity-a", "intensity-b", "tiny", "theirs"]
    assert ui.modelsStatusLabel.text == f"Removed mine ({user / 'mine'})."
    assert not remove.enabled  # the table was refilled: nothing selected

    stray = tmp_path / "notes.pt"
    stray.write_bytes(b"not weights at all")
    app.dialogAnswers.extend([str(stray), ""])  # a file that is no model, then a cancelled dialog
    ui.installModelButton.click()
    assert len(app.errors) == 1 and app.errors[0][0].startswith(f"Cannot install {stray}: ")
    ui.installModelButton.click()
    assert len(app.errors) == 1 and sorted(q.name for q in user.iterdir() if not q.name.startswith(".")) == [
        "theirs"]


def test_a_model_not_downloaded_is_asked_for_before_detect(app, scene, volume, catalogued, panel):
    ui = panel.ui
    _select_model(panel, "tiny")
    assert ui.modelInfoLabel.text.startswith("patchgan, FLAIR")  # the card only: nothing read or downloaded
    ids = node_ids(scene)
    app.dialogAnswers.append(False)  # Cancel at the question
    ui.detectButton.click()
    app.processEvents(0.2)
    assert len(app.dialogs) == 1
    kind, (question,) = app.dialogs[0]
    assert kind == "confirmOkCancelDisplay" and question.startswith(
        f"Download tiny ({len(catalogued['weights']) / 1e6:.3g} MB) from "
        f"http://127.0.0.1:{catalogued['port']}/tiny-test.pt?")
    assert "weights licence: test" in question
    assert not panel.tasks.busy and ui.detectButton.text == "Detect" and app.errors == []
    assert ui.statusLabel.text == "tiny was not downloaded; nothing was run."
    assert node_ids(scene) == ids and not (catalogued["user"] / "tiny").exists()

    app.dialogAnswers.append(True)  # OK, but the mirror cannot be reached: the core's one-line error
    ui.detectButton.click()
    assert ui.detectButton.text == "Cancel"
    app.waitUntil(lambda: not panel.tasks.busy, 30, "the download to fail")
    assert len(app.errors) == 1
    message = app.errors[0][0]
    assert message.startswith(f"could not download model tiny from http://127.0.0.1:{catalogued['port']}/tiny-test.pt: "
                              "the server is unreachable") and "\n" not in message
    assert node_ids(scene) == ids and not (catalogued["user"] / "tiny").exists()
    assert ui.detectButton.text == "Detect" and ui.detectButton.enabled


def test_a_confirmed_download_runs_in_the_worker_and_cancels(app, scene, volume, catalogued, panel, monkeypatch):
    ui = panel.ui
    user = catalogued["user"]
    with serving({"/tiny-test.pt": catalogued["weights"]}) as server:
        monkeypatch.setenv(catalogue.BASE_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}")
        _select_model(panel, "tiny")
        ids = node_ids(scene)
        gate = Gate(panel.logic, stage="downloading tiny")
        app.dialogAnswers.append(True)
        ui.detectButton.click()
        app.waitUntil(gate.reached.is_set, 30, "the download")
        app.processEvents(0.25)  # the poll timer shows the download's progress
        assert ui.detectButton.text == "Cancel" and ui.progressBar.visible
        assert ui.progressBar.format.startswith("downloading tiny test (")
        assert not ui.installModelButton.enabled and not ui.fitButton.enabled
        ui.detectButton.click()  # Cancel mid-download: no model installed, the scene unchanged
        app.waitUntil(lambda: not panel.tasks.busy, 30, "the cancel")
        assert ui.statusLabel.text == "Cancelled; the scene was not changed." and app.errors == []
        assert not (user / "tiny").exists() and node_ids(scene) == ids

        gate.released.set()
        app.dialogAnswers.append(True)  # asked again: still not installed
        _detect(app, panel)
    assert [kind for kind, _ in app.dialogs] == ["confirmOkCancelDisplay"] * 2 and app.errors == []
    assert (user / "tiny" / "weights.pt").read_bytes() == catalogued["weights"]
    assert panel.logic.lastOutputs.model == "tiny" and "model tiny;" in ui.deviceUsedLabel.text
    assert [path for path, _ in server.state["requests"]] == ["/tiny-test.pt"]  # the cancelled transfer's bytes were kept and checked
    where = {row[0]: row[5] for row in _rows(ui.modelsTable)}
    assert where["tiny"] == str(user / "tiny") and ui.installModelButton.enabled
    _detect(app, panel)  # downloaded now: no question
    assert len(app.dialogs) == 2 and app.errors == []


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
    assert ui.findingsTable.rowCount == 0 and ui.findingsSummaryLabel.text == ""
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
    modules_before = dict(sys.modules)  # an earlier test may have imported some of FRESH (e.g. sample_data)
    errorDisplay = slicer.util.errorDisplay
    with pythonqt_shim.slicerApp(scene, FRESH):
        from MedicalAnomalyDetectionSlicer.widget import MedicalAnomalyDetectionPanel

        MedicalAnomalyDetectionPanel  # noqa: B018 - imported under the layer
        assert slicer.mrmlScene is scene and slicer.util.errorDisplay is not errorDisplay
    assert {name: getattr(slicer, name, None) for name in names} == before
    assert slicer.util.errorDisplay is errorDisplay
    watched = {"qt", "ctk", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", *FRESH}
    assert {name: sys.modules.get(name) for name in watched} == {name: modules_before.get(name) for name in watched}

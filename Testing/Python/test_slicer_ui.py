"""The panel's .ui file against the code that uses it, loaded offscreen by the PythonQt-style layer's loader
(``pythonqt_shim.QUiLoader``, PySide6; skipped without PySide6 or the ``slicer-core`` wheel).

The ctk/qMRML widgets are the layer's small emulations (see its docstring for what they cannot prove), so the check is
about names, classes, the parameter-node binding properties and the .ui's own signal/slot connections; the loader
fails on any Qt warning (an unknown property, a connection that cannot be made). ``test_slicer_panel.py`` runs the
panel itself.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")
slicer = pytest.importorskip("slicer")

import pythonqt_shim  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
UI_FILE = REPO / "Resources" / "UI" / "MedicalAnomalyDetection.ui"
PACKAGE = REPO / "MedicalAnomalyDetection" / "MedicalAnomalyDetectionSlicer"

# What the panel code expects each widget it touches to be.
EXPECTED_CLASSES = {
    "inputSelector": "qMRMLNodeComboBox", "brainMaskSelector": "qMRMLNodeComboBox",
    "outputMapSelector": "qMRMLNodeComboBox", "outputLabelSelector": "qMRMLNodeComboBox",
    "outputTableSelector": "qMRMLNodeComboBox", "modelComboBox": "QComboBox", "deviceComboBox": "QComboBox",
    "modelInfoLabel": "QLabel", "detectButton": "QPushButton", "progressBar": "QProgressBar",
    "statusLabel": "QLabel", "thresholdSlider": "ctkSliderWidget", "volumeScoreLabel": "QLabel",
    "anomalousVoxelsLabel": "QLabel", "deviceUsedLabel": "QLabel", "goToSliceButton": "QPushButton",
    "showChartButton": "QPushButton", "resultsCollapsibleButton": "ctkCollapsibleButton",
    "referencesCollapsibleButton": "ctkCollapsibleButton", "referencesSelector": "qMRMLCheckableNodeComboBox",
    "referenceSlicesLineEdit": "QLineEdit", "referenceModalityComboBox": "QComboBox",
    "newModelNameLineEdit": "QLineEdit", "backbonePathLineEdit": "ctkPathLineEdit",
    "textureFolderLineEdit": "ctkPathLineEdit", "fitButton": "QPushButton", "fitProgressBar": "QProgressBar",
    "fitStatusLabel": "QLabel", "operatingPointLabel": "QLabel", "findingsSummaryLabel": "QLabel",
    "findingsTable": "QTableWidget", "modelsCollapsibleButton": "ctkCollapsibleButton", "modelsTable": "QTableWidget",
    "installModelButton": "QPushButton", "removeModelButton": "QPushButton", "modelsStatusLabel": "QLabel",
}


@pytest.fixture(scope="module")
def panel():
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = pythonqt_shim.QUiLoader()  # module-level classes: PySide6 needs them alive as long as the process
    widget = loader.load(str(UI_FILE))
    yield widget
    widget.deleteLater()
    app.processEvents()


def _used_ui_names() -> set[str]:
    return set(re.findall(r"self\.ui\.(\w+)", (PACKAGE / "widget.py").read_text()))


def _parameter_fields() -> dict[str, ast.AnnAssign]:
    tree = ast.parse((PACKAGE / "parameters.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    return {n.target.id: n for n in cls.body if isinstance(n, ast.AnnAssign)}


def _widget(panel, name):
    found = panel.findChild(QtWidgets.QWidget, name)
    assert found is not None, f"{name} is used by widget.py but missing from the .ui"
    return found


def test_root_is_a_mrml_widget(panel):
    assert panel.metaObject().className() == "qMRMLWidget"


def test_every_widget_the_code_uses_exists_with_its_class(panel):
    used = _used_ui_names()
    assert used >= {"detectButton", "thresholdSlider", "modelComboBox", "progressBar"}
    assert used <= set(EXPECTED_CLASSES), f"add {used - set(EXPECTED_CLASSES)} to EXPECTED_CLASSES"
    for name in used:
        assert _widget(panel, name).metaObject().className() == EXPECTED_CLASSES[name], name


def test_parameter_bindings_match_the_parameter_node(panel):
    bound = {w.property("SlicerParameterName"): w.objectName for w in panel.findChildren(QtWidgets.QWidget)
             if w.property("SlicerParameterName")}
    fields = _parameter_fields()
    assert set(bound) <= set(fields)
    assert set(fields) - set(bound) == {"model"}  # the model combo is filled and handled by code
    assert bound["inputVolume"] == "inputSelector" and bound["threshold"] == "thresholdSlider"


def test_selectors_offer_the_node_types_the_logic_accepts(panel):
    assert list(_widget(panel, "inputSelector").property("nodeTypes")) == ["vtkMRMLScalarVolumeNode"]
    assert list(_widget(panel, "brainMaskSelector").property("nodeTypes")) == [
        "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"]
    assert _widget(panel, "brainMaskSelector").property("noneEnabled") is True
    assert _widget(panel, "inputSelector").property("noneEnabled") is False


def test_device_choices_match_the_parameter_choices(panel):
    combo = _widget(panel, "deviceComboBox")
    items = [combo.itemText(i) for i in range(combo.count)]
    assert items == ["Auto", "GPU", "CPU"]
    assert ast.literal_eval(_parameter_fields()["device"].value) == "Auto"
    devices = next(n for n in ast.parse((PACKAGE / "parameters.py").read_text()).body
                   if isinstance(n, ast.Assign) and n.targets[0].id == "DEVICES")
    assert list(ast.literal_eval(devices.value)) == items


def test_reference_contrasts_are_ones_the_models_name(panel):
    combo = _widget(panel, "referenceModalityComboBox")
    assert [combo.itemText(i) for i in range(combo.count)] == ["FLAIR", "T1", "T2"]
    assert list(_widget(panel, "referencesSelector").property("nodeTypes")) == ["vtkMRMLScalarVolumeNode"]


def test_detect_starts_disabled(panel):
    button = _widget(panel, "detectButton")
    assert button.text == "Detect" and not button.enabled


def test_the_tables_have_their_columns_and_are_read_only(panel):
    for name, headers in (("findingsTable", ["#", "mL", "Slices", "Peak score"]),
                          ("modelsTable", ["Name", "Version", "Modality", "Size", "Licence", "Where"])):
        table = _widget(panel, name)
        assert [table.horizontalHeaderItem(i).text() for i in range(table.columnCount)] == headers, name
        assert table.editTriggers == QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers, name
        assert table.selectionBehavior == QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows, name
    assert not _widget(panel, "removeModelButton").enabled  # until a removable model is selected


def test_every_node_selector_gets_the_scene(panel):
    """qMRMLWidget.setMRMLScene reaches the selectors only through the .ui's signal/slot connections."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(UI_FILE).getroot()
    selectors = {w.get("name") for w in root.iter("widget")
                 if w.get("class") in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox")}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert len(selectors) == 6 and selectors == connected
    scene = slicer.vtkMRMLScene()
    try:
        panel.setMRMLScene(scene)  # made by Qt's loader from the .ui's <connections>
        assert {name for name in selectors if _widget(panel, name).mrmlScene() is scene} == selectors
    finally:
        panel.setMRMLScene(None)

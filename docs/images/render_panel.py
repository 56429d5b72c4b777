"""Renders docs/images/slicer_panel.png: the module's .ui loaded offscreen with PySide6, Slicer's ctk/qMRML widgets
replaced by the nearest plain Qt widgets and a few example values filled in (not a screenshot of Slicer).

Run from the repository root: ``QT_QPA_PLATFORM=offscreen python docs/images/render_panel.py``.
"""

from PySide6 import QtUiTools, QtWidgets

# Kept referenced for the whole run: QUiLoader instantiates these classes and must never meet a collected one.
STAND_INS = [type(name, (base,), {}) for name, base in (
    ("ctkCollapsibleButton", QtWidgets.QGroupBox), ("ctkSliderWidget", QtWidgets.QDoubleSpinBox),
    ("ctkPathLineEdit", QtWidgets.QLineEdit), ("qMRMLNodeComboBox", QtWidgets.QComboBox),
    ("qMRMLCheckableNodeComboBox", QtWidgets.QComboBox), ("qMRMLWidget", QtWidgets.QWidget))]

app = QtWidgets.QApplication([])
loader = QtUiTools.QUiLoader()
for stand_in in STAND_INS:
    loader.registerCustomWidget(stand_in)
panel = loader.load("Resources/UI/MedicalAnomalyDetection.ui")
for box in panel.findChildren(QtWidgets.QGroupBox):
    box.setTitle(box.property("text") or "")
panel.findChild(QtWidgets.QComboBox, "inputSelector").addItem("mslub-patient19 flair")
panel.findChild(QtWidgets.QComboBox, "modelComboBox").addItems(["patchgan-flair", "pathoscope-flair"])
panel.findChild(QtWidgets.QComboBox, "referencesSelector").addItem("healthy-1 FLAIR, healthy-2 FLAIR (2 checked)")
panel.findChild(QtWidgets.QLineEdit, "newModelNameLineEdit").setText("my-scanner-flair")
panel.findChild(QtWidgets.QProgressBar, "progressBar").hide()
progress = panel.findChild(QtWidgets.QProgressBar, "fitProgressBar")
progress.setValue(42)
progress.setFormat("training adapter and discriminator: %p%")
findings = panel.findChild(QtWidgets.QTableWidget, "findingsTable")
for row, cells in enumerate((("1", "2.41", "88–97", "7.9"), ("2", "0.36", "101–104", "6.2"))):
    findings.insertRow(row)
    for column, text in enumerate(cells):
        findings.setItem(row, column, QtWidgets.QTableWidgetItem(text))
panel.findChild(QtWidgets.QLabel, "findingsSummaryLabel").setText("2 findings, 2.77 mL (example values)")
models = panel.findChild(QtWidgets.QTableWidget, "modelsTable")
for row, cells in enumerate((("patchgan-flair", "0.2.0", "flair", "2.9 MB", "bundled"),
                             ("scrps-t1", "0.2.0", "t1", "36.5 MB", "not downloaded"))):
    models.insertRow(row)
    for column, text in enumerate(cells[:models.columnCount()]):
        models.setItem(row, column, QtWidgets.QTableWidgetItem(text))
panel.resize(420, 900)
panel.adjustSize()
panel.grab().save("docs/images/slicer_panel.png")

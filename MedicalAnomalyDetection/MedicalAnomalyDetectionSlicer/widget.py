"""The module panel (needs a running Slicer): choose a volume and a model, click Detect, see and tune the anomalies;
or learn a new model from a few healthy reference volumes and detect with it.

Detection and fitting run one at a time through a :class:`~.tasks.TaskRunner` (a worker thread polled by a
``qt.QTimer``); Detect (or Fit) turns into Cancel meanwhile and the other waits. Detect runs at the model's own
operating point (per scan where its card has one) and sets the threshold slider to the threshold the run used; the
slider only re-labels the last map (and its findings). A catalogued model whose weights are not here yet is
downloaded in the worker thread, after the user said yes. The Models section lists, installs and removes models.
"""

from __future__ import annotations

from pathlib import Path

import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from MedicalAnomalyDetectionLib.bundle import list_models, read_card, resolve_bundle_path, user_models_dir
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.references import FittedModel

from . import resourcePath
from .dependencies import ensureDeepbet
from .display import showInSliceViews
from .choices import (findingRow, findingsSummary, operatingPointText, parseSliceRange, startingThreshold,
                      thresholdSliderRange)
from .jobs import DetectionJob
from .logic import DetectionOutputs, MedicalAnomalyDetectionLogic
from .models_section import ModelsSection
from .parameters import DEVICES, MedicalAnomalyDetectionParameterNode, parameterNode
from .tasks import TaskRunner, TaskView

LOAD_BUNDLE_TEXT = "Load model bundle…"
POLL_MS = 100
RELABEL_DELAY_MS = 150


class MedicalAnomalyDetectionPanel(ModelsSection, VTKObservationMixin):
    """Builds the panel from ``Resources/UI/MedicalAnomalyDetection.ui`` and drives the logic; ``widget`` is the
    Qt widget the module adds to its layout."""

    def __init__(self) -> None:
        VTKObservationMixin.__init__(self)
        self.widget = slicer.util.loadUI(str(resourcePath("UI", "MedicalAnomalyDetection.ui")))
        self.ui = slicer.util.childWidgetVariables(self.widget)
        self.widget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedicalAnomalyDetectionLogic()
        self._parameterNode: MedicalAnomalyDetectionParameterNode | None = None
        self._guiTag = None
        self._sliderRange = None  # the threshold slider's range for the selected model
        self._modelRows: list[dict] = []  # what the Models table lists, row by row
        self.tasks = TaskRunner(
            {"detect": TaskView(self.ui.detectButton, self.ui.progressBar, self.ui.statusLabel, "Detect",
                                "Cancelled; the scene was not changed."),
             "fit": TaskView(self.ui.fitButton, self.ui.fitProgressBar, self.ui.fitStatusLabel, "Fit",
                             "Cancelled; no model was saved.")},
            lambda message, details: slicer.util.errorDisplay(message, detailedText=details))
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_MS)
        self._pollTimer.connect("timeout()", self._poll)
        self._relabelTimer = qt.QTimer()
        self._relabelTimer.setSingleShot(True)
        self._relabelTimer.setInterval(RELABEL_DELAY_MS)
        self._relabelTimer.connect("timeout()", self._relabel)

        self._fillModels()
        self._fillModelsTable()
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self._onModelChanged)
        self.ui.detectButton.connect("clicked(bool)", self._onDetectOrCancel)
        self.ui.thresholdSlider.connect("valueChanged(double)", lambda value: self._relabelTimer.start())
        self.ui.findingsTable.connect("cellClicked(int,int)", self._goToFinding)
        self.ui.goToSliceButton.connect("clicked(bool)", self._goToMostAnomalousSlice)
        self.ui.showChartButton.connect("clicked(bool)", self._showChart)
        self.ui.fitButton.connect("clicked(bool)", self._onFitOrCancel)
        self.ui.modelsTable.connect("itemSelectionChanged()", self._updateModelButtons)
        self.ui.removeModelButton.connect("clicked(bool)", self._removeModel)
        self.ui.installModelButton.connect("clicked(bool)", self._installModel)
        self.ui.resultsCollapsibleButton.collapsed = True
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self._onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *args: self.enter())
        self.enter()

    # Module life cycle -------------------------------------------------------------------------------------------

    def enter(self) -> None:
        """(Re)connect the panel to the scene's parameter node."""
        self._setParameterNode(parameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def exit(self) -> None:
        self._setParameterNode(None)

    def cleanup(self) -> None:
        self.tasks.cancel()
        self._pollTimer.stop()
        self._setParameterNode(None)
        self.removeObservers()

    def _setParameterNode(self, node: MedicalAnomalyDetectionParameterNode | None) -> None:
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateState)
        self._parameterNode = node
        if node is not None:
            self._selectModel(node.model)
            self._guiTag = node.connectGui(self.ui)
            self._applySliderRange()  # connectGui widened the slider to the parameter's whole WithinRange
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self._updateState)
            self._updateState()

    def _onSceneStartClose(self, caller, event) -> None:
        if self.tasks.isRunning("detect"):  # its result would land in a closed scene
            self.tasks.cancel()
        self._setParameterNode(None)
        self.ui.resultsCollapsibleButton.collapsed = True  # the results of the closed scene are gone
        self.ui.findingsTable.setRowCount(0)
        self.ui.findingsSummaryLabel.text = ""

    # Models ------------------------------------------------------------------------------------------------------

    def _fillModels(self) -> None:
        """(Re)fill the model list without firing model changes; the caller selects a model afterwards."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for card, folder in list_models():
            combo.addItem(card.name, card.name)
            combo.setItemData(combo.count - 1, f"{card.method} model for {card.modality.upper()} MRI, "
                                               f"version {card.version} ({folder})", qt.Qt.ToolTipRole)
        combo.addItem(LOAD_BUNDLE_TEXT, "")
        combo.blockSignals(wasBlocked)

    def _selectModel(self, model: str) -> None:
        combo = self.ui.modelComboBox
        index = combo.findData(model)
        if index < 0 and Path(model).is_dir():
            wasBlocked = combo.blockSignals(True)  # the insertion shifts the current "Load…" item: not a choice
            combo.insertItem(combo.count - 1, Path(model).name, model)
            combo.blockSignals(wasBlocked)
            index = combo.count - 2
        index = max(index, 0)
        if index == combo.currentIndex and combo.itemData(index):
            self._onModelChanged(index)  # Qt signals no change, yet the parameter node must follow the shown model
        else:
            combo.setCurrentIndex(index)

    def _onModelChanged(self, index: int) -> None:
        combo = self.ui.modelComboBox
        if index < 0:
            return
        if combo.itemText(index) == LOAD_BUNDLE_TEXT:
            folder = qt.QFileDialog.getExistingDirectory(self.widget, "Choose a model bundle folder (with card.json)")
            previous = self._parameterNode.model if self._parameterNode else ""
            self._selectModel(folder or previous)
            return
        model = combo.itemData(index)
        try:
            card = read_card(resolve_bundle_path(model))  # the card only: no weights read or downloaded here
        except InputError as error:
            slicer.util.errorDisplay(f"Cannot use this model bundle: {error}")
            previous = self._parameterNode.model if self._parameterNode else ""
            if previous != model and combo.findData(previous) >= 0:
                combo.setCurrentIndex(combo.findData(previous))  # show the model Detect will use
            return
        self.ui.modelInfoLabel.text = (f"{card.method}, {card.modality.upper()}, {card.preprocessing.plane} slices; "
                                       f"weights licence: {card.licence.get('weights', 'unknown')}")
        threshold = card.thresholds.get("pixel")
        p = self._parameterNode or parameterNode()  # a fit may end while the user is in another module
        starting = startingThreshold(model, p.model, p.threshold, threshold)
        if threshold:
            self._sliderRange = thresholdSliderRange(threshold, starting)  # e.g. the last run's per-scan threshold
            self._applySliderRange()
        with slicer.util.NodeModify(p):
            p.threshold = starting
            p.model = model

    def _applySliderRange(self) -> None:
        bounds = self._sliderRange
        if bounds is not None:
            slider = self.ui.thresholdSlider
            slider.maximum, slider.minimum, slider.singleStep = bounds.maximum, bounds.minimum, bounds.step

    # Detect / cancel ---------------------------------------------------------------------------------------------

    def _ready(self) -> dict[str, bool]:
        return {"detect": self._parameterNode is not None and self._parameterNode.inputVolume is not None}

    def _updateState(self, caller=None, event=None) -> None:
        """Detect needs an input volume; a running task's button cancels it and the other one waits."""
        self.tasks.refresh(self._ready())
        if not self.tasks.busy:
            ready = self._ready()["detect"]
            self.ui.detectButton.toolTip = "Find anomalies in the input volume" if ready else "Select an input volume"
        self._updateModelButtons()

    def _poll(self) -> None:
        if self.tasks.poll(self._ready()):
            self._pollTimer.stop()
            self._fillModelsTable()  # a Detect may have downloaded a model, a fit added one
            self._updateState()

    def _start(self, name: str, job, onResult, status: str) -> None:
        if self.tasks.start(name, job, onResult, status):
            self._pollTimer.start()
            self._updateModelButtons()

    def _onDetectOrCancel(self) -> None:
        if self.tasks.isRunning("detect"):
            self.tasks.cancel()
            return
        p = self._parameterNode
        try:  # always at the model's operating point; the slider then shows the threshold the run chose
            job = self.logic.prepare(p.inputVolume, p.model, p.brainMask, DEVICES[p.device], threshold=None)
        except InputError as error:
            slicer.util.errorDisplay(str(error))
            return
        if job.needsBrainExtraction and not ensureDeepbet():
            slicer.util.errorDisplay("Select a brain mask for this skull-on volume, or install deepbet.")
            return
        if job.download is not None and not self._confirmDownload(job.download):
            self.ui.statusLabel.text = f"{job.download.name} was not downloaded; nothing was run."
            return
        self._start("detect", job, self._applyDetection, "\n".join(job.warnings))

    def _confirmDownload(self, entry) -> bool:
        """Ask before the first use of a catalogued model downloads its weights (in the worker thread)."""
        licence = str(entry.licence.get("weights", "unknown"))
        if entry.licence.get("non_commercial"):
            licence += " (non-commercial)"
        return bool(slicer.util.confirmOkCancelDisplay(
            f"Download {entry.name} ({entry.size / 1e6:.3g} MB) from {entry.url}?\n\n"
            f"Its weights are saved in {user_models_dir()} and checked before use; weights licence: {licence}.",
            windowTitle="Download model"))

    def _applyDetection(self, job: DetectionJob, detection) -> None:
        p = self._parameterNode or parameterNode()  # the user may have left the module (exit) during the run
        self._show(self.logic.apply(job, detection, p.outputMap, p.outputLabel, p.outputTable), p)

    def _show(self, outputs: DetectionOutputs, p: MedicalAnomalyDetectionParameterNode) -> None:
        """Remember the outputs, put the slider at the run's threshold (no re-labelling: :meth:`_relabel` skips the
        threshold the label map already has), overlay them on the input and fill the result box."""
        bounds = self._sliderRange or thresholdSliderRange(outputs.threshold)
        self._sliderRange = bounds.including(outputs.threshold)
        self._applySliderRange()
        with slicer.util.NodeModify(p):
            p.outputMap = outputs.anomalyMap
            p.outputLabel = outputs.anomalyLabel
            p.outputTable = outputs.sliceTable
            p.threshold = outputs.threshold
        showInSliceViews(slicer.mrmlScene, outputs.inputVolume, outputs.anomalyMap, outputs.anomalyLabel)
        self._fillResults(outputs)
        self.ui.resultsCollapsibleButton.collapsed = False

    def _fillResults(self, outputs: DetectionOutputs) -> None:
        flagged = "" if outputs.sliceThreshold is None else (
            f" ({outputs.flaggedSlices} slices above the model's slice threshold)")
        self.ui.volumeScoreLabel.text = f"{outputs.volumeScore:.3g}{flagged}"
        self.ui.anomalousVoxelsLabel.text = f"{outputs.anomalousVoxels} voxels at threshold {outputs.threshold:.3g}"
        self.ui.operatingPointLabel.text = operatingPointText(outputs.operatingPoint)
        self.ui.deviceUsedLabel.text = (f"{outputs.device.upper()}, {outputs.seconds:.1f} s, model {outputs.model}; "
                                        f"brain: {outputs.masking} ({outputs.brainMask.GetName()})")
        self.ui.goToSliceButton.text = f"Go to most anomalous slice ({outputs.mostAnomalousSlice})"
        self.ui.statusLabel.text = "\n".join(outputs.warnings)
        self._fillFindings(outputs.findings)

    def _fillFindings(self, findings) -> None:
        """One row per finding (id, mL, slices, peak score) and the summary above them."""
        table = self.ui.findingsTable
        table.clearContents()
        table.setRowCount(len(findings))
        for row, region in enumerate(findings):
            for column, text in enumerate(findingRow(region)):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        self.ui.findingsSummaryLabel.text = findingsSummary(findings)

    # Results -------------------------------------------------------------------------------------------------------

    def _currentOutputs(self) -> DetectionOutputs | None:
        outputs = self.logic.lastOutputs
        if outputs is None or self._parameterNode is None or outputs.inputVolume is not self._parameterNode.inputVolume:
            return None
        return outputs

    def _relabel(self) -> None:
        outputs = self._currentOutputs()
        if outputs is None or self.tasks.isRunning("detect"):
            return
        slider = self.ui.thresholdSlider
        if abs(slider.value - outputs.threshold) < 0.5 * 10.0 ** -slider.decimals:
            return  # the label map is at this threshold already (e.g. the slider was set to a run's threshold)
        try:
            self._fillResults(self.logic.relabel(slider.value))
        except InputError as error:
            self.ui.statusLabel.text = str(error)

    def _goToFinding(self, row: int, column: int = 0) -> None:
        """Centre the slice views on the finding of the clicked row."""
        outputs = self._currentOutputs()
        if outputs is not None and 0 <= row < len(outputs.findings):
            ras = self.logic.findingCenterRAS(outputs.inputVolume, outputs.findings[row])
            slicer.modules.markups.logic().JumpSlicesToLocation(*ras, True)

    def _goToMostAnomalousSlice(self) -> None:
        outputs = self._currentOutputs()
        if outputs is not None:
            ras = self.logic.sliceCenterRAS(outputs.inputVolume, outputs.sliceAxis, outputs.mostAnomalousSlice)
            slicer.modules.markups.logic().JumpSlicesToLocation(*ras, True)

    def _showChart(self) -> None:
        outputs = self._currentOutputs()
        if outputs is not None:
            slicer.modules.plots.logic().ShowChartInLayout(outputs.chart)

    # Learn normal from references ---------------------------------------------------------------------------------

    def _onFitOrCancel(self) -> None:
        if self.tasks.isRunning("fit"):
            self.tasks.cancel()
            return
        try:
            job = self.logic.prepareFit(
                self.ui.referencesSelector.checkedNodes(), self.ui.newModelNameLineEdit.text.strip(),
                self.ui.referenceModalityComboBox.currentText.lower(),
                sliceRange=parseSliceRange(self.ui.referenceSlicesLineEdit.text),
                backbone=self.ui.backbonePathLineEdit.currentPath or None,
                textureDir=self.ui.textureFolderLineEdit.currentPath or None)
        except InputError as error:
            slicer.util.errorDisplay(str(error))
            return
        self._start("fit", job, lambda fitJob, fitted: self._useFittedModel(fitted), "\n".join(job.warnings))

    def _useFittedModel(self, fitted: FittedModel) -> None:
        """Add the new model to the list, select it for Detect and say what to watch for."""
        card = fitted.bundle.card
        self._fillModels()
        self._selectModel(card.name)
        self._fillModelsTable()
        lines = [f"Model {card.name} saved in {fitted.bundle.path} ({card.training['seconds']:.0f} s); "
                 "it is selected for Detect. Its threshold comes from the references themselves, so expect "
                 "somewhat more flagged on new scans; calibrate on healthy validation scans when you can.",
                 *fitted.warnings]
        self.ui.fitStatusLabel.text = "\n".join(lines)

    def _modelsChanged(self, select: str | None = None) -> None:
        """Refill the model list and the table; select ``select``, else keep the chosen model (the first one when
        the chosen model is gone)."""
        p = self._parameterNode or parameterNode()
        self._fillModels()
        self._selectModel(select or p.model)
        self._fillModelsTable()

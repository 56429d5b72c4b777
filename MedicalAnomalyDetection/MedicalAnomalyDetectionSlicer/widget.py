"""The module panel (needs a running Slicer): choose a volume and a model, click Detect, see and tune the anomalies;
or learn a new model from a few healthy reference volumes and detect with it.

Detection and fitting run one at a time through a :class:`~.tasks.TaskRunner` (a worker thread polled by a
``qt.QTimer``); Detect (or Fit) turns into Cancel meanwhile and the other waits. The threshold slider only re-labels
the last map.
"""

from __future__ import annotations

from pathlib import Path

import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from MedicalAnomalyDetectionLib.bundle import list_models, read_card, resolve_bundle_path
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.fewshot.references import FittedModel

from . import resourcePath
from .dependencies import ensureDeepbet
from .display import showInSliceViews
from .choices import parseSliceRange, startingThreshold, thresholdSliderRange
from .logic import DetectionJob, DetectionOutputs, MedicalAnomalyDetectionLogic
from .parameters import DEVICES, MedicalAnomalyDetectionParameterNode, parameterNode
from .tasks import TaskRunner, TaskView

LOAD_BUNDLE_TEXT = "Load model bundle…"
POLL_MS = 100
RELABEL_DELAY_MS = 150


class MedicalAnomalyDetectionPanel(VTKObservationMixin):
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
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self._onModelChanged)
        self.ui.detectButton.connect("clicked(bool)", self._onDetectOrCancel)
        self.ui.thresholdSlider.connect("valueChanged(double)", lambda value: self._relabelTimer.start())
        self.ui.goToSliceButton.connect("clicked(bool)", self._goToMostAnomalousSlice)
        self.ui.showChartButton.connect("clicked(bool)", self._showChart)
        self.ui.fitButton.connect("clicked(bool)", self._onFitOrCancel)
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
        if threshold:
            self._sliderRange = thresholdSliderRange(threshold)
            self._applySliderRange()
        p = self._parameterNode or parameterNode()  # a fit may end while the user is in another module
        with slicer.util.NodeModify(p):
            p.threshold = startingThreshold(model, p.model, p.threshold, threshold)
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

    def _poll(self) -> None:
        if self.tasks.poll(self._ready()):
            self._pollTimer.stop()
            self._updateState()

    def _start(self, name: str, job, onResult, status: str) -> None:
        if self.tasks.start(name, job, onResult, status):
            self._pollTimer.start()

    def _onDetectOrCancel(self) -> None:
        if self.tasks.isRunning("detect"):
            self.tasks.cancel()
            return
        p = self._parameterNode
        try:
            job = self.logic.prepare(p.inputVolume, p.model, p.brainMask, DEVICES[p.device], p.threshold or None)
        except InputError as error:
            slicer.util.errorDisplay(str(error))
            return
        if job.needsBrainExtraction and not ensureDeepbet():
            slicer.util.errorDisplay("Select a brain mask for this skull-on volume, or install deepbet.")
            return
        self._start("detect", job, self._applyDetection, "\n".join(job.warnings))

    def _applyDetection(self, job: DetectionJob, detection) -> None:
        p = self._parameterNode or parameterNode()  # the user may have left the module (exit) during the run
        self._show(self.logic.apply(job, detection, p.outputMap, p.outputLabel, p.outputTable), p)

    def _show(self, outputs: DetectionOutputs, p: MedicalAnomalyDetectionParameterNode) -> None:
        """Remember the outputs, overlay them on the input and fill the result box."""
        with slicer.util.NodeModify(p):
            p.outputMap = outputs.anomalyMap
            p.outputLabel = outputs.anomalyLabel
            p.outputTable = outputs.sliceTable
        showInSliceViews(slicer.mrmlScene, outputs.inputVolume, outputs.anomalyMap, outputs.anomalyLabel)
        self._fillResults(outputs)
        self.ui.resultsCollapsibleButton.collapsed = False

    def _fillResults(self, outputs: DetectionOutputs) -> None:
        flagged = "" if outputs.sliceThreshold is None else (
            f" ({outputs.flaggedSlices} slices above the model's slice threshold)")
        self.ui.volumeScoreLabel.text = f"{outputs.volumeScore:.3g}{flagged}"
        self.ui.anomalousVoxelsLabel.text = f"{outputs.anomalousVoxels} voxels at threshold {outputs.threshold:.3g}"
        self.ui.deviceUsedLabel.text = (f"{outputs.device.upper()}, {outputs.seconds:.1f} s, model {outputs.model}; "
                                        f"brain: {outputs.masking} ({outputs.brainMask.GetName()})")
        self.ui.goToSliceButton.text = f"Go to most anomalous slice ({outputs.mostAnomalousSlice})"
        self.ui.statusLabel.text = "\n".join(outputs.warnings)

    # Results -------------------------------------------------------------------------------------------------------

    def _currentOutputs(self) -> DetectionOutputs | None:
        outputs = self.logic.lastOutputs
        if outputs is None or self._parameterNode is None or outputs.inputVolume is not self._parameterNode.inputVolume:
            return None
        return outputs

    def _relabel(self) -> None:
        if self._currentOutputs() is None or self.tasks.isRunning("detect"):
            return
        try:
            self._fillResults(self.logic.relabel(self.ui.thresholdSlider.value))
        except InputError as error:
            self.ui.statusLabel.text = str(error)

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
        lines = [f"Model {card.name} saved in {fitted.bundle.path} ({card.training['seconds']:.0f} s); "
                 "it is selected for Detect. Its threshold comes from the references themselves, so expect "
                 "somewhat more flagged on new scans; calibrate on healthy validation scans when you can.",
                 *fitted.warnings]
        self.ui.fitStatusLabel.text = "\n".join(lines)

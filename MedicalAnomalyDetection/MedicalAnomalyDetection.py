"""3D Slicer module: unsupervised anomaly detection in brain MRI. The work is done in ``MedicalAnomalyDetectionLib``
(Slicer-free core) and ``MedicalAnomalyDetectionSlicer`` (logic, panel); this file only registers them."""

import time

import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget

from MedicalAnomalyDetectionSlicer import resourcePath
from MedicalAnomalyDetectionSlicer.dependencies import ensureTorch
from MedicalAnomalyDetectionSlicer.sample_data import registerSampleData


class MedicalAnomalyDetection(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Medical Anomaly Detection"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedicalAnomalyDetection contributors"]
        self.parent.icon = qt.QIcon(str(resourcePath("Icons", "MedicalAnomalyDetection.png")))
        self.parent.helpText = """
Finds what looks unlike healthy brain in an MRI volume (FLAIR or T1, per model) with a model trained only on
healthy scans, and shows an anomaly heat map, a thresholded label map and a score per slice.
Pick the volume and a model, optionally a brain mask, and click <b>Detect</b>. The threshold slider re-labels the map
without running the model again. Research use only; not for diagnosis.
<p><b>Learn normal from references</b> fits a few-shot PathoSCOPE model to 2-8 healthy scans of your own (a few
minutes on a CPU); it is saved in your model folder and selected for Detect.</p>
<p>From the Python console:</p>
<pre>
from MedicalAnomalyDetectionSlicer.logic import MedicalAnomalyDetectionLogic
volume = slicer.util.getNode("flair")
outputs = MedicalAnomalyDetectionLogic().process(volume, model="patchgan-flair", device="auto")
print(outputs.volumeScore, outputs.mostAnomalousSlice, outputs.anomalousVoxels)
references = [slicer.util.getNode(name) for name in ("healthy1", "healthy2")]
fitted = MedicalAnomalyDetectionLogic().fitReferences(references, "my-flair", "flair")
outputs = MedicalAnomalyDetectionLogic().process(volume, model="my-flair")
</pre>
"""
        self.parent.acknowledgementText = """
Sample case: MSLUB patient 19 (Lesjak et al., Neuroinformatics 2017, CC BY).
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


class MedicalAnomalyDetectionWidget(ScriptedLoadableModuleWidget):
    """Mounts the panel from ``MedicalAnomalyDetectionSlicer.widget`` once PyTorch is importable."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.panel = None
        self.installButton = qt.QPushButton("Install PyTorch to use this module")
        self.installButton.connect("clicked(bool)", self.mountPanel)
        self.layout.addWidget(self.installButton)
        self.layout.addStretch(1)
        self.mountPanel()

    def mountPanel(self):
        """Offer to install PyTorch if missing, then build the panel (its imports need torch)."""
        if self.panel is not None or not ensureTorch():
            return
        from MedicalAnomalyDetectionSlicer.widget import MedicalAnomalyDetectionPanel

        self.panel = MedicalAnomalyDetectionPanel()
        self.installButton.hide()
        self.layout.insertWidget(0, self.panel.widget)

    def enter(self):
        if self.panel is not None:
            self.panel.enter()

    def exit(self):
        if self.panel is not None:
            self.panel.exit()

    def cleanup(self):
        if self.panel is not None:
            self.panel.cleanup()


class MedicalAnomalyDetectionTest(ScriptedLoadableModuleTest):
    """Runs the bundled model on the sample case through the Logic, then through the panel as a clinician would (in a
    real Slicer; ``Testing/Python/test_slicer_panel.py`` runs it under a PythonQt emulation with a faster model)."""

    MODEL = "patchgan-flair"
    TIMEOUT_S = 600  # for one Detect on the CPU

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_sample_case()
        slicer.mrmlScene.Clear()
        self.test_panel()

    def _loadSample(self):
        sample = resourcePath("Sample", "mslub-patient19")
        flair = slicer.util.loadVolume(str(sample / "flair.nii.gz"))
        brain = slicer.util.loadLabelVolume(str(sample / "brain.nii.gz"))
        lesion = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(str(sample / "lesion.nii.gz"))) > 0
        return flair, brain, lesion

    def _checkOutputs(self, flair, brain, lesion, outputs):
        for node in (outputs.anomalyMap, outputs.anomalyLabel):
            self.assertEqual(node.GetImageData().GetDimensions(), flair.GetImageData().GetDimensions())
            self.assertEqual(slicer.util.arrayFromVTKMatrix(_ijkToRAS(node)).tolist(),
                             slicer.util.arrayFromVTKMatrix(_ijkToRAS(flair)).tolist())
        anomaly = slicer.util.arrayFromVolume(outputs.anomalyMap)
        healthy = (slicer.util.arrayFromVolume(brain) > 0) & ~lesion
        self.assertGreater(float(anomaly[lesion].mean()), float(anomaly[healthy].mean()))
        self.assertEqual(int(slicer.util.arrayFromVolume(outputs.anomalyLabel).sum()), outputs.anomalousVoxels)

    def test_sample_case(self):
        from MedicalAnomalyDetectionSlicer.logic import MedicalAnomalyDetectionLogic

        flair, brain, lesion = self._loadSample()
        before = slicer.util.arrayFromVolume(flair).copy()

        outputs = MedicalAnomalyDetectionLogic().process(flair, model=self.MODEL, brainMask=brain)

        np.testing.assert_array_equal(slicer.util.arrayFromVolume(flair), before)
        self._checkOutputs(flair, brain, lesion, outputs)
        self.delayDisplay(f"Volume score {outputs.volumeScore:.3g} on {outputs.device} in {outputs.seconds:.1f} s")

    def test_panel(self):
        """The module panel: choose the volume, the brain mask and the model, click Detect, wait, read the result."""
        flair, brain, lesion = self._loadSample()
        slicer.util.selectModule("MedicalAnomalyDetection")
        panel = slicer.util.getModuleWidget("MedicalAnomalyDetection").panel
        self.assertIsNotNone(panel, "the panel is not mounted (is PyTorch installed?)")
        ui = panel.ui
        ui.inputSelector.setCurrentNode(flair)
        ui.brainMaskSelector.setCurrentNode(brain)
        ui.modelComboBox.currentIndex = ui.modelComboBox.findData(self.MODEL)
        self.assertEqual(ui.modelComboBox.currentText, self.MODEL)
        self.assertTrue(ui.detectButton.enabled, ui.detectButton.toolTip)

        ui.detectButton.click()
        self.assertEqual(ui.detectButton.text, "Cancel")
        deadline = time.monotonic() + self.TIMEOUT_S
        while panel.tasks.busy:
            self.assertLess(time.monotonic(), deadline, "Detect did not finish")
            slicer.app.processEvents()
            time.sleep(0.05)
        slicer.app.processEvents()

        self.assertEqual(ui.detectButton.text, "Detect")
        outputs = panel.logic.lastOutputs
        self.assertIsNotNone(outputs, "Detect wrote nothing")
        self.assertIs(outputs.inputVolume, flair)
        self.assertIs(outputs.brainMask, brain)
        self.assertEqual(outputs.model, self.MODEL)
        self._checkOutputs(flair, brain, lesion, outputs)
        self.assertIs(ui.outputMapSelector.currentNode(), outputs.anomalyMap)
        self.assertIs(ui.outputLabelSelector.currentNode(), outputs.anomalyLabel)
        self.assertEqual(ui.volumeScoreLabel.text.split(" ")[0], f"{outputs.volumeScore:.3g}")
        self.assertEqual(ui.anomalousVoxelsLabel.text,
                         f"{outputs.anomalousVoxels} voxels at threshold {outputs.threshold:.3g}")
        self.assertFalse(ui.resultsCollapsibleButton.collapsed)
        self.delayDisplay(f"Panel: {ui.anomalousVoxelsLabel.text}; {ui.deviceUsedLabel.text}")


def _ijkToRAS(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix

"""``MedicalAnomalyDetectionLogic``: MRML nodes in, anomaly map / label map / slice-score table and chart out.

Needs only MRML (``slicer-core`` suffices): no ``slicer.app``, no ``slicer.mrmlScene``. Outputs go into the input
volume's own scene. A run has three steps so the widget can keep Slicer responsive: :meth:`prepare` (main thread:
nodes -> images, bundle loaded if its weights are here), :meth:`DetectionJob.run` (any thread: only the core, no MRML;
downloads a catalogued model's weights first where :attr:`DetectionJob.download` says so), :meth:`apply` (main
thread: results -> nodes). Nothing is created or changed in the scene before :meth:`apply`, so a cancelled or failed
run leaves the scene as it was.

Findings (the label map's connected regions, ``MedicalAnomalyDetectionLib.findings``) go into a table node beside the
other outputs, one row per region, with the centroid in LPS (the core's columns) and in RAS (``centroid_r_mm``,
``centroid_a_mm``; S is the same); :meth:`relabel` recomputes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from MedicalAnomalyDetectionLib.brain_extraction import MASKING_MODES
from MedicalAnomalyDetectionLib.bundle import DEFAULT_MODEL, load_bundle, read_card, resolve_bundle_path, user_models_dir
from MedicalAnomalyDetectionLib.catalogue import pending_download
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.references import FittedModel, Reference
from MedicalAnomalyDetectionLib.findings import COLUMNS as FINDINGS_COLUMNS, Region, find_regions
from MedicalAnomalyDetectionLib.inference import Detection, label_from_map
from MedicalAnomalyDetectionLib.operating_point import GIVEN
from MedicalAnomalyDetectionLib.progress import CancelCallback, ProgressCallback

from .conversion import imageFromVolume, maskFromNode, updateVolumeFromImage
from .display import showHeatMap, showLabelMap
from .jobs import DetectionJob, FitJob
from .modality import modalityWarning

log = logging.getLogger(__name__)

# Node reference roles on the input volume pointing at its latest outputs, so a second run reuses them.
REFERENCE_ROLES = {"map": "MedicalAnomalyDetection.anomalyMap", "label": "MedicalAnomalyDetection.anomalyLabel",
                   "table": "MedicalAnomalyDetection.sliceScores", "chart": "MedicalAnomalyDetection.chart",
                   "brain": "MedicalAnomalyDetection.brainMask", "findings": "MedicalAnomalyDetection.findings"}
SLICE_AXIS_ATTRIBUTE = "MedicalAnomalyDetection.sliceAxis"
MASKING_ATTRIBUTE = "MedicalAnomalyDetection.masking"  # on the brain segmentation: the masking mode that made it
SLICE_COLUMN, SCORE_COLUMN, VOXELS_COLUMN = "slice", "score", "anomalous voxels"
# The findings table: the core's columns (centroid in LPS), then the centroid's R and A (R = -L, A = -P; S is S).
FINDINGS_RAS_COLUMNS = ("centroid_r_mm", "centroid_a_mm")
_FINDINGS_INTEGERS = ("id", "voxels", "first_slice", "last_slice")


@dataclass
class DetectionOutputs:
    """The nodes a run wrote and what the result box shows."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    anomalyMap: slicer.vtkMRMLScalarVolumeNode
    anomalyLabel: slicer.vtkMRMLLabelMapVolumeNode
    brainMask: slicer.vtkMRMLNode  # the mask the run used: the given node, or a new segmentation of the brain found
    masking: str  # how the brain mask was obtained
    sliceTable: slicer.vtkMRMLTableNode
    chart: slicer.vtkMRMLPlotChartNode
    model: str
    device: str
    seconds: float
    threshold: float
    volumeScore: float
    sliceThreshold: float | None
    sliceAxis: int
    mostAnomalousSlice: int  # input IJK index along sliceAxis
    anomalousVoxels: int
    flaggedSlices: int  # slices scoring at least sliceThreshold (which flags 5 % of healthy validation slices)
    warnings: list[str]
    operatingPoint: str  # how ``threshold`` was chosen: "per-scan", "fixed" or "given" (also after relabel)
    findingsTable: slicer.vtkMRMLTableNode
    findings: list[Region]  # the label map's regions of at least the minimum size, largest first


class MedicalAnomalyDetectionLogic:
    """Runs a model bundle on a volume node and keeps the result nodes up to date. See the module help for an
    example from the Python console."""

    def __init__(self) -> None:
        self.lastOutputs: DetectionOutputs | None = None

    def process(self, inputVolume: slicer.vtkMRMLScalarVolumeNode, model: str | Path = DEFAULT_MODEL,
                brainMask: slicer.vtkMRMLNode | None = None, device: str = "auto", threshold: float | None = None,
                masking: str = "auto", outputMap: slicer.vtkMRMLScalarVolumeNode | None = None,
                outputLabel: slicer.vtkMRMLLabelMapVolumeNode | None = None,
                outputTable: slicer.vtkMRMLTableNode | None = None, progress: ProgressCallback | None = None,
                cancel: CancelCallback | None = None) -> DetectionOutputs:
        """Detect anomalies in ``inputVolume`` synchronously; ``model`` is a bundled model's name or a bundle folder,
        ``device`` auto/cpu/cuda, ``threshold`` a fixed one (default: the model's operating point, per scan where its
        card has one, else its calibrated threshold). A catalogued model whose weights are not here yet is downloaded
        first (``progress`` hears it). Without ``brainMask`` the brain segmentation
        of the previous run on this input is used, else ``masking`` "auto" extracts the brain of a skull-on input
        (and adds it to the scene as a segmentation) and "none" uses the foreground. Missing outputs are reused
        from the previous run on this input, else created."""
        job = self.prepare(inputVolume, model, brainMask, device, threshold, masking)
        detection = job.run(progress, cancel)
        return self.apply(job, detection, outputMap, outputLabel, outputTable)

    def prepare(self, inputVolume: slicer.vtkMRMLScalarVolumeNode, model: str | Path = DEFAULT_MODEL,
                brainMask: slicer.vtkMRMLNode | None = None, device: str = "auto",
                threshold: float | None = None, masking: str = "auto") -> DetectionJob:
        """Check the inputs, copy them out of MRML and load the bundle; touches nothing in the scene for good. A
        catalogued model whose weights are not downloaded yet is not loaded here: the job's ``download`` names it
        and :meth:`DetectionJob.run` downloads it (a caller with a user asks first)."""
        if not isinstance(inputVolume, slicer.vtkMRMLScalarVolumeNode) or isinstance(
                inputVolume, slicer.vtkMRMLLabelMapVolumeNode):
            raise InputError("input must be a scalar MRI volume (not a label map, segmentation or empty selection)")
        if inputVolume.GetScene() is None:
            raise InputError(f"input volume {inputVolume.GetName()} is not in a scene")
        if device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device must be auto, cpu or cuda, not {device!r}")
        if masking not in MASKING_MODES:
            raise InputError(f"masking must be one of {', '.join(MASKING_MODES)}, not {masking!r}")
        card = read_card(resolve_bundle_path(model))
        download = pending_download(model)
        bundle = load_bundle(model) if download is None else None
        image = imageFromVolume(inputVolume)
        if brainMask is None and masking == "auto":
            brainMask = self.previousBrainMask(inputVolume)
        mask = maskFromNode(brainMask, inputVolume) if brainMask is not None else None
        warning = modalityWarning(inputVolume, card.modality)
        if warning:
            log.warning(warning)
        return DetectionJob(inputVolume=inputVolume, image=image, mask=mask, bundle=bundle, device=device,
                            threshold=threshold, maskNode=brainMask, masking=masking,
                            warnings=[warning] if warning else [], model=model, download=download)

    @staticmethod
    def previousBrainMask(inputVolume: slicer.vtkMRMLScalarVolumeNode) -> slicer.vtkMRMLNode | None:
        """The brain segmentation an earlier ``auto`` run found for this input (the user may have edited it), if still
        there; the foreground mask of a ``masking="none"`` run is never taken for a brain."""
        node = inputVolume.GetNodeReference(REFERENCE_ROLES["brain"])
        if node is None or node.GetScene() is None or node.GetAttribute(MASKING_ATTRIBUTE) == "none":
            return None
        return node

    def prepareFit(self, referenceVolumes: list[slicer.vtkMRMLScalarVolumeNode], name: str, modality: str = "flair",
                   brainMasks: list[slicer.vtkMRMLNode | None] | None = None,
                   sliceRange: tuple[int, int] | None = None, modelsDir: str | Path | None = None,
                   backbone: str | Path | None = None, textureDir: str | Path | None = None,
                   **fitOptions) -> FitJob:
        """Check the references and copy them out of MRML for :meth:`FitJob.run`; touches nothing in the scene.
        ``brainMasks`` pairs a mask (or None) with each reference; ``sliceRange`` (first, last input slice index
        along the model's slice axis) restricts every reference; ``modelsDir`` defaults to the user's model folder;
        ``fitOptions`` (``pre``, ``settings``, ``config``) go to the core's ``fit_references``."""
        volumes = list(referenceVolumes)
        masks = list(brainMasks) if brainMasks is not None else [None] * len(volumes)
        if len(masks) != len(volumes):
            raise InputError("give one brain mask (or None) per reference volume")
        for volume in volumes:
            if not isinstance(volume, slicer.vtkMRMLScalarVolumeNode) or isinstance(
                    volume, slicer.vtkMRMLLabelMapVolumeNode):
                raise InputError("references must be scalar MRI volumes (not label maps or segmentations)")
        if len({volume.GetID() for volume in volumes}) != len(volumes):
            raise InputError("the same reference volume was selected twice")
        references = [Reference(name=volume.GetName(), image=imageFromVolume(volume),
                                brain_mask=maskFromNode(mask, volume) if mask is not None else None,
                                slices=tuple(sliceRange) if sliceRange is not None else None)
                      for volume, mask in zip(volumes, masks)]
        warnings = [w for w in (modalityWarning(volume, modality) for volume in volumes) if w]
        return FitJob(references=references, name=name, modality=modality,
                      modelsDir=Path(modelsDir) if modelsDir is not None else user_models_dir(),
                      backbone=Path(backbone) if backbone else None,
                      textureDir=Path(textureDir) if textureDir else None, options=fitOptions, warnings=warnings)

    def fitReferences(self, referenceVolumes: list[slicer.vtkMRMLScalarVolumeNode], name: str,
                      modality: str = "flair", progress: ProgressCallback | None = None,
                      cancel: CancelCallback | None = None, **options) -> FittedModel:
        """Learn normal from healthy ``referenceVolumes`` synchronously: a PathoSCOPE bundle ``name`` is saved in
        the user's model folder and can then be passed as ``model`` to :meth:`process`. ``options`` are those of
        :meth:`prepareFit`."""
        return self.prepareFit(referenceVolumes, name, modality, **options).run(progress, cancel)

    def apply(self, job: DetectionJob, detection: Detection,
              outputMap: slicer.vtkMRMLScalarVolumeNode | None = None,
              outputLabel: slicer.vtkMRMLLabelMapVolumeNode | None = None,
              outputTable: slicer.vtkMRMLTableNode | None = None) -> DetectionOutputs:
        """Write ``detection`` into (reused or new) output nodes beside the input; main thread only. An output that
        is the input volume or the brain mask is refused before anything is written, and so is a run whose input
        volume was removed from the scene meanwhile."""
        inputVolume = job.inputVolume
        if inputVolume.GetScene() is None:
            raise InputError(f"input volume {inputVolume.GetName()} was removed from the scene during the run; "
                             "nothing was written")
        for given in (outputMap, outputLabel, outputTable):
            if given is not None and given in (inputVolume, job.maskNode):
                raise InputError(f"output {given.GetName()} is an input of this run; choose or create another node")
        name = inputVolume.GetName()
        anomalyMap = self._outputNode(inputVolume, "map", outputMap, "vtkMRMLScalarVolumeNode",
                                      f"{name} anomaly map")
        anomalyLabel = self._outputNode(inputVolume, "label", outputLabel, "vtkMRMLLabelMapVolumeNode",
                                        f"{name} anomalies")
        table = self._outputNode(inputVolume, "table", outputTable, "vtkMRMLTableNode", f"{name} slice scores")
        chart = self._outputNode(inputVolume, "chart", None, "vtkMRMLPlotChartNode", f"{name} slice scores")
        findingsTable = self._outputNode(inputVolume, "findings", None, "vtkMRMLTableNode", f"{name} findings")

        updateVolumeFromImage(anomalyMap, detection.anomaly_map, inputVolume)
        updateVolumeFromImage(anomalyLabel, detection.label_map, inputVolume)
        showHeatMap(anomalyMap, detection.threshold)
        showLabelMap(anomalyLabel)
        labelArray = sitk.GetArrayViewFromImage(detection.label_map)
        order = np.argsort(detection.slice_index, kind="stable")
        self._writeTable(table, detection.slice_index[order], detection.slice_scores[order],
                         _voxelsPerSlice(labelArray, detection.slice_axis, detection.slice_index[order]))
        table.SetAttribute(SLICE_AXIS_ATTRIBUTE, str(detection.slice_axis))
        self._plot(chart, table, name)
        findings = find_regions(detection.label_map, detection.anomaly_map, detection.slice_axis)
        self._writeFindings(findingsTable, findings)
        brainMask = job.maskNode if job.maskNode is not None and job.maskNode.GetScene() is not None else None
        if brainMask is None:
            brainMask = self._brainSegmentation(inputVolume, detection.brain.mask, f"{name} brain")
            brainMask.SetAttribute(MASKING_ATTRIBUTE, job.masking)
        self._placeBeside(inputVolume, (anomalyMap, anomalyLabel, table, chart, findingsTable, brainMask))

        card = job.bundle.card
        self.lastOutputs = DetectionOutputs(
            inputVolume=inputVolume, anomalyMap=anomalyMap, anomalyLabel=anomalyLabel, brainMask=brainMask,
            masking=detection.brain.how if job.maskNode is None else f"brain mask {job.maskNode.GetName()}",
            sliceTable=table,
            chart=chart, model=detection.model, device=detection.device, seconds=detection.seconds,
            threshold=detection.threshold, volumeScore=float(detection.volume_score),
            sliceThreshold=card.thresholds.get("slice"), sliceAxis=detection.slice_axis,
            mostAnomalousSlice=detection.most_anomalous_slice,
            anomalousVoxels=int(labelArray.sum()), flaggedSlices=detection.flagged_slices(card.thresholds.get("slice")),
            warnings=[*job.warnings, *detection.warnings], operatingPoint=detection.operating_point,
            findingsTable=findingsTable, findings=findings)
        return self.lastOutputs

    def relabel(self, threshold: float) -> DetectionOutputs:
        """Re-threshold the last anomaly map into its label map (and the table's voxel counts and the findings)
        without re-running the model or adding nodes; the outputs' operating point becomes "given"."""
        outputs = self.lastOutputs
        if outputs is None or outputs.anomalyMap.GetScene() is None or outputs.anomalyLabel.GetScene() is None:
            raise InputError("no anomaly map to re-threshold; run Detect first")
        anomalyImage = imageFromVolume(outputs.anomalyMap)
        label = label_from_map(anomalyImage, threshold)
        updateVolumeFromImage(outputs.anomalyLabel, label, outputs.inputVolume)
        labelArray = sitk.GetArrayViewFromImage(label)
        table = outputs.sliceTable
        if table.GetScene() is not None:
            slices = slicer.util.arrayFromTableColumn(table, SLICE_COLUMN).astype(int)
            self._writeTable(table, slices, slicer.util.arrayFromTableColumn(table, SCORE_COLUMN).copy(),
                             _voxelsPerSlice(labelArray, outputs.sliceAxis, slices))
        findings = find_regions(label, anomalyImage, outputs.sliceAxis)
        if outputs.findingsTable.GetScene() is not None:
            self._writeFindings(outputs.findingsTable, findings)
        showHeatMap(outputs.anomalyMap, threshold)
        outputs.threshold = float(threshold)
        outputs.operatingPoint = GIVEN
        outputs.anomalousVoxels = int(labelArray.sum())
        outputs.findings = findings
        return outputs

    @staticmethod
    def sliceCenterRAS(volume: slicer.vtkMRMLVolumeNode, axis: int, index: int) -> tuple[float, float, float]:
        """RAS position of the centre of slice ``index`` along IJK ``axis`` (e.g. to jump views to a slice)."""
        ijk = [(n - 1) / 2.0 for n in volume.GetImageData().GetDimensions()]
        ijk[axis] = float(index)
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        ras = matrix.MultiplyPoint([*ijk, 1.0])
        return float(ras[0]), float(ras[1]), float(ras[2])

    @staticmethod
    def findingCenterRAS(volume: slicer.vtkMRMLVolumeNode, region: Region) -> tuple[float, float, float]:
        """World RAS position of a finding's centroid (e.g. to jump views to it): its LPS centroid with L and P
        negated, through the volume's parent transforms."""
        world = [0.0, 0.0, 0.0]
        volume.TransformPointToWorld([-region.centroid_l_mm, -region.centroid_p_mm, region.centroid_s_mm], world)
        return float(world[0]), float(world[1]), float(world[2])

    @staticmethod
    def _outputNode(inputVolume: slicer.vtkMRMLScalarVolumeNode, role: str, given: slicer.vtkMRMLNode | None,
                    className: str, name: str) -> slicer.vtkMRMLNode:
        """The given node, else the previous run's (if still in the scene), else a new one; remembered on the input."""
        node = given or inputVolume.GetNodeReference(REFERENCE_ROLES[role])
        if node is None or node.GetScene() is None:
            node = inputVolume.GetScene().AddNewNodeByClass(className, inputVolume.GetScene().GenerateUniqueName(name))
        inputVolume.SetNodeReferenceID(REFERENCE_ROLES[role], node.GetID())
        return node

    @classmethod
    def _brainSegmentation(cls, inputVolume: slicer.vtkMRMLScalarVolumeNode, mask: sitk.Image,
                           name: str) -> slicer.vtkMRMLSegmentationNode:
        """The brain the run found, as a segmentation beside the input that the user can inspect and edit; the next
        run on this input uses it (see :meth:`previousBrainMask`)."""
        scene = inputVolume.GetScene()
        segmentation = cls._outputNode(inputVolume, "brain", None, "vtkMRMLSegmentationNode", name)
        segmentation.GetSegmentation().RemoveAllSegments()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__brain_mask_import__")
        try:
            updateVolumeFromImage(labelmap, mask, inputVolume)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
                raise InputError("could not turn the brain mask into a segmentation")
        finally:
            scene.RemoveNode(labelmap)
        segment = segmentation.GetSegmentation().GetNthSegment(0)
        segment.SetName("brain")
        segment.SetColor(0.95, 0.85, 0.3)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.GetDisplayNode().SetOpacity2DFill(0.0)  # outline only: the heat map stays readable
        return segmentation

    @staticmethod
    def _writeTable(table: slicer.vtkMRMLTableNode, slices: np.ndarray, scores: np.ndarray,
                    voxels: np.ndarray) -> None:
        slicer.util.updateTableFromArray(
            table, [slices.astype(np.int32), scores.astype(np.float64), voxels.astype(np.int32)],
            [SLICE_COLUMN, SCORE_COLUMN, VOXELS_COLUMN])

    @staticmethod
    def _writeFindings(table: slicer.vtkMRMLTableNode, findings: list[Region]) -> None:
        """One row per finding: the core's columns, then the centroid's R and A (no rows: the columns only)."""
        columns = [np.array([getattr(region, name) for region in findings],
                            dtype=np.int32 if name in _FINDINGS_INTEGERS else np.float64)
                   for name in FINDINGS_COLUMNS]
        columns += [-np.array([region.centroid_l_mm for region in findings], dtype=np.float64),
                    -np.array([region.centroid_p_mm for region in findings], dtype=np.float64)]
        slicer.util.updateTableFromArray(table, columns, [*FINDINGS_COLUMNS, *FINDINGS_RAS_COLUMNS])

    @staticmethod
    def _plot(chart: slicer.vtkMRMLPlotChartNode, table: slicer.vtkMRMLTableNode, name: str) -> None:
        """One line series of score over slice index in ``chart`` (its existing series reused)."""
        series = chart.GetNthPlotSeriesNode(0)
        if series is None:
            series = chart.GetScene().AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} slice scores")
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(SLICE_COLUMN)
        series.SetYColumnName(SCORE_COLUMN)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        chart.SetTitle(f"Anomaly score per slice: {name}")
        chart.SetXAxisTitle("slice index")
        chart.SetYAxisTitle("anomaly score")
        chart.SetLegendVisibility(False)

    @staticmethod
    def _placeBeside(inputVolume: slicer.vtkMRMLNode, outputs: tuple[slicer.vtkMRMLNode, ...]) -> None:
        """Put ``outputs`` in the input's subject hierarchy folder/study (the scene root if it has none)."""
        hierarchy = inputVolume.GetScene().GetSubjectHierarchyNode()
        inputItem = hierarchy.GetItemByDataNode(inputVolume)
        parent = hierarchy.GetItemParent(inputItem) if inputItem else hierarchy.GetSceneItemID()
        for node in outputs:
            item = hierarchy.GetItemByDataNode(node)
            if item:
                hierarchy.SetItemParent(item, parent)
            else:
                hierarchy.CreateItem(parent, node)


def _voxelsPerSlice(labelArray: np.ndarray, axis: int, slices: np.ndarray) -> np.ndarray:
    """Anomalous voxel count of each input slice ``slices`` along IJK ``axis`` (numpy axes are K, J, I)."""
    counts = labelArray.sum(axis=tuple(a for a in range(3) if a != 2 - axis))
    return counts[slices]

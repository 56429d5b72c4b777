"""The README's result pictures, drawn by 3D Slicer's own renderer from a ``mad-detect`` result on the sample case.

    VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow python docs/images/render_slicer.py

runs ``mad-detect`` (``patchgan-flair``, the sample's brain mask) unless ``--result-dir`` names an earlier result,
loads the input and the outputs with Slicer's volume readers (``vtkSlicerVolumesLogic`` from the ``slicer-core``
wheel), shows them as the module's results view does (``MedicalAnomalyDetectionSlicer.display``: heat map over the
input, label map outlined, colour legend) and draws slice views offscreen with Slicer's displayable managers (colour
legend, ruler, the expert lesion mask as a green segmentation outline). Needs an offscreen OpenGL: Mesa's EGL
(``apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri``) with the environment variable above. Writes
``docs/images/sample_result_slicer.png`` (the three axial slices with the most labelled voxels) and
``docs/images/results_view_slicer.png`` (axial, sagittal, coronal through it, as Slicer's conventional layout).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from PIL import Image
from vtk.util.numpy_support import vtk_to_numpy

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "MedicalAnomalyDetection"))

from MedicalAnomalyDetectionSlicer.display import showHeatMap, showInSliceView, showLabelMap  # noqa: E402

SAMPLE = REPO / "Resources" / "Sample" / "mslub-patient19"
MANAGERS = ("vtkMRMLColorLegendDisplayableManager", "vtkMRMLRulerDisplayableManager",
            "vtkMRMLSegmentationsDisplayableManager2D")
VIEW_PIXELS = 360


class SliceApplication:
    """The pieces of Slicer a slice view needs: scene, application logic, colours, volume readers."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
        self.application = slicer.vtkMRMLApplicationLogic()
        self.application.SetMRMLScene(self.scene)
        self.application.SetSliceLogics(vtk.vtkCollection())
        self.application.SetViewLogics(vtk.vtkCollection())
        self.colours = slicer.vtkSlicerColorLogic()
        self.colours.SetMRMLApplicationLogic(self.application)
        self.colours.SetMRMLScene(self.scene)
        self.application.SetModuleLogic("Colors", self.colours)
        self.volumes = slicer.vtkSlicerVolumesLogic()
        self.volumes.SetMRMLScene(self.scene)
        self.volumes.SetMRMLApplicationLogic(self.application)
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)  # patient right on screen left
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(self.application)
        for manager in MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)

    def read(self, path: Path, name: str, label: bool = False) -> slicer.vtkMRMLVolumeNode:
        node = self.volumes.AddArchetypeVolume(str(path), name, 1 if label else 0)
        if node is None:
            raise SystemExit(f"Slicer's reader could not read {path}")
        return node


class SliceView:
    """One offscreen slice view: Slicer's slice logic, its displayable managers and a render window."""

    def __init__(self, app: SliceApplication, name: str, orientation: str) -> None:
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.SetSize(VIEW_PIXELS, VIEW_PIXELS)
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()  # the displayable managers' widgets need one
        self.interactor.SetRenderWindow(self.window)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app.application)
        self.logic.SetMRMLScene(app.scene)
        app.application.GetSliceLogics().AddItem(self.logic)
        self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(orientation)
        self.node.SetRulerType(slicer.vtkMRMLAbstractViewNode.RulerTypeThin)
        self.node.SetRulerColor(slicer.vtkMRMLAbstractViewNode.RulerColorWhite)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance(), self.renderer)
        self.managers.SetMRMLDisplayableNode(self.node)
        self.mapper = vtk.vtkImageMapper()  # the slice image itself, as Slicer's light-box renderer manager draws it
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        self.image = vtk.vtkActor2D()
        self.image.SetMapper(self.mapper)
        self.image.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.image)
        self.logic.ResizeSliceNode(VIEW_PIXELS, VIEW_PIXELS)

    def show(self, ras: tuple[float, float, float], caption: str, legend: slicer.vtkMRMLColorLegendDisplayNode,
             with_legend: bool) -> np.ndarray:
        """The view through ``ras`` (fitted to the input) as an RGB array, ``caption`` in its top-left corner."""
        self.logic.FitSliceToBackground()
        self.node.JumpSliceByCentering(*ras)
        self.logic.SnapSliceOffsetToIJK()
        legend.SetVisibility(with_legend)
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        text = vtk.vtkCornerAnnotation()
        text.SetText(2, caption)
        text.GetTextProperty().SetColor(1.0, 1.0, 1.0)
        text.SetMaximumFontSize(15)
        self.renderer.AddViewProp(text)
        self.window.Render()
        capture = vtk.vtkWindowToImageFilter()
        capture.SetInput(self.window)
        capture.Update()
        image = capture.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
        self.renderer.RemoveViewProp(text)
        return pixels.copy()


def detect(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "MedicalAnomalyDetectionLib", str(SAMPLE / "flair.nii.gz"), "--model",
                    "patchgan-flair", "--brain-mask", str(SAMPLE / "brain.nii.gz"), "--output-dir", str(out)],
                   check=True)


def lesion_outline(app: SliceApplication, reference: slicer.vtkMRMLVolumeNode) -> None:
    """The expert lesion mask as a segmentation drawn as a green outline (how a user would load it)."""
    label = app.read(SAMPLE / "lesion.nii.gz", "expert lesions", label=True)
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "expert lesions")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, segmentation)
    segmentation.GetSegmentation().GetNthSegment(0).SetColor(0.2, 1.0, 0.2)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.GetDisplayNode().SetOpacity2DFill(0.0)
    segmentation.GetDisplayNode().SetSliceIntersectionThickness(1)
    app.scene.RemoveNode(label)


def render(result: Path, images: Path) -> None:
    app = SliceApplication()
    report = json.loads((result / "report.json").read_text())
    flair = app.read(SAMPLE / "flair.nii.gz", "flair")
    anomaly_map = app.read(result / "anomaly_map.nii.gz", "flair anomaly map")
    label = app.read(result / "anomaly_label.nii.gz", "flair anomalies", label=True)
    showHeatMap(anomaly_map, report["threshold"])
    showLabelMap(label)
    lesion_outline(app, flair)
    views = {name: SliceView(app, name, orientation)
             for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))}
    for view in views.values():
        showInSliceView(view.node, view.logic.GetSliceCompositeNode(), flair, anomaly_map, label)
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(anomaly_map)  # once the views observe
    legend.SetTitleText("anomaly")
    legend.SetSize(0.1, 0.4)
    axis, most = report["slice_axis"], report["most_anomalous_slice"]
    image = sitk.ReadImage(str(SAMPLE / "flair.nii.gz"))
    step = max(3, image.GetSize()[axis] // 12)

    shown = busiest_slices(sitk.ReadImage(str(result / "anomaly_label.nii.gz")), axis, step)
    _save([views["Red"].show(slice_centre_ras(image, axis, index), f"axial slice {index}", legend, index == shown[-1])
           for index in shown], images / "sample_result_slicer.png")
    centre = slice_centre_ras(image, axis, most)
    _save([view.show(centre, f"{view.node.GetOrientation().lower()}, through slice {most}", legend, name == "Green")
            for name, view in views.items()], images / "results_view_slicer.png")


def busiest_slices(label: sitk.Image, axis: int, spacing: int, count: int = 3) -> list[int]:
    """The ``count`` slices along ``axis`` (the file's voxel grid) with the most labelled voxels, at least
    ``spacing`` slices apart, in slice order."""
    voxels = sitk.GetArrayFromImage(label) > 0  # (z, y, x): numpy axis 2 - axis is the file's axis
    per_slice = voxels.sum(axis=tuple(a for a in range(3) if a != 2 - axis))
    chosen: list[int] = []
    for index in np.argsort(-per_slice, kind="stable"):
        if len(chosen) < count and all(abs(int(index) - other) >= spacing for other in chosen):
            chosen.append(int(index))
    return sorted(chosen)


def slice_centre_ras(image: sitk.Image, axis: int, index: int) -> tuple[float, float, float]:
    """RAS of the centre of slice ``index`` along ``axis`` of the file's own voxel grid (the report's numbering;
    Slicer's reader may order the slices the other way)."""
    continuous = [(n - 1) / 2.0 for n in image.GetSize()]
    continuous[axis] = float(index)
    x, y, z = image.TransformContinuousIndexToPhysicalPoint(continuous)
    return -x, -y, z


def _save(panels: list[np.ndarray], path: Path) -> None:
    gap = np.full((panels[0].shape[0], 4, 3), 40, np.uint8)
    row = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)
    Image.fromarray(row).save(path)
    print(f"{path} written")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result-dir", type=Path, help="an earlier mad-detect output folder of the sample case")
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    if args.result_dir is not None:
        render(args.result_dir, args.images)
        return
    with tempfile.TemporaryDirectory() as folder:
        detect(Path(folder))
        render(Path(folder), args.images)


if __name__ == "__main__":
    main()

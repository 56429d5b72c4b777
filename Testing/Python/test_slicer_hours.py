"""Slicer left open for hours: many runs, cancels at every stage, nodes deleted while a run works, Detect and Fit
competing; through the Logic, the worker thread and the task runner on a real MRML scene (``slicer-core``)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from conftest import head_array  # noqa: E402
from slicer_fixtures import add_volume, new_scene, node_ids  # noqa: E402
from test_slicer_tasks import Widget  # noqa: E402

from MedicalAnomalyDetectionLib.progress import Cancelled  # noqa: E402
from MedicalAnomalyDetectionSlicer.display import showInSliceViews  # noqa: E402
from MedicalAnomalyDetectionSlicer.logic import MedicalAnomalyDetectionLogic  # noqa: E402
from MedicalAnomalyDetectionSlicer.tasks import TaskRunner, TaskView  # noqa: E402
from MedicalAnomalyDetectionSlicer.worker import Worker  # noqa: E402


@pytest.fixture
def scene():
    scene, colours = new_scene()
    yield scene
    del colours


@pytest.fixture
def volume(scene):
    return add_volume(scene, head_array(), "FLAIR", origin_ras=(90.0, 120.0, -30.0),
                      directions_ras=np.diag([-1.0, -1.0, 1.0]))


class Paused:
    """A real job that stops when it reports ``stage`` until the test releases it (to change the scene mid-run)."""

    def __init__(self, job, stage: str) -> None:
        self.job, self.stage = job, stage
        self.reached, self.release = threading.Event(), threading.Event()

    def run(self, progress=None, cancel=None):
        def report(fraction: float, stage: str) -> None:
            progress(fraction, stage)
            if stage == self.stage and not self.reached.is_set():
                self.reached.set()
                assert self.release.wait(30)
        return self.job.run(report, cancel)


def _runner():
    views = {name: TaskView(Widget(), Widget(), Widget(), idle, f"{idle} cancelled")
             for name, idle in (("detect", "Detect"), ("fit", "Fit"))}
    errors: list[str] = []
    return TaskRunner(views, lambda message, details: errors.append(message)), views, errors


def _finish(runner, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not runner.poll():
        assert time.monotonic() < deadline, "the task did not end"
        time.sleep(0.01)


def _named(scene, name: str) -> int:
    """How many data nodes are called ``name`` (or ``name`` and a number, as the scene makes names unique)."""
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return sum((node.GetName() or "").startswith(name) and not node.IsA("vtkMRMLDisplayNode") for node in nodes)


def test_twenty_detects_leave_one_set_of_outputs_and_a_steady_scene(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    counts = []
    for run in range(20):  # as the panel does it: prepare, worker thread, apply, show
        worker = Worker(logic.prepare(volume, intensity_bundle.path, threshold=2.0 + 0.05 * run))
        worker.start()
        assert worker.wait(30) and worker.error is None
        outputs = logic.apply(worker.job, worker.result)
        showInSliceViews(scene, volume, outputs.anomalyMap, outputs.anomalyLabel)
        counts.append(node_ids(scene))
    assert all(ids == counts[0] for ids in counts)  # the same nodes after every run, none added after the first
    for name in ("FLAIR anomaly map", "FLAIR anomalies", "FLAIR brain"):
        assert _named(scene, name) == 1, name
    assert _named(scene, "FLAIR slice scores") == 3  # the table, the chart and its series
    label = slicer.util.arrayFromVolume(outputs.anomalyLabel)
    np.testing.assert_array_equal(label, slicer.util.arrayFromVolume(outputs.anomalyMap) >= 2.0 + 0.05 * 19)


def _stages(logic, volume, bundle) -> list[str]:
    seen: list[str] = []
    logic.process(volume, model=bundle.path, progress=lambda fraction, stage: seen.append(stage))
    return list(dict.fromkeys(seen))


def test_cancel_at_every_stage_leaves_the_scene_as_it_was(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    stages = _stages(logic, volume, intensity_bundle)
    assert stages[-1] == "done" and {"finding the brain", "scoring slices"} <= set(stages)
    ids = node_ids(scene)
    previous = slicer.util.arrayFromVolume(logic.lastOutputs.anomalyMap).copy()
    for stage in stages[:-1]:  # "done" is reported once nothing is left to cancel
        seen: list[str] = []
        with pytest.raises(Cancelled):
            logic.process(volume, model=intensity_bundle.path, threshold=9.0,
                          progress=lambda fraction, now: seen.append(now), cancel=lambda: stage in seen)
        assert node_ids(scene) == ids, stage
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(logic.lastOutputs.anomalyMap), previous)
    # and through the panel's runner: Cancel pressed while the worker waits at each stage
    for stage in stages[:-1]:
        runner, views, errors = _runner()
        job = Paused(logic.prepare(volume, intensity_bundle.path, threshold=9.0), stage)
        assert runner.start("detect", job, lambda job, result: logic.apply(job.job, result))
        assert job.reached.wait(30)
        runner.cancel()
        job.release.set()
        _finish(runner)
        assert views["detect"].statusLabel.text == "Detect cancelled" and errors == [], stage
        assert node_ids(scene) == ids, stage


def test_the_input_deleted_during_a_run_is_reported_and_nothing_is_written(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    runner, views, errors = _runner()
    job = Paused(logic.prepare(volume, intensity_bundle.path), "scoring slices")
    assert runner.start("detect", job, lambda job, result: logic.apply(job.job, result))
    assert job.reached.wait(30)
    scene.RemoveNode(volume)
    ids = node_ids(scene)
    job.release.set()
    _finish(runner)
    assert len(errors) == 1 and "was removed from the scene during the run; nothing was written" in errors[0]
    assert node_ids(scene) == ids and logic.lastOutputs is None
    assert views["detect"].button.text == "Detect" and not runner.busy


def test_outputs_and_mask_deleted_during_a_run_are_replaced(scene, volume, intensity_bundle):
    logic = MedicalAnomalyDetectionLogic()
    first = logic.process(volume, model=intensity_bundle.path)
    mask = add_volume(scene, (head_array(blob=None) > 0).astype(np.uint8), "brain", origin_ras=(90.0, 120.0, -30.0),
                      directions_ras=np.diag([-1.0, -1.0, 1.0]), class_name="vtkMRMLLabelMapVolumeNode")
    runner, views, errors = _runner()
    job = Paused(logic.prepare(volume, intensity_bundle.path, brainMask=mask), "scoring slices")
    assert runner.start("detect", job, lambda job, result: logic.apply(job.job, result))
    assert job.reached.wait(30)
    for node in (first.anomalyMap, first.sliceTable, mask):
        scene.RemoveNode(node)
    job.release.set()
    _finish(runner)
    second = logic.lastOutputs
    assert errors == [] and second is not first
    assert second.anomalyMap is not first.anomalyMap and second.anomalyMap.GetScene() is scene
    assert second.sliceTable.GetScene() is scene and second.anomalyLabel is first.anomalyLabel
    assert second.brainMask.GetScene() is scene  # the mask the run used, kept as a segmentation
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(second.anomalyLabel),
                                  slicer.util.arrayFromVolume(second.anomalyMap) >= second.threshold)
    assert _named(scene, "FLAIR anomaly map") == 1


def test_detect_and_fit_cannot_run_at_once(scene, volume, intensity_bundle, tmp_path):
    from test_pathoscope import TINY_PATHOSCOPE, TINY_SETTINGS

    from conftest import TINY_PRE

    logic = MedicalAnomalyDetectionLogic()
    references = [add_volume(scene, head_array(blob=None, seed=s), f"healthy {s}") for s in (1, 2)]
    fit = logic.prepareFit(references, "fitted", "flair", modelsDir=tmp_path, pre=TINY_PRE, settings=TINY_SETTINGS,
                           config=TINY_PATHOSCOPE)
    runner, views, errors = _runner()
    detection = Paused(logic.prepare(volume, intensity_bundle.path), "scoring slices")
    assert runner.start("detect", detection, lambda job, result: logic.apply(job.job, result))
    assert detection.reached.wait(30)
    assert not runner.start("fit", fit, lambda job, result: None)  # refused while Detect runs
    assert not views["fit"].button.enabled and "Detect" in views["fit"].button.toolTip
    assert not (tmp_path / "fitted").exists() and runner.isRunning("detect")
    detection.release.set()
    _finish(runner)
    assert errors == [] and logic.lastOutputs.anomalyMap.GetScene() is scene
    assert views["fit"].button.enabled and not runner.busy  # Fit may start now

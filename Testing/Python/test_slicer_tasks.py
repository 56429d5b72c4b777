"""The panel's task state machine (Detect and Fit exclude each other) and its input rules, without Qt or Slicer."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedicalAnomalyDetection"))

from MedicalAnomalyDetectionLib.errors import InputError  # noqa: E402
from MedicalAnomalyDetectionLib.progress import check_cancel  # noqa: E402
from MedicalAnomalyDetectionSlicer.choices import (parseSliceRange, startingThreshold,  # noqa: E402
                                                   thresholdSliderRange)
from MedicalAnomalyDetectionSlicer.tasks import TaskRunner, TaskView  # noqa: E402


class Widget:
    """Stands in for a button, progress bar or label: plain attributes, show()/hide()."""

    def __init__(self) -> None:
        self.text, self.enabled, self.toolTip, self.value, self.format, self.visible = "", True, "", 0, "", True

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False


class GatedJob:
    """Reports progress, then waits for the test to open the gate; ends with ``outcome`` (a value or an error)."""

    def __init__(self, outcome) -> None:
        self.gate = threading.Event()
        self.outcome = outcome

    def run(self, progress=None, cancel=None):
        progress(0.25, "scoring slices")
        while not self.gate.wait(0.01):
            check_cancel(cancel)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _runner():
    views = {name: TaskView(Widget(), Widget(), Widget(), idle, f"{idle} cancelled")
             for name, idle in (("detect", "Detect"), ("fit", "Fit"))}
    errors = []
    return TaskRunner(views, lambda message, details: errors.append((message, details))), views, errors


def _finish(runner, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner.poll():
            return True
        time.sleep(0.01)
    return False


def test_a_task_turns_its_button_into_cancel_and_blocks_the_other():
    runner, views, errors = _runner()
    assert not views["detect"].progressBar.visible  # bars hidden until something runs
    results = []
    job = GatedJob("the result")
    assert runner.start("detect", job, lambda j, r: results.append((j, r)), status="warning text")
    assert views["detect"].button.text == "Cancel" and views["detect"].button.enabled
    assert views["fit"].button.text == "Fit" and not views["fit"].button.enabled
    assert "Detect" in views["fit"].button.toolTip
    assert views["detect"].statusLabel.text == "warning text" and views["detect"].progressBar.visible
    assert not runner.start("fit", GatedJob(1), lambda j, r: None)  # refused while Detect runs

    time.sleep(0.05)
    assert runner.poll() is False
    assert views["detect"].progressBar.value == 25 and "scoring slices" in views["detect"].progressBar.format
    job.gate.set()
    assert _finish(runner)
    assert results == [(job, "the result")] and errors == []
    assert views["detect"].button.text == "Detect" and views["fit"].button.enabled
    assert not views["detect"].progressBar.visible and not runner.busy


def test_cancel_reports_and_calls_nothing():
    runner, views, errors = _runner()
    results = []
    runner.start("fit", GatedJob("never"), lambda j, r: results.append(r))
    runner.cancel()
    assert views["fit"].statusLabel.text == "Cancelling…"
    assert _finish(runner)
    assert results == [] and errors == [] and views["fit"].statusLabel.text == "Fit cancelled"


@pytest.mark.parametrize("error, message, has_details", [(InputError("bad volume"), "bad volume", False),
                                                         (RuntimeError("boom"), "Detect failed: boom", True)])
def test_failures_are_shown_once(error, message, has_details):
    runner, views, errors = _runner()
    job = GatedJob(error)
    job.gate.set()
    runner.start("detect", job, lambda j, r: pytest.fail("no result expected"))
    assert _finish(runner)
    assert [m for m, _ in errors] == [message]
    assert (errors[0][1] is not None and "RuntimeError" in errors[0][1]) == has_details


def test_refresh_follows_readiness():
    runner, views, _ = _runner()
    runner.refresh({"detect": False})
    assert not views["detect"].button.enabled and views["fit"].button.enabled
    runner.refresh({"detect": True})
    assert views["detect"].button.enabled


@pytest.mark.parametrize("text, expected", [("", None), (" all ", None), ("40-90", (40, 90)), ("3 - 3", (3, 3))])
def test_slice_ranges(text, expected):
    assert parseSliceRange(text) == expected


@pytest.mark.parametrize("text", ["40", "90-40", "-3-4", "a-b", "1-2-3"])
def test_bad_slice_ranges_are_refused(text):
    with pytest.raises(InputError, match="slice"):
        parseSliceRange(text)


def test_threshold_slider_policy():
    bounds = thresholdSliderRange(4.0)
    assert (bounds.minimum, bounds.maximum, bounds.step) == (0.04, 12.0, 0.04)
    assert startingThreshold("b", "a", 7.0, 4.0) == 4.0  # a new model starts at its calibrated threshold
    assert startingThreshold("a", "a", 7.0, 4.0) == 7.0  # re-entering keeps the user's
    assert startingThreshold("a", "a", 0.0, 4.0) == 4.0  # nothing chosen yet
    assert startingThreshold("b", "a", 7.0, None) == 7.0  # an uncalibrated model keeps the value

"""The panel's long jobs (Detect, Fit): one at a time, each in a :class:`~.worker.Worker` thread, its button turned
into Cancel and its progress bar following the stages, the other buttons disabled meanwhile.

Pure Python on purpose: the widget owns one ``qt.QTimer`` that calls :meth:`TaskRunner.poll`, and hands in its
button, progress bar and status label (anything with ``text``/``enabled``/``toolTip``, ``value``/``format``/``show``/
``hide`` and ``text``), so the state machine is tested without Qt.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from MedicalAnomalyDetectionLib.errors import InputError

from .worker import Job, Worker

log = logging.getLogger(__name__)


@dataclass
class TaskView:
    """The widgets of one kind of task, and what its button says when idle."""

    button: Any
    progressBar: Any
    statusLabel: Any
    idleText: str  # e.g. "Detect"
    cancelledText: str  # shown when the user cancels, e.g. "Cancelled; the scene was not changed."


@dataclass
class _Running:
    name: str
    worker: Worker
    onResult: Callable[[Any, Any], None]


class TaskRunner:
    """Runs at most one task; ``showError(message, details)`` reports failures (``slicer.util.errorDisplay``)."""

    def __init__(self, views: dict[str, TaskView], showError: Callable[[str, str | None], None]) -> None:
        self.views = views
        self.showError = showError
        self.running: _Running | None = None
        for view in views.values():
            view.progressBar.hide()

    @property
    def busy(self) -> bool:
        return self.running is not None

    def isRunning(self, name: str) -> bool:
        return self.running is not None and self.running.name == name

    def start(self, name: str, job: Job, onResult: Callable[[Any, Any], None], status: str = "") -> bool:
        """Start ``job`` as task ``name``; ``onResult(job, result)`` runs on the main thread (from :meth:`poll`) if it
        finishes with a result (an InputError it raises is shown like a failed job's). Refused (False) while another
        task runs."""
        if self.running is not None:
            return False
        worker = Worker(job)
        self.running = _Running(name, worker, onResult)
        view = self.views[name]
        view.statusLabel.text = status
        view.progressBar.value = 0
        view.progressBar.show()
        worker.start()
        self.refresh()
        return True

    def cancel(self) -> None:
        """Ask the running task to stop at its next step."""
        if self.running is not None:
            self.running.worker.cancel()
            self.views[self.running.name].statusLabel.text = "Cancelling…"

    def refresh(self, ready: dict[str, bool] | None = None) -> None:
        """Button texts and states: the running task's button cancels, the others wait; idle buttons are enabled
        where ``ready`` (by task name; default True) says their inputs are there."""
        for name, view in self.views.items():
            if self.isRunning(name):
                view.button.text, view.button.enabled, view.button.toolTip = "Cancel", True, "Stop this run"
            elif self.running is not None:
                view.button.text, view.button.enabled = view.idleText, False
                view.button.toolTip = f"Wait until {self.views[self.running.name].idleText} has finished"
            else:
                view.button.text = view.idleText
                view.button.enabled = (ready or {}).get(name, True)

    def poll(self, ready: dict[str, bool] | None = None) -> bool:
        """Follow the running task's progress; once it has ended, report it and return True."""
        running = self.running
        if running is None:
            return False
        view = self.views[running.name]
        fraction, stage = running.worker.progress
        view.progressBar.value = int(round(100 * fraction))
        view.progressBar.format = f"{stage}: %p%"
        if not running.worker.done:
            return False
        self.running = None
        view.progressBar.hide()
        self.refresh(ready)
        worker = running.worker
        if worker.cancelled:
            view.statusLabel.text = view.cancelledText
        elif isinstance(worker.error, InputError):
            view.statusLabel.text = ""
            self.showError(str(worker.error), None)
        elif worker.error is not None:
            details = "".join(traceback.format_exception(worker.error))
            log.error(details)
            view.statusLabel.text = ""
            self.showError(f"{view.idleText} failed: {worker.error}", details)
        else:
            try:
                running.onResult(worker.job, worker.result)
            except InputError as error:  # e.g. the input volume was deleted while the job ran
                self.showError(str(error), None)
        return True

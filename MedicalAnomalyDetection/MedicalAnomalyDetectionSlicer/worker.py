"""Running a long job of the logic (a :class:`~MedicalAnomalyDetectionSlicer.jobs.DetectionJob` or a
:class:`~MedicalAnomalyDetectionSlicer.jobs.FitJob`) on a Python thread.

Why a thread and not a ``qt.QProcess`` running ``python -m MedicalAnomalyDetectionLib``: the core's ``detect()`` and ``fit_references()`` take
``progress`` and ``cancel`` callables, torch releases the GIL in its kernels so Slicer's event loop keeps running, and
the volume never has to be written to and read back from disk. The thread touches no MRML or Qt object: the widget
polls :attr:`Worker.progress` from a ``qt.QTimer`` and writes the result into the scene on the main thread.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from MedicalAnomalyDetectionLib.progress import CancelCallback, Cancelled, ProgressCallback


class Job(Protocol):
    """What a worker runs: ``run`` touches no MRML or Qt object and reports progress and honours cancel."""

    def run(self, progress: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> Any:
        ...


class Worker:
    """One job in a daemon thread; read ``progress``, ``done``, ``result``, ``error``; call ``cancel()``."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.result: Any = None
        self.error: BaseException | None = None
        self._progress = (0.0, "starting")
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="MedicalAnomalyDetection", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Ask the run to stop at its next batch; it then ends with :attr:`cancelled` True."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (for tests and scripts); True when it has."""
        self._thread.join(timeout)
        return self.done

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    @property
    def progress(self) -> tuple[float, str]:
        """The latest (fraction 0-1, stage name) reported by the core."""
        with self._lock:
            return self._progress

    def _report(self, fraction: float, stage: str) -> None:
        with self._lock:
            self._progress = (fraction, stage)

    def _run(self) -> None:
        try:
            self.result = self.job.run(progress=self._report, cancel=self._cancel.is_set)
        except BaseException as error:  # handed to the main thread, which shows it
            self.error = error

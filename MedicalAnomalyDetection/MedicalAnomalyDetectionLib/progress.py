"""Progress reporting and cancellation of long work (detection, fitting), shared by every face."""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


class Cancelled(Exception):
    """Raised when a run's ``cancel`` callable returns True; the run has written nothing."""


def check_cancel(cancel: CancelCallback | None) -> None:
    """Raise :class:`Cancelled` if ``cancel()`` asks to stop."""
    if cancel is not None and cancel():
        raise Cancelled()


def sub_progress(progress: ProgressCallback | None, start: float, end: float) -> ProgressCallback:
    """A callback that maps a stage's own 0-1 progress onto ``start``-``end`` of ``progress`` (a no-op without)."""
    if progress is None:
        return lambda fraction, stage: None
    return lambda fraction, stage: progress(start + (end - start) * fraction, stage)

"""Progress of a run: weighted stages on one progress bar, an ETA line in the log every ~10 %, and the start-up
stages (loading PyTorch, building the model, reading weights) named while they run and timed in the log.

Plain Python (callbacks in, callbacks out), so Processing (``QgsProcessingFeedback``) and the task
(``QgsTask.setProgress``) share it.
"""

from __future__ import annotations

import time
from typing import Callable

from qgis.core import QgsProcessingFeedback, QgsProcessingMultiStepFeedback

__all__ = ["EtaLog", "format_seconds", "StagedFeedback", "StageTimer"]


def format_seconds(seconds: float) -> str:
    """``"8 s"``, ``"2 min 05 s"``, ``"1 h 02 min"``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class EtaLog:
    """A progress callback (0..100) that forwards every value and logs ``"37 % — ETA 12 s"`` every ``every`` %.

    The ETA extrapolates the time since the first call linearly: the core reports one value per window and
    pass, which all cost about the same.

    Args:
        set_progress: receives every percentage (e.g. the inference stage of a :class:`StagedFeedback`).
        log: receives the ETA lines.
        every: percentage between two log lines.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        set_progress: Callable[[float], None],
        log: Callable[[str], None],
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._set_progress = set_progress
        self._log = log
        self._every = every
        self._clock = clock
        self._started = clock()
        self._next = every

    def __call__(self, percent: float) -> None:
        self._set_progress(percent)
        if percent < self._next or percent >= 100:
            return
        elapsed = self._clock() - self._started
        remaining = elapsed * (100.0 - percent) / percent
        self._log(f"{percent:.0f} % — ETA {format_seconds(remaining)} ({format_seconds(elapsed)} elapsed)")
        while self._next <= percent:
            self._next += self._every


class StagedFeedback:
    """Stages of one run on a ``QgsProcessingMultiStepFeedback``, each weighted by its share of the bar.

    QGIS's multi-step feedback gives every step the same share; a model loads in a second while inference may
    take an hour, so each stage here spans as many 1 % steps as its weight.

    Args:
        feedback: the algorithm's feedback.
        stages: ``(label, weight)`` pairs, e.g. ``(("Loading the model", 5), ("Inference", 95))``.
    """

    def __init__(self, feedback: QgsProcessingFeedback, stages: tuple[tuple[str, float], ...]) -> None:
        total = sum(weight for _label, weight in stages)
        self.feedback = QgsProcessingMultiStepFeedback(100, feedback)
        self._stages = []
        start = 0.0
        for label, weight in stages:
            self._stages.append((label, start, 100.0 * weight / total))
            start += 100.0 * weight / total
        self._current = 0
        self._step = -1

    def start(self, index: int) -> None:
        """Begin stage ``index``: its label becomes the progress text and the bar jumps to its start."""
        self._current = index
        label, _start, _span = self._stages[index]
        self.feedback.setProgressText(label)
        self.set_progress(0.0)

    def set_progress(self, percent: float) -> None:
        """Progress ``percent`` (0..100) within the current stage."""
        _label, start, span = self._stages[self._current]
        overall = min(100.0, start + span * max(0.0, min(100.0, percent)) / 100.0)
        step = min(99, int(overall))
        if step != self._step:  # setCurrentStep reports the step's start: only on a change, so values never drop
            self._step = step
            self.feedback.setCurrentStep(step)
        self.feedback.setProgress((overall - step) * 100.0)


class StageTimer:
    """Names the stage being worked on and logs how long each one took when the next begins (or at :meth:`end`).

    ``begin("Loading PyTorch…")`` shows the label (e.g. as the Processing dialog's progress text, above a bar
    that cannot move while one long call runs) and, at the next ``begin`` or ``end``, logs
    ``"Loading PyTorch… 8.2 s"``.

    Args:
        show: receives each label when its stage begins.
        log: receives one line per finished stage.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        show: Callable[[str], None],
        log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._show = show
        self._log = log
        self._clock = clock
        self._label: str | None = None
        self._started = 0.0
        self.seconds: dict[str, float] = {}  # label -> seconds, for every stage that ended

    def begin(self, label: str) -> None:
        """End the current stage (if any) and start ``label``."""
        self.end()
        self._label = label
        self._started = self._clock()
        self._show(label)

    def end(self) -> None:
        """End the current stage and log its time; nothing when no stage runs."""
        if self._label is None:
            return
        seconds = self._clock() - self._started
        self.seconds[self._label] = seconds
        self._log(f"{self._label} {seconds:.1f} s")
        self._label = None

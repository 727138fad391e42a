"""How a Processing run meets the outside world: errors printed once, Ctrl+C as Cancel, numbers read as given.

- :func:`processing_error`: the ``QgsProcessingException`` for a message. Under ``qgis_process`` QGIS prints a
  failed algorithm's message three times (its message log echoes to the terminal twice, beside the
  ``ERROR:`` line); there the log's echo is muted for the moment QGIS reports the error, so the user reads it once.
- :func:`cancel_on_interrupt`: while an algorithm runs in the main thread (``qgis_process``, scripts), Ctrl+C
  (SIGINT) cancels it as the Cancel button does: the run stops at the next pass, removes its temporaries and
  fails (exit status 1). QGIS's own watcher only reacts when its event loop runs, which a long pass delays.
- :func:`raw_number`: the value of a number parameter as the user gave it. QGIS's ``parameterAsInt`` rounds
  ``2.5`` to 3 and wraps integers beyond 32 bits; the core validates the raw value and names the parameter.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from qgis.core import (
    QgsApplication,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
)
from qgis.PyQt.QtCore import QTimer

__all__ = ["processing_error", "cancel_on_interrupt", "raw_number"]


def processing_error(message: str) -> QgsProcessingException:
    """The exception to raise for ``message`` (see the module docstring for what changes under qgis_process)."""
    if QgsApplication.platform() == "qgis_process":
        log = QgsApplication.messageLog()
        log.blockSignals(True)  # QGIS logs the message while handling the exception: not echoed twice more
        QTimer.singleShot(0, lambda: log.blockSignals(False))
    return QgsProcessingException(message)


@contextlib.contextmanager
def cancel_on_interrupt(feedback: QgsProcessingFeedback) -> Iterator[None]:
    """Within the block, SIGINT cancels ``feedback`` (main thread only; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum: int, frame: Any) -> None:
        feedback.pushInfo("Interrupted (Ctrl+C): stopping after the current pass…")
        feedback.cancel()

    try:
        previous = signal.signal(signal.SIGINT, interrupted)
    except (ValueError, OSError):  # not allowed here (embedded interpreter): QGIS's own handling stays
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def raw_number(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], key: str, context: QgsProcessingContext
) -> Any:
    """The value of number parameter ``key`` as given (``"3000000000"``, ``2.5``, ``7``), for the core to check;
    a value QGIS evaluates itself (an expression, a model input) is read as a double."""
    value = parameters.get(key)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return algorithm.parameterAsDouble(parameters, key, context)

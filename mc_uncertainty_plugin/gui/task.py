"""A ``QgsTask`` that runs the core in the background, for GUI code outside Processing.

``run()`` executes in a worker thread of ``QgsApplication.taskManager()``: it gets the model through the same
bridge as the Processing algorithms (:func:`..bridge.run_segmentation`: stages named and timed in the log, a
model of an earlier run reused) and calls the core with ``progress`` → ``setProgress`` and ``is_cancelled`` →
``isCanceled``. ``finished()`` runs on the main thread: it loads both outputs, styled, into a new layer group of
the project (:func:`.result_layers.add_result_layers`).

    request = TaskRequest(input_path="scene.tif", input_name="scene", model_path="model.yaml",
                          output_path="/data/scene_mc_classes.tif", uncertainty_path="/data/scene_mc_uncertainty.tif")
    task = McUncertaintyTask(request)
    QgsApplication.taskManager().addTask(task)   # keep a reference to ``task`` until it ends
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgis.core import Qgis, QgsMessageLog, QgsProcessingUtils, QgsProject, QgsRasterLayer, QgsTask

from ..bridge import BridgeCallbacks, MissingDependencies, SegmentationRequest, run_segmentation
from ..core.errors import InferenceCancelled, McUncertaintyError, ParameterError  # no torch import
from ..i18n import tr
from ..map_layers.result_layers import MC_DROPOUT, TTA, add_result_layers
from ..progress import StageTimer, format_seconds

__all__ = [
    "LOG_TAG",
    "BANDS_HINT",
    "TaskRequest",
    "McUncertaintyTask",
    "output_paths",
    "default_output_folder",
    "is_temporary_folder",
]

LOG_TAG = "MC Uncertainty"  # the Log Messages panel tab
_METHODS = {MC_DROPOUT.key: MC_DROPOUT, TTA.key: TTA}
BANDS_HINT = (
    'Choose them in the dialog\'s "Input bands" field, in model order (e.g. 1,1,1 feeds a 1-band layer to '
    "a 3-band model)."
)


@dataclass(frozen=True)
class TaskRequest:
    """One run of the core, as the task needs it.

    Attributes:
        input_path: a GDAL-readable raster.
        input_name: names the result group and layers (the input layer's name).
        model_path: model config YAML or TorchScript file.
        output_path: the class raster to write.
        uncertainty_path: the uncertainty raster to write; None: beside ``output_path`` (the core's default).
        checkpoint_path: weights of a YAML model, or None.
        method: ``mc_dropout`` or ``tta``.
        options: further keyword arguments of the core processor (``n_samples``, ``uncertainty_mode``, ``bands``,
            ``model_input_shape`` ...); left out, the model config's ``inference_processor:`` values apply.
        stretch: stretch the uncertainty layer's colours to the data (2–98 %) instead of 0 .. maximum.
    """

    input_path: str
    input_name: str
    model_path: str
    output_path: str
    uncertainty_path: str | None = None
    checkpoint_path: str | None = None
    method: str = MC_DROPOUT.key
    options: Mapping[str, Any] = field(default_factory=dict)
    stretch: bool = False

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {self.method!r}.")


def output_paths(folder: str, input_name: str, method: str) -> tuple[str, str]:
    """Free ``{folder}/{name}_{mc|tta}_classes.tif`` and ``..._uncertainty.tif`` paths (``_2``, ``_3`` ... added
    rather than overwriting earlier results)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in input_name).strip("._") or "raster"
    tag = "mc" if method == MC_DROPOUT.key else "tta"
    for index in range(1, 10000):
        suffix = "" if index == 1 else f"_{index}"
        classes = os.path.join(folder, f"{stem}_{tag}_classes{suffix}.tif")
        uncertainty = os.path.join(folder, f"{stem}_{tag}_uncertainty{suffix}.tif")
        if not os.path.exists(classes) and not os.path.exists(uncertainty):
            return classes, uncertainty
    raise ValueError(f"no free output name in {folder!r} for {stem!r}.")


class McUncertaintyTask(QgsTask):
    """Runs one :class:`TaskRequest` in the background and loads the styled results into ``project``.

    After the task ends: ``paths`` holds the core's result (``{"segmentation": ..., "uncertainty": ...}``),
    ``layers`` the layers added, ``error`` the one-line message of a failure (None when it succeeded or was
    cancelled), ``missing_dependencies`` whether it failed for want of torch (the plugin then offers the
    installer), ``log`` every line the run reported (also sent to the "MC Uncertainty" log tab), ``stage`` the
    start-up stage running now ("Loading PyTorch…" ...) and ``stage_seconds`` each finished stage's time.
    """

    def __init__(self, request: TaskRequest, project: QgsProject | None = None) -> None:
        method = _METHODS[request.method]
        super().__init__(f"{method.title} uncertainty: {request.input_name}", QgsTask.CanCancel)
        self.request = request
        self.project = project if project is not None else QgsProject.instance()  # read on the main thread
        self.paths: dict[str, str | None] | None = None
        self.layers: list[QgsRasterLayer] = []
        self.error: str | None = None
        self.missing_dependencies = False
        self.log: list[str] = []
        self.stage = ""
        self.stage_seconds: dict[str, float] = {}
        self.seconds = 0.0

    def _log(self, message: str) -> None:
        self.log.append(message)
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.Info)  # thread-safe

    def _warn(self, message: str) -> None:
        self.log.append(message)
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.Warning)

    def run(self) -> bool:
        """Worker thread: load the model and run the core. False when it failed or was cancelled."""
        started = time.monotonic()
        try:
            return self._run()
        except Exception as error:  # noqa: BLE001 - a task must not raise: report it instead
            self.error = f"{type(error).__name__}: {error}"
            return False
        finally:
            self.seconds = time.monotonic() - started

    def _show_stage(self, label: str) -> None:
        self.stage = label
        self._log(label)

    def _run(self) -> bool:
        request = self.request
        timer = StageTimer(self._show_stage, self._log)
        try:
            return self._run_core(request, timer)
        except MissingDependencies as error:
            self.error, self.missing_dependencies = str(error), True
            return False
        finally:
            self.stage_seconds = dict(timer.seconds)

    def _run_core(self, request: TaskRequest, timer: StageTimer) -> bool:
        run = SegmentationRequest(
            request.method,
            request.input_path,
            request.model_path,
            request.output_path,
            request.checkpoint_path,
            request.uncertainty_path,
            settings=dict(request.options),
        )
        callbacks = BridgeCallbacks(self._log, self._warn, self._show_stage, self.setProgress, self.isCanceled)
        try:
            self.paths = run_segmentation(run, callbacks, timer)
        except InferenceCancelled:
            return False
        except ParameterError as error:
            hint = " " + tr(BANDS_HINT) if error.parameter in ("INPUT", "BANDS") and "BANDS" in str(error) else ""
            self.error = str(error) + hint
            return False
        except McUncertaintyError as error:
            self.error = str(error)
            return False
        return True

    def finished(self, result: bool) -> None:  # noqa: FBT001
        """Main thread: add the styled layers to the project, or report why there are none."""
        method = _METHODS[self.request.method]
        if result and self.paths:
            try:
                self.layers = add_result_layers(
                    self.project,
                    self.paths["segmentation"],
                    self.paths.get("uncertainty"),
                    self.request.input_name,
                    method,
                    self.request.stretch,
                )
            except ValueError as error:
                self.error = str(error)
                QgsMessageLog.logMessage(self.error, LOG_TAG, Qgis.Critical)
                return
            self._log(f"{self.description()}: done in {format_seconds(self.seconds)}, layers added to the project.")
        elif self.error:
            QgsMessageLog.logMessage(self.error, LOG_TAG, Qgis.Critical)
        else:
            self._log(f"{self.description()}: cancelled; no output was written.")


def is_temporary_folder(folder: str) -> bool:
    """Whether ``folder`` lies in QGIS Processing's temporary folder (deleted when QGIS exits)."""
    temporary = os.path.realpath(QgsProcessingUtils.tempFolder())
    path = os.path.realpath(folder) if folder else ""
    return bool(path) and (path == temporary or path.startswith(temporary + os.sep))


def default_output_folder(project: QgsProject, input_path: str | None = None) -> str:
    """Where the outputs go by default: the project's folder when the project is saved, else the input's folder
    when it is writable, else QGIS Processing's temporary folder (deleted when QGIS exits)."""
    if project.fileName():
        return str(Path(project.absoluteFilePath()).parent)
    if input_path:
        folder = os.path.dirname(os.path.abspath(input_path))
        if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return folder
    return QgsProcessingUtils.tempFolder()

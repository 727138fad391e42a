"""McUncertaintyTask in QGIS's task manager, its dialog, and the plugin's "MC uncertainty on the active layer…"
action: QGIS stays responsive, progress is reported, cancel leaves nothing, results arrive styled and grouped."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsLayerTreeGroup,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsSettings,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt.QtCore import QEventLoop, QTimer
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox

from mc_uncertainty_plugin.gui.task import McUncertaintyTask, TaskRequest, output_paths
from mc_uncertainty_plugin.gui.task_dialog import TaskDialog

TILES = {"model_input_shape": "64", "step_shape": "32"}


class TaskWatch:
    """Records a task's progress and end, and a 20 ms main-thread timer's ticks while waiting for it."""

    def __init__(self, task: McUncertaintyTask) -> None:
        self.task = task
        self.ended: str | None = None
        self.progress: list[float] = []
        self.ticks: list[float] = []
        self._loop = QEventLoop()
        task.progressChanged.connect(self.progress.append)
        task.taskCompleted.connect(lambda: self._end("completed"))
        task.taskTerminated.connect(lambda: self._end("terminated"))

    def _end(self, how: str) -> None:
        self.ended = how
        self._loop.quit()

    def wait(self, timeout_s: float = 120.0, until: Any = None) -> None:
        """Run the main event loop until the task ended (or ``until()`` is true), at most ``timeout_s``."""
        timer = QTimer()
        timer.setInterval(20)
        timer.timeout.connect(lambda: self.ticks.append(time.monotonic()))
        if until is not None:
            timer.timeout.connect(lambda: until() and self._loop.quit())
        timer.start()
        QTimer.singleShot(int(timeout_s * 1000), self._loop.quit)
        if self.ended is None:
            self._loop.exec_()
        timer.stop()


def start(task: McUncertaintyTask) -> TaskWatch:
    watch = TaskWatch(task)
    QgsApplication.taskManager().addTask(task)
    return watch


def test_task_keeps_qgis_responsive_reports_progress_and_loads_styled_layers(
    mc_plugin: Any, raster_path: str, sleepy_model: str, tmp_path: Path, clean_project: Any
) -> None:
    classes, uncertainty = output_paths(str(tmp_path), "scene", "mc_dropout")
    request = TaskRequest(
        raster_path,
        "scene",
        sleepy_model,
        classes,
        uncertainty,
        options={"n_samples": 30, "uncertainty_mode": "mutual_information", **TILES},
    )
    task = McUncertaintyTask(request, clean_project)
    watch = start(task)
    started = time.monotonic()
    watch.wait()
    elapsed = time.monotonic() - started

    assert watch.ended == "completed", task.error
    assert task.seconds >= 1.0, f"the task must run long enough to show responsiveness ({task.seconds:.2f} s)"
    # the main thread kept turning: a 20 ms timer fired all along (no gap of a second)
    assert len(watch.ticks) >= 0.3 * elapsed / 0.02, (len(watch.ticks), elapsed)
    assert max(b - a for a, b in zip(watch.ticks, watch.ticks[1:])) < 1.0
    # progress per window and pass, then 100
    assert len(set(watch.progress)) >= 10 and watch.progress == sorted(watch.progress)
    assert watch.progress[-1] == pytest.approx(100)
    assert any("% — ETA" in line for line in task.log) and any("Device: cpu" in line for line in task.log)
    # the styled layers, in one group
    (group,) = clean_project.layerTreeRoot().children()
    assert isinstance(group, QgsLayerTreeGroup) and group.name() == "scene — MC Dropout (T = 30, MI)"
    assert [child.name() for child in group.children()] == [
        "scene — MC uncertainty (mutual information, T = 30)",
        "scene — MC classes (T = 30)",
    ]
    unc_layer, class_layer = task.layers
    assert unc_layer.source() == uncertainty and class_layer.source() == classes
    assert isinstance(unc_layer.renderer(), QgsSingleBandPseudoColorRenderer)
    assert isinstance(class_layer.renderer(), QgsPalettedRasterRenderer)


def test_cancel_leaves_no_files_and_no_layers(
    mc_plugin: Any, raster_path: str, sleepy_model: str, tmp_path: Path, clean_project: Any
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    classes, uncertainty = output_paths(str(out), "scene", "mc_dropout")
    request = TaskRequest(raster_path, "scene", sleepy_model, classes, uncertainty, options={"n_samples": 500, **TILES})
    task = McUncertaintyTask(request, clean_project)
    watch = start(task)
    watch.wait(until=lambda: any(value > 0 for value in watch.progress))
    assert watch.ended is None, "the task ended before it could be cancelled"
    task.cancel()
    watch.wait()
    assert watch.ended == "terminated"
    assert task.error is None and task.layers == []
    assert os.listdir(out) == [], "a cancelled run leaves nothing (no partial files either)"
    assert clean_project.mapLayers() == {} and clean_project.layerTreeRoot().children() == []
    assert max(watch.progress) < 100


def test_failure_is_reported_not_raised(mc_plugin: Any, raster_path: str, tmp_path: Path, clean_project: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  _target_: os.system\n", encoding="utf-8")
    classes, uncertainty = output_paths(str(tmp_path), "scene", "tta")
    task = McUncertaintyTask(
        TaskRequest(raster_path, "scene", str(bad), classes, uncertainty, method="tta"), clean_project
    )
    watch = start(task)
    watch.wait()
    assert watch.ended == "terminated"
    assert task.error and "MODEL" in task.error and "not allowed" in task.error
    assert not Path(classes).exists() and clean_project.mapLayers() == {}


def test_output_paths_never_overwrite(tmp_path: Path) -> None:
    first = output_paths(str(tmp_path), "my scene/1", "mc_dropout")
    assert [Path(p).name for p in first] == ["my_scene_1_mc_classes.tif", "my_scene_1_mc_uncertainty.tif"]
    Path(first[1]).touch()
    assert [Path(p).name for p in output_paths(str(tmp_path), "my scene/1", "mc_dropout")] == [
        "my_scene_1_mc_classes_2.tif",
        "my_scene_1_mc_uncertainty_2.tif",
    ]
    with pytest.raises(ValueError, match="method"):
        TaskRequest("a.tif", "a", "m.pt", "o.tif", method="bayes")


@pytest.fixture
def fresh_dialog_settings() -> Any:
    """No remembered model, method or T, before and after the test."""
    keys = [f"mc_uncertainty_plugin/task_dialog/{key}" for key in ("model", "method", "n_samples")]
    for key in keys:
        QgsSettings().remove(key)
    yield
    for key in keys:
        QgsSettings().remove(key)


def test_dialog_builds_the_request(
    raster_path: str, torchscript_model: str, tmp_path: Path, clean_project: Any, fresh_dialog_settings: None
) -> None:
    layer = QgsRasterLayer(raster_path, "scene")
    dialog = TaskDialog(layer, clean_project)
    ok = dialog.buttons.button(QDialogButtonBox.Ok)
    assert not ok.isEnabled()  # no model yet
    # unsaved project: the input's folder (writable), not QGIS's temporary folder (deleted on exit)
    assert dialog.folder.filePath() == str(Path(raster_path).parent) and dialog.folder_note.isHidden()
    dialog.model.setFilePath(torchscript_model)
    dialog.folder.setFilePath(str(tmp_path))
    assert ok.isEnabled()
    dialog.n_samples.setValue(7)
    dialog.mode.setCurrentIndex(dialog.mode.findData("mutual_information"))
    request = dialog.request()
    assert (request.input_path, request.input_name, request.model_path, request.method) == (
        raster_path,
        "scene",
        torchscript_model,
        "mc_dropout",
    )
    assert request.output_path == str(tmp_path / "scene_mc_classes.tif")
    assert request.uncertainty_path == str(tmp_path / "scene_mc_uncertainty.tif")
    assert dict(request.options) == {"n_samples": 7, "uncertainty_mode": "mutual_information"}
    assert request.stretch is False
    dialog.bands.setText("3, 1,1")
    dialog.stretch.setChecked(True)
    assert dialog.request().options["bands"] == (3, 1, 1) and dialog.request().stretch
    dialog.bands.setText("4")  # the layer has 3 bands
    assert not ok.isEnabled() and "from 1 to 3" in dialog.bands_note.text()
    dialog.bands.setText("")
    dialog.method.setCurrentIndex(dialog.method.findData("tta"))
    assert not dialog.n_samples.isEnabled()
    assert "n_samples" not in dialog.request().options
    # remembered for the next time
    assert TaskDialog(layer, clean_project).model.filePath() == torchscript_model


def test_dialog_says_when_results_would_be_deleted_on_exit(
    raster_path: str, clean_project: Any, fresh_dialog_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unsaved project and an input folder the user cannot write: QGIS's temporary folder, and the dialog
    says it is deleted when QGIS closes; another folder takes the warning away."""
    from qgis.core import QgsProcessingUtils

    import mc_uncertainty_plugin.gui.task as task_module

    monkeypatch.setattr(task_module.os, "access", lambda path, mode: False)
    dialog = TaskDialog(QgsRasterLayer(raster_path, "scene"), clean_project)
    assert dialog.folder.filePath() == QgsProcessingUtils.tempFolder()
    assert not dialog.folder_note.isHidden() and "deleted when QGIS closes" in dialog.folder_note.text()
    dialog.folder.setFilePath(str(Path(raster_path).parent))
    assert dialog.folder_note.isHidden()


def test_one_band_layer_error_points_to_the_dialogs_bands_then_runs_with_them(
    mc_plugin: Any, torchscript_model: str, tmp_path: Path, clean_project: Any
) -> None:
    """A 1-band layer and a 3-band model: the error names the dialog's own field; with 1,1,1 it runs."""
    import numpy as np
    from conftest import _write_geotiff

    gray = _write_geotiff(tmp_path / "gray.tif", np.full((1, 40, 50), 120, dtype=np.uint8))
    for bands in (None, (1, 1, 1)):
        classes, uncertainty = output_paths(str(tmp_path), "gray", "mc_dropout")
        options = {"n_samples": 2, **TILES, **({"bands": bands} if bands else {})}
        task = McUncertaintyTask(
            TaskRequest(gray, "gray", torchscript_model, classes, uncertainty, options=options), clean_project
        )
        watch = start(task)
        watch.wait()
        if bands is None:
            assert watch.ended == "terminated" and '"Input bands"' in task.error and "1,1,1" in task.error
        else:
            assert watch.ended == "completed", task.error
            assert Path(classes).is_file()


def test_action_without_a_raster_layer_warns(mc_plugin: Any, qgis_iface: Any, clean_project: Any) -> None:
    assert mc_plugin.action is not None and mc_plugin.action.text() == "MC uncertainty on the active layer…"
    qgis_iface.messageBar().clear_messages()
    qgis_iface._active_layer_id = None
    assert mc_plugin.run_on_active_layer() is None
    assert any("raster layer" in m for m in qgis_iface.messageBar().get_messages(Qgis.Warning))


def test_action_runs_a_task_on_the_active_layer(
    mc_plugin: Any,
    qgis_iface: Any,
    raster_path: str,
    torchscript_model: str,
    tmp_path: Path,
    clean_project: Any,
    monkeypatch: pytest.MonkeyPatch,
    fresh_dialog_settings: None,
) -> None:
    layer = QgsRasterLayer(raster_path, "scene")
    clean_project.addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)

    def accept(dialog: TaskDialog) -> int:
        dialog.model.setFilePath(torchscript_model)
        dialog.folder.setFilePath(str(tmp_path))
        dialog.n_samples.setValue(2)
        return QDialog.Accepted

    monkeypatch.setattr(TaskDialog, "exec_", accept)
    qgis_iface.messageBar().clear_messages()
    task = mc_plugin.run_on_active_layer()
    assert task in mc_plugin.tasks
    watch = TaskWatch(task)
    watch.wait()
    assert task.error is None and task not in mc_plugin.tasks
    names = [child.name() for child in clean_project.layerTreeRoot().children()]
    assert names == ["scene — MC Dropout (T = 2, entropy)", "scene"]
    assert sorted(os.listdir(tmp_path)) == ["scene_mc_classes.tif", "scene_mc_uncertainty.tif"]
    assert any(
        "scene — MC uncertainty (entropy, T = 2)" in m for m in qgis_iface.messageBar().get_messages(Qgis.Success)
    )

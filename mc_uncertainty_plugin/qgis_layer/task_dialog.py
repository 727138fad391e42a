"""The small dialog of the "MC uncertainty on the active layer…" action: model, method, T, output folder.

Everything else (tiles, seed, device ...) takes the model config's ``inference_processor:`` values or the
defaults; the Processing algorithm has every parameter.
"""

from __future__ import annotations

import os
from typing import Any

from qgis.core import QgsProject, QgsRasterLayer, QgsSettings
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QWidget,
)

from .parameters import CHECKPOINT_FILE_FILTER, MODEL_FILE_FILTER, UNCERTAINTY_MODES, tr
from .result_layers import MC_DROPOUT, TTA
from .task import TaskRequest, default_output_folder, output_paths

__all__ = ["TaskDialog"]

_SETTINGS = "mc_uncertainty_plugin/task_dialog/"


class TaskDialog(QDialog):
    """Asks for what :class:`~.task.TaskRequest` needs beyond the input layer; remembers it between sessions."""

    def __init__(self, layer: QgsRasterLayer, project: QgsProject | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layer = layer
        self.project = project if project is not None else QgsProject.instance()
        settings = QgsSettings()
        self.setWindowTitle(tr("MC uncertainty on the active layer"))
        form = QFormLayout(self)
        form.addRow(tr("Input"), QLabel(layer.name()))

        self.method = QComboBox()
        self.method.addItem(tr("MC Dropout (T stochastic passes)"), MC_DROPOUT.key)
        self.method.addItem(tr("TTA (flips and rotations, d4)"), TTA.key)
        self.method.setCurrentIndex(max(0, self.method.findData(settings.value(_SETTINGS + "method", MC_DROPOUT.key))))
        form.addRow(tr("Method"), self.method)

        self.model = QgsFileWidget()
        self.model.setFilter(tr(MODEL_FILE_FILTER))
        self.model.setFilePath(str(settings.value(_SETTINGS + "model", "")))
        self.model.setToolTip(tr("Model config YAML (with checkpoint_path) or TorchScript file."))
        form.addRow(tr("Model"), self.model)

        self.checkpoint = QgsFileWidget()
        self.checkpoint.setFilter(tr(CHECKPOINT_FILE_FILTER))
        self.checkpoint.setToolTip(tr("Optional: weights for a YAML model; empty takes the config's checkpoint_path."))
        form.addRow(tr("Checkpoint (optional)"), self.checkpoint)

        self.n_samples = QSpinBox()
        self.n_samples.setRange(1, 1000)
        self.n_samples.setValue(int(settings.value(_SETTINGS + "n_samples", 10)))
        self.n_samples.setToolTip(tr("T: 5 coarse, 10 good for most uses, 30 high quality; time grows with T."))
        form.addRow(tr("Passes T"), self.n_samples)

        self.mode = QComboBox()
        for mode in UNCERTAINTY_MODES:
            self.mode.addItem(mode.replace("_", " "), mode)
        form.addRow(tr("Uncertainty"), self.mode)

        self.folder = QgsFileWidget()
        self.folder.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder.setFilePath(default_output_folder(self.project))
        self.folder.setToolTip(tr("Where the two GeoTIFFs are written: the project's folder, else a temporary one."))
        form.addRow(tr("Output folder"), self.folder)

        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)

        self.method.currentIndexChanged.connect(self._update)
        self.model.fileChanged.connect(self._update)
        self.folder.fileChanged.connect(self._update)
        self._update()

    def _update(self, *_args: Any) -> None:
        self.n_samples.setEnabled(self.method.currentData() == MC_DROPOUT.key)
        ready = os.path.isfile(self.model.filePath()) and os.path.isdir(self.folder.filePath())
        self.buttons.button(QDialogButtonBox.Ok).setEnabled(ready)

    def request(self) -> TaskRequest:
        """The run the dialog describes (call after it was accepted); remembers model, method and T."""
        method = self.method.currentData()
        classes, uncertainty = output_paths(self.folder.filePath(), self.layer.name(), method)
        options: dict[str, Any] = {"uncertainty_mode": self.mode.currentData()}
        if method == MC_DROPOUT.key:
            options["n_samples"] = self.n_samples.value()
        settings = QgsSettings()
        settings.setValue(_SETTINGS + "model", self.model.filePath())
        settings.setValue(_SETTINGS + "method", method)
        settings.setValue(_SETTINGS + "n_samples", self.n_samples.value())
        return TaskRequest(
            input_path=self.layer.source(),
            input_name=self.layer.name(),
            model_path=self.model.filePath(),
            output_path=classes,
            uncertainty_path=uncertainty,
            checkpoint_path=self.checkpoint.filePath() or None,
            method=method,
            options=options,
        )

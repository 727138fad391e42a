"""The small dialog of the "MC uncertainty on the active layer…" action: model, method, T, input bands, output
folder.

Everything else (tiles, seed, device ...) takes the model config's ``inference_processor:`` values or the
defaults; the Processing algorithm has every parameter. The output folder defaults to the saved project's folder,
else to the input's folder when it is writable, else to QGIS's temporary folder, which the dialog then says is
deleted when QGIS closes.
"""

from __future__ import annotations

import os
from typing import Any

from qgis.core import QgsProject, QgsRasterLayer, QgsSettings
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from ..i18n import tr
from ..map_layers.result_layers import MC_DROPOUT, TTA
from ..processing_provider.parameters import CHECKPOINT_FILE_FILTER, MODEL_FILE_FILTER, UNCERTAINTY_MODES
from .task import TaskRequest, default_output_folder, is_temporary_folder, output_paths

__all__ = ["TaskDialog", "parse_bands"]

_SETTINGS = "mc_uncertainty_plugin/task_dialog/"


def parse_bands(text: str, band_count: int) -> tuple[int, ...] | None:
    """``"3, 2, 1"`` → ``(3, 2, 1)``; "" → None (the model's first bands).

    Raises:
        ValueError: not a list of band numbers in 1..band_count (the message echoes the text).
    """
    parts = [part.strip() for part in text.replace(";", ",").replace(" ", ",").split(",") if part.strip()]
    if not parts:
        return None
    if not all(part.isdigit() and 1 <= int(part) <= band_count for part in parts):
        raise ValueError(f"Input bands must be band numbers from 1 to {band_count}, comma-separated, got {text!r}.")
    return tuple(int(part) for part in parts)


class TaskDialog(QDialog):
    """Asks for what :class:`~.task.TaskRequest` needs beyond the input layer; remembers it between sessions."""

    def __init__(self, layer: QgsRasterLayer, project: QgsProject | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.layer = layer
        self.project = project if project is not None else QgsProject.instance()
        self.setWindowTitle(tr("MC uncertainty on the active layer"))
        settings = QgsSettings()
        form = QFormLayout(self)
        form.addRow(tr("Input"), QLabel(layer.name()))
        self._add_model_rows(form, settings)
        self._add_sampling_rows(form, settings)
        self._add_output_rows(form)
        self._add_buttons(form)
        self._connect_updates()
        self._update()

    def _add_model_rows(self, form: QFormLayout, settings: QgsSettings) -> None:
        """Method, model and checkpoint; method and model as last time."""
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

    def _add_sampling_rows(self, form: QFormLayout, settings: QgsSettings) -> None:
        """Passes T (as last time), uncertainty measure, input bands and the colour stretch."""
        self.n_samples = QSpinBox()
        self.n_samples.setRange(1, 1000)
        self.n_samples.setValue(int(settings.value(_SETTINGS + "n_samples", 10)))
        self.n_samples.setToolTip(tr("T: 5 coarse, 10 good for most uses, 30 high quality; time grows with T."))
        form.addRow(tr("Passes T"), self.n_samples)

        self.mode = QComboBox()
        for mode in UNCERTAINTY_MODES:
            self.mode.addItem(mode.replace("_", " "), mode)
        form.addRow(tr("Uncertainty"), self.mode)

        self.bands = QLineEdit()
        count = self.layer.bandCount()
        self.bands.setPlaceholderText(tr("empty: the first bands the model takes (the layer has {})").format(count))
        self.bands.setToolTip(
            tr(
                "The layer's bands fed to the model, in model order, e.g. 3,2,1; a band may be "
                "repeated (1,1,1 feeds a 1-band layer to a 3-band model)."
            )
        )
        form.addRow(tr("Input bands"), self.bands)

        self.stretch = QCheckBox(tr("Stretch the uncertainty colours to the data (2–98 %)"))
        self.stretch.setToolTip(
            tr(
                "Off: colours from 0 to the measure's maximum (ln C), comparable between maps. "
                "On: over the data's 2–98 % range, for maps whose values all sit near 0 (TTA)."
            )
        )
        form.addRow("", self.stretch)

    def _add_output_rows(self, form: QFormLayout) -> None:
        """The output folder (see the module docstring for its default), then the notes :meth:`_update` fills."""
        self.folder = QgsFileWidget()
        self.folder.setStorageMode(QgsFileWidget.GetDirectory)
        self.folder.setFilePath(default_output_folder(self.project, self.layer.source()))
        self.folder.setToolTip(
            tr(
                "Where the two GeoTIFFs are written: the saved project's folder, else the "
                "input's folder, else QGIS's temporary folder."
            )
        )
        form.addRow(tr("Output folder"), self.folder)
        self.folder_note = QLabel("")
        self.folder_note.setWordWrap(True)
        form.addRow("", self.folder_note)
        self.bands_note = QLabel("")
        self.bands_note.setWordWrap(True)
        form.addRow("", self.bands_note)

    def _add_buttons(self, form: QFormLayout) -> None:
        """OK (enabled by :meth:`_update` once the form is complete) and Cancel."""
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)

    def _connect_updates(self) -> None:
        """Re-check the form whenever the method, the model, the folder or the bands change."""
        self.method.currentIndexChanged.connect(self._update)
        self.model.fileChanged.connect(self._update)
        self.folder.fileChanged.connect(self._update)
        self.bands.textChanged.connect(self._update)

    def _bands(self) -> tuple[int, ...] | None:
        return parse_bands(self.bands.text(), self.layer.bandCount())

    def _update(self, *_args: Any) -> None:
        """Enable T for MC Dropout only, show the notes that apply, enable OK when model, folder and bands are
        valid."""
        self.n_samples.setEnabled(self.method.currentData() == MC_DROPOUT.key)
        folder = self.folder.filePath()
        temporary = bool(folder) and is_temporary_folder(folder)
        self.folder_note.setText(
            tr(
                "This is QGIS's temporary folder: it is deleted when QGIS closes. Choose "
                "another folder to keep the results."
            )
            if temporary
            else ""
        )
        self.folder_note.setVisible(temporary)
        try:
            self._bands()
            bands_ok, note = True, ""
        except ValueError as error:
            bands_ok, note = False, str(error)
        self.bands_note.setText(note)
        self.bands_note.setVisible(bool(note))
        ready = os.path.isfile(self.model.filePath()) and os.path.isdir(folder) and bands_ok
        self.buttons.button(QDialogButtonBox.Ok).setEnabled(ready)

    def request(self) -> TaskRequest:
        """The run the dialog describes (call after it was accepted); remembers model, method and T."""
        method = self.method.currentData()
        classes, uncertainty = output_paths(self.folder.filePath(), self.layer.name(), method)
        options: dict[str, Any] = {"uncertainty_mode": self.mode.currentData()}
        if method == MC_DROPOUT.key:
            options["n_samples"] = self.n_samples.value()
        bands = self._bands()
        if bands:
            options["bands"] = bands
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
            stretch=self.stretch.isChecked(),
        )

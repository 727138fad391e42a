"""The Toolbox dialog of the segmentation algorithms: QGIS's own, saying what an empty "Uncertainty raster" does.

An optional raster output left empty reads "[Skip output]" in QGIS's dialog, but here an empty uncertainty
output is written beside the class raster and loaded with it. :class:`SegmentationDialog` is QGIS's
``AlgorithmDialog`` whose uncertainty field says so instead ("[Beside the class raster: classes_mc_uncertainty.tif]",
following the class raster's name as it is typed). Imported only where the Processing GUI exists (the desktop).
"""

from __future__ import annotations

import os
from typing import Any

from processing.gui.AlgorithmDialog import AlgorithmDialog
from qgis.core import QgsProcessing, QgsProcessingAlgorithm, QgsProcessingOutputLayerDefinition, QgsProperty
from qgis.gui import QgsProcessingLayerOutputDestinationWidget
from qgis.PyQt import sip
from qgis.PyQt.QtWidgets import QLineEdit, QWidget

from ..i18n import tr
from .parameters import OUTPUT, OUTPUT_UNCERTAINTY

__all__ = ["SegmentationDialog", "default_uncertainty_text", "explain_default_uncertainty"]


def _output_path(value: Any) -> str:
    """The file path a destination widget's value names ("" for a temporary output or none)."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink
    if isinstance(value, QgsProperty):
        value = value.staticValue() if value.propertyType() == QgsProperty.StaticProperty else ""
    text = str(value or "")
    return "" if text in ("", QgsProcessing.TEMPORARY_OUTPUT) or text.startswith("memory:") else text


def _destination_widget(wrapper: Any) -> QgsProcessingLayerOutputDestinationWidget | None:
    """A destination wrapper's widget with its own type (SIP hands it over as a plain QWidget)."""
    widget = wrapper.wrappedWidget()
    if widget is None or widget.metaObject().className() != "QgsProcessingLayerOutputDestinationWidget":
        return None
    return sip.cast(widget, QgsProcessingLayerOutputDestinationWidget)


def default_uncertainty_text(output_value: Any, suffix: str) -> str:
    """What an empty "Uncertainty raster" field says, given the class raster field's value."""
    path = _output_path(output_value)
    if path:
        stem = os.path.splitext(os.path.basename(path))[0]
        return tr("[Beside the class raster: {}{}.tif]").format(stem, suffix)
    return tr("[Beside the class raster, as <its name>{}.tif]").format(suffix)


def explain_default_uncertainty(panel: Any, suffix: str) -> QLineEdit | None:
    """Make the uncertainty output of a ``ParametersPanel`` say where an empty value writes it; returns its
    line edit (None when the panel has no such output)."""
    wrappers = getattr(panel, "wrappers", {})
    if OUTPUT_UNCERTAINTY not in wrappers:
        return None
    widget = _destination_widget(wrappers[OUTPUT_UNCERTAINTY])
    line = widget.findChild(QLineEdit) if widget is not None else None
    if line is None:
        return None
    output = _destination_widget(wrappers[OUTPUT]) if OUTPUT in wrappers else None

    def update(*_args: Any) -> None:
        if widget.outputIsSkipped():  # QGIS just wrote "[Skip output]" there
            line.setPlaceholderText(default_uncertainty_text(output.value() if output is not None else None, suffix))

    widget.skipOutputChanged.connect(update)
    widget.destinationChanged.connect(update)
    if output is not None:
        output.destinationChanged.connect(update)
    line.setToolTip(
        tr(
            "Empty: written beside the class raster and loaded with it. To write no uncertainty "
            'raster, uncheck "Write the uncertainty raster".'
        )
    )
    update()
    return line


class SegmentationDialog(AlgorithmDialog):
    """QGIS's algorithm dialog with the uncertainty output explained (see the module docstring)."""

    def __init__(
        self, algorithm: QgsProcessingAlgorithm, uncertainty_suffix: str, parent: QWidget | None = None
    ) -> None:
        self.uncertainty_suffix = uncertainty_suffix
        super().__init__(algorithm, False, parent)

    def getParametersPanel(self, alg: QgsProcessingAlgorithm, parent: QWidget) -> Any:  # noqa: N802
        panel = super().getParametersPanel(alg, parent)
        explain_default_uncertainty(panel, self.uncertainty_suffix)
        return panel

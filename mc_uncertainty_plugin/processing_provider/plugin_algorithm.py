"""What every algorithm of the plugin shares: its identity from class attributes, the plugin's icon (also in the
Graphical Modeler), a fresh instance per run, and reading an optional raster parameter."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingParameterDefinition,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QIcon

from ..i18n import tr
from ..icons import ICON_PATH, plugin_icon
from .run_guards import processing_error

__all__ = ["PluginAlgorithm"]


class PluginAlgorithm(QgsProcessingAlgorithm):
    """Base of the plugin's algorithms: a subclass sets ``ALGORITHM_ID``, ``DISPLAY_NAME``, ``SHORT_DESCRIPTION``
    and ``TAGS`` (English; translated when shown) and its help, parameters and processing."""

    ALGORITHM_ID = ""
    DISPLAY_NAME = ""
    SHORT_DESCRIPTION = ""
    TAGS: tuple[str, ...] = ()

    def name(self) -> str:
        return self.ALGORITHM_ID

    def displayName(self) -> str:  # noqa: N802
        return tr(self.DISPLAY_NAME)

    def shortDescription(self) -> str:  # noqa: N802
        return tr(self.SHORT_DESCRIPTION)

    def tags(self) -> list[str]:
        return [tr(t) for t in self.TAGS]

    def icon(self) -> QIcon:
        return plugin_icon()

    def svgIconPath(self) -> str:  # noqa: N802
        """The plugin's icon, also in the Graphical Modeler (which draws an algorithm's SVG, else a gear)."""
        return ICON_PATH

    def createInstance(self) -> PluginAlgorithm:  # noqa: N802
        return type(self)()

    def optional_raster(
        self, parameters: dict[str, Any], key: str, context: QgsProcessingContext
    ) -> QgsRasterLayer | None:
        """The raster layer of parameter ``key``; None for an optional one left empty. A value that is no raster
        is an error naming the parameter."""
        layer = self.parameterAsRasterLayer(parameters, key, context)
        if layer is None:
            if (
                parameters.get(key) in (None, "")
                and self.parameterDefinition(key).flags() & QgsProcessingParameterDefinition.FlagOptional
            ):
                return None
            raise processing_error(self.invalidRasterError(parameters, key))
        return layer

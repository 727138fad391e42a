"""The QGIS plugin object: registers the Processing provider (desktop QGIS and qgis_process)."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication

from .qgis_layer.provider import McUncertaintyProvider

__all__ = ["McUncertaintyPlugin"]


class McUncertaintyPlugin:
    """Plugin with ``hasProcessingProvider=yes``.

    qgis_process calls only :meth:`initProcessing` (``iface`` is None there); desktop QGIS calls
    :meth:`initGui`, which registers the provider too.
    """

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: McUncertaintyProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802
        """Register the provider once."""
        if self.provider is None:
            self.provider = McUncertaintyProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        """Desktop start-up: the provider is the whole user interface."""
        self.initProcessing()

    def unload(self) -> None:
        """Remove the provider."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

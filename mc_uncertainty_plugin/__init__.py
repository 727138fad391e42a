"""MC Uncertainty: a QGIS Processing plugin for segmentation with uncertainty maps (MC Dropout, TTA).

``mc_uncertainty_plugin.core`` is the pure-Python engine (numpy, torch, GDAL; no QGIS). This module imports
neither torch nor the core, so QGIS loads the plugin even where torch is missing.
"""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:  # noqa: N802
    """QGIS entry point: return the plugin object (``iface`` is None under qgis_process)."""
    from .plugin import McUncertaintyPlugin

    return McUncertaintyPlugin(iface)

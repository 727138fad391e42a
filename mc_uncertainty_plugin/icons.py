"""The plugin icon (``mc_uncertainty_plugin/icon.svg``), shared by the provider and its algorithms."""

from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtGui import QIcon

__all__ = ["ICON_PATH", "plugin_icon"]

ICON_PATH = str(Path(__file__).resolve().parent / "icon.svg")


def plugin_icon() -> QIcon:
    """A QIcon of ``icon.svg``."""
    return QIcon(ICON_PATH)

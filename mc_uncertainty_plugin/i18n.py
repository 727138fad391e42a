"""Translatable user-facing text (Qt's translation context ``McUncertainty``).

Pass a literal to :func:`tr` and format afterwards (``tr("… {} …").format(x)``): an f-string is formatted
before the lookup and never matches a translation.
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QCoreApplication

__all__ = ["tr"]


def tr(text: str) -> str:
    """Translate ``text`` in the plugin's context."""
    return QCoreApplication.translate("McUncertainty", text)

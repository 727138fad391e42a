"""What the plugin's rasters hold, in one place: nodata values, the default class palette, colour parsing.

- class rasters: uint8 class index, :data:`CLASS_NODATA` (255) where there is no prediction, so at most 255
  classes;
- uncertainty and confidence rasters: float32, :data:`UNCERTAINTY_NODATA` (-1, below every valid value); for the
  measures in :data:`LOW_MEANS_UNSURE` (the margin) a low value means unsure, for all others a high one;
- probability rasters: one band per class, float32 p̄ (nodata -1), or uint8 ``round(254 p̄)``
  (:data:`PROBABILITY_SCALE_UINT8`) with 255 = nodata as in the class raster;
- classes without configured colours: :data:`DEFAULT_CLASS_COLORS` (matplotlib's colour-blind-friendly tab10),
  then evenly spread hues (:func:`default_class_color`).

Pure Python (no numpy, torch or QGIS): the QGIS styling and the tools read the same values.
"""

from __future__ import annotations

import colorsys

__all__ = [
    "CLASS_NODATA",
    "MAX_CLASSES",
    "UNCERTAINTY_NODATA",
    "LOW_MEANS_UNSURE",
    "PROBABILITY_SCALE_UINT8",
    "DEFAULT_CLASS_COLORS",
    "default_class_color",
    "parse_colour",
]

CLASS_NODATA = 255
MAX_CLASSES = 255  # class indices 0 .. 254
UNCERTAINTY_NODATA = -1.0
LOW_MEANS_UNSURE = frozenset({"margin"})  # uncertainty modes where low = unsure (styled with a reversed ramp)
# uint8 probabilities: value = round(254 * p̄), so 0..254 hold p̄ and 255 stays nodata, as in the class raster
# (with 255 * p̄, a pixel sure of its class would read as nodata in that class's band)
PROBABILITY_SCALE_UINT8 = 254
DEFAULT_CLASS_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def default_class_color(index: int) -> str:
    """``#rrggbb`` of class ``index`` when the config gives none: tab10, then golden-ratio hue steps (neighbours
    stay apart)."""
    if index < len(DEFAULT_CLASS_COLORS):
        return DEFAULT_CLASS_COLORS[index]
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.9)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def parse_colour(value: object, parameter: str) -> tuple[int, int, int, int]:
    """``(r, g, b, a)`` of ``"#rrggbb"``, ``"#rrggbbaa"`` or ``[r, g, b(, a)]``.

    Raises:
        ValueError: naming ``parameter`` (e.g. ``class_colors[2]``) and the value.
    """
    if isinstance(value, (list, tuple)) and len(value) in (3, 4):
        rgba = [int(v) for v in value] + [255] * (4 - len(value))
        return rgba[0], rgba[1], rgba[2], rgba[3]
    text = str(value).strip().lstrip("#")
    if len(text) in (6, 8):
        try:
            parts = [int(text[i : i + 2], 16) for i in range(0, len(text), 2)]
            return parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else 255
        except ValueError:
            pass
    raise ValueError(f'{parameter} must be "#rrggbb" or [r, g, b], got {value!r}.')

"""Renderers for the outputs, read from the files themselves.

- Uncertainty raster: singleband pseudocolor, viridis, from 0 to the measure's maximum, ``MC_UNCERTAINTY_MAX``
  written by the core (ln C for the entropies and mutual information, 1 − 1/C for the variation ratio, 1 for the
  normalised entropy and the margin), so maps stay comparable; or, on request, stretched to the data's 2–98 %
  range (:func:`uncertainty_stretch`), for maps whose values all sit near 0 (a TTA map is often nearly black on
  0 .. ln C). The margin, where *low* means unsure, gets the ramp reversed: unsure pixels are always yellow.
- Class raster (and the confident class raster): paletted, one entry per class 0 .. C-1 with the config's
  ``class_names`` / ``class_colors`` (the core writes them as GDAL category names and colour table), a fixed
  qualitative palette otherwise; the nodata value 255 is no class and stays transparent.
- Class probability raster: singleband gray on band 1 (the first class), black = 0 .. white = 1 (uint8: 254);
  its bands are named after the classes, to pick another in the layer's properties.

Nothing here touches a project: these functions take a layer and set its renderer. They are used by the
Processing post-processors (:mod:`.result_layers`), the task (:mod:`.task`) and ``resources/tools/make_styles.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsRasterRange,
    QgsRasterShader,
    QgsSingleBandGrayRenderer,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)
from qgis.PyQt.QtGui import QColor

from ..core.io.conventions import (
    CLASS_NODATA,
    DEFAULT_CLASS_COLORS,
    LOW_MEANS_UNSURE,
    PROBABILITY_SCALE_UINT8,
    default_class_color,
)

__all__ = [
    "CLASS_NODATA",
    "DEFAULT_CLASS_COLORS",
    "ClassLegend",
    "viridis_ramp",
    "scale_maximum",
    "uncertainty_mode",
    "uncertainty_stretch",
    "read_class_legend",
    "default_class_color",
    "style_uncertainty_layer",
    "style_class_layer",
    "style_probability_layer",
    "low_means_unsure",
]

_VIRIDIS_STOPS = (
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)
_MAXIMUM_KEY = "MC_UNCERTAINTY_MAX"  # written by the core: ln C (1 - 1/C for variation_ratio)
_CLASS_COUNT_KEY = "MC_NUM_CLASSES"
_MODE_KEY = "MC_UNCERTAINTY_MODE"


@dataclass(frozen=True)
class ClassLegend:
    """What a class raster says about its classes.

    Attributes:
        names: one label per class index 0 .. C-1 (the config's class_names, else ``"class i"``).
        colors: one ``#rrggbb`` per class (the file's colour table, else :data:`DEFAULT_CLASS_COLORS`).
        from_config: True when names or colours came from the file (i.e. from the model config).
    """

    names: tuple[str, ...]
    colors: tuple[str, ...]
    from_config: bool


def viridis_ramp() -> QgsGradientColorRamp:
    """QGIS's "Viridis" ramp, or an equivalent 10-stop gradient when the style database lacks it."""
    ramp = QgsStyle.defaultStyle().colorRamp("Viridis")
    if isinstance(ramp, QgsGradientColorRamp):
        return ramp
    colors = [QColor(c) for c in _VIRIDIS_STOPS]
    stops = [QgsGradientStop(i / (len(colors) - 1), c) for i, c in enumerate(colors[1:-1], start=1)]
    return QgsGradientColorRamp(colors[0], colors[-1], False, stops)


def _metadata(path: str) -> dict[str, str]:
    dataset = gdal.Open(path)
    return (dataset.GetMetadata() or {}) if dataset is not None else {}


def scale_maximum(uncertainty_path: str, num_classes: int | None = None) -> float | None:
    """Top of an uncertainty raster's scale: its ``MC_UNCERTAINTY_MAX`` metadata, else ln C from its
    ``MC_NUM_CLASSES`` or from ``num_classes``; None when unknown."""
    metadata = _metadata(uncertainty_path)
    try:
        return float(metadata[_MAXIMUM_KEY])
    except (KeyError, ValueError):
        pass
    try:
        num_classes = int(metadata[_CLASS_COUNT_KEY])
    except (KeyError, ValueError):
        pass
    if not num_classes or num_classes < 2:
        return None
    return math.log(num_classes)


def uncertainty_stretch(layer: QgsRasterLayer, low: float = 0.02, high: float = 0.98) -> tuple[float, float]:
    """``(maximum, minimum)`` of the colour scale stretched to band 1's ``low`` .. ``high`` cumulative range
    (nodata excluded; estimated on a sample of 250 000 pixels)."""
    lower, upper = layer.dataProvider().cumulativeCut(1, low, high, layer.extent(), 250_000)
    if not (math.isfinite(lower) and math.isfinite(upper)) or upper <= lower:
        stats = layer.dataProvider().bandStatistics(1)
        lower, upper = stats.minimumValue, stats.maximumValue
    if not upper > lower:
        upper = lower + 1e-6
    return float(upper), float(lower)


def uncertainty_mode(uncertainty_path: str) -> str | None:
    """The measure an uncertainty raster holds (``MC_UNCERTAINTY_MODE``: entropy, mutual_information), or None."""
    return _metadata(uncertainty_path).get(_MODE_KEY) or None


def low_means_unsure(mode: str | None) -> bool:
    """Whether a low value of the measure means unsure (the margin): its colour ramp is reversed."""
    return mode in LOW_MEANS_UNSURE


def read_class_legend(class_path: str, num_classes: int | None = None) -> ClassLegend:
    """Names and colours of the classes of a class raster written by the core.

    Args:
        class_path: the class GeoTIFF (its ``MC_NUM_CLASSES`` metadata gives C).
        num_classes: C when the file does not say it; else the largest of the file's category names, colour
            table entries (not all 256 a GeoTIFF palette holds: only those below 255) and 1.
    """
    dataset = gdal.Open(class_path)
    if dataset is None:
        raise ValueError(f"class raster cannot be opened: {class_path!r}.")
    # Metadata first: GDAL 3.6's GTiff driver loads the .aux.xml (where category names live) lazily, on a
    # metadata read, and GetCategoryNames() alone returns None.
    metadata = dataset.GetMetadata() or {}
    band = dataset.GetRasterBand(1)
    names = [str(n) for n in (band.GetCategoryNames() or [])]
    table = band.GetColorTable()
    try:
        count = int(metadata[_CLASS_COUNT_KEY])
    except (KeyError, ValueError):
        count = num_classes or len(names) or 1
    count = max(1, min(count, CLASS_NODATA))
    colors = []
    for index in range(count):
        if table is not None and index < table.GetCount():
            r, g, b, _alpha = table.GetColorEntry(index)
            colors.append(f"#{r:02x}{g:02x}{b:02x}")
        else:
            colors.append(default_class_color(index))
    labels = [names[i] if i < len(names) and names[i] else f"class {i}" for i in range(count)]
    return ClassLegend(tuple(labels), tuple(colors), bool(names) or table is not None)


def style_uncertainty_layer(
    layer: QgsRasterLayer, maximum: float | None, minimum: float = 0.0, reverse: bool = False
) -> None:
    """Render band 1 of ``layer`` as singleband pseudocolor, viridis, from ``minimum`` to ``maximum``.

    Args:
        layer: the uncertainty raster.
        maximum: top of the colour scale (ln C for entropy); None takes the band's maximum.
        minimum: bottom of the colour scale (0, or the data's 2 % value when stretched).
        reverse: viridis reversed (yellow at ``minimum``), for a measure where low means unsure (the margin);
            the legend then marks the ends "unsure" and "sure".
    """
    if maximum is None or maximum <= minimum:
        stats = layer.dataProvider().bandStatistics(1)
        maximum = stats.maximumValue if stats.maximumValue > minimum else minimum + 1.0
    ramp = viridis_ramp()
    if reverse:
        ramp.invert()
    steps = 10
    values = [minimum + (maximum - minimum) * i / (steps - 1) for i in range(steps)]
    labels = [f"{v:.3g}" for v in values]
    if reverse:
        labels[0], labels[-1] = f"{labels[0]} (unsure)", f"{labels[-1]} (sure)"
    items = [
        QgsColorRampShader.ColorRampItem(v, ramp.color(i / (steps - 1)), label)
        for i, (v, label) in enumerate(zip(values, labels))
    ]
    color_ramp_shader = QgsColorRampShader(minimum, maximum, ramp.clone(), QgsColorRampShader.Interpolated)
    color_ramp_shader.setColorRampItemList(items)
    shader = QgsRasterShader(minimum, maximum)
    shader.setRasterShaderFunction(color_ramp_shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(minimum)
    renderer.setClassificationMax(maximum)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_class_layer(layer: QgsRasterLayer, legend: ClassLegend) -> None:
    """Render band 1 of ``layer`` as a paletted raster: class i in ``legend.colors[i]``, labelled
    ``legend.names[i]``; the nodata value 255 has no palette entry and is drawn transparent."""
    provider = layer.dataProvider()
    if provider.sourceHasNoDataValue(1):
        provider.setUseSourceNoDataValue(1, True)
    else:  # a class raster copied without its nodata: 255 is still no class
        provider.setUserNoDataValue(1, [QgsRasterRange(CLASS_NODATA, CLASS_NODATA)])
    classes = [
        QgsPalettedRasterRenderer.Class(index, QColor(color), name)
        for index, (name, color) in enumerate(zip(legend.names, legend.colors))
    ]
    renderer = QgsPalettedRasterRenderer(provider, 1, classes)
    renderer.setNodataColor(QColor(0, 0, 0, 0))
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_probability_layer(layer: QgsRasterLayer) -> None:
    """Render band 1 (the first class) of a class probability raster in gray: black = 0, white = 1 (uint8: 254,
    the scaled 1); nodata stays transparent."""
    top = float(PROBABILITY_SCALE_UINT8) if layer.dataProvider().dataType(1) == Qgis.Byte else 1.0
    renderer = QgsSingleBandGrayRenderer(layer.dataProvider(), 1)
    enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(1))
    enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    enhancement.setMinimumValue(0.0)
    enhancement.setMaximumValue(top)
    renderer.setContrastEnhancement(enhancement)
    layer.setRenderer(renderer)
    layer.triggerRepaint()

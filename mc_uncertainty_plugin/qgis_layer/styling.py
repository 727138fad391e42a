"""Style the uncertainty raster when the Toolbox loads it: singleband pseudocolor, viridis, 0 .. ln C."""

from __future__ import annotations

import math

from osgeo import gdal
from qgis.core import (
    QgsColorRampShader,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)
from qgis.PyQt.QtGui import QColor

__all__ = ["viridis_ramp", "uncertainty_maximum", "style_uncertainty_layer", "UncertaintyLayerStyler"]

_VIRIDIS_STOPS = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725")
_MAXIMUM_KEY = "MC_UNCERTAINTY_MAX"  # written by the core: ln C
_CLASS_COUNT_KEY = "MC_NUM_CLASSES"


def viridis_ramp() -> QgsGradientColorRamp:
    """QGIS's "Viridis" ramp, or an equivalent 10-stop gradient when the style database lacks it."""
    ramp = QgsStyle.defaultStyle().colorRamp("Viridis")
    if isinstance(ramp, QgsGradientColorRamp):
        return ramp
    colors = [QColor(c) for c in _VIRIDIS_STOPS]
    stops = [QgsGradientStop(i / (len(colors) - 1), c) for i, c in enumerate(colors[1:-1], start=1)]
    return QgsGradientColorRamp(colors[0], colors[-1], False, stops)


def uncertainty_maximum(uncertainty_path: str, num_classes: int | None = None) -> float | None:
    """ln C for an uncertainty raster: from its metadata (``MC_UNCERTAINTY_MAX``, ``MC_NUM_CLASSES``), else from
    ``num_classes``; None when unknown."""
    dataset = gdal.Open(uncertainty_path)
    metadata = (dataset.GetMetadata() or {}) if dataset is not None else {}
    dataset = None
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


def style_uncertainty_layer(layer: QgsRasterLayer, maximum: float | None) -> None:
    """Render band 1 of ``layer`` as singleband pseudocolor, viridis, from 0 to ``maximum``.

    Args:
        layer: the uncertainty raster.
        maximum: top of the colour scale (ln C); None takes the band's maximum.
    """
    if maximum is None or maximum <= 0:
        stats = layer.dataProvider().bandStatistics(1)
        maximum = stats.maximumValue if stats.maximumValue > 0 else 1.0
    ramp = viridis_ramp()
    steps = 10
    items = [
        QgsColorRampShader.ColorRampItem(maximum * i / (steps - 1), ramp.color(i / (steps - 1)), f"{maximum * i / (steps - 1):.3g}")
        for i in range(steps)
    ]
    color_ramp_shader = QgsColorRampShader(0.0, maximum, ramp.clone(), QgsColorRampShader.Interpolated)
    color_ramp_shader.setColorRampItemList(items)
    shader = QgsRasterShader(0.0, maximum)
    shader.setRasterShaderFunction(color_ramp_shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(maximum)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


class UncertaintyLayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Post-processor that styles the loaded uncertainty layer (runs in the main thread).

    One instance per output path is kept in a class-level dict: Processing holds only a C++ pointer to it.
    """

    _instances: dict[str, UncertaintyLayerStyler] = {}

    def __init__(self, maximum: float | None) -> None:
        super().__init__()
        self.maximum = maximum

    @classmethod
    def create(cls, layer_id: str, maximum: float | None) -> UncertaintyLayerStyler:
        """The styler kept alive for ``layer_id`` (the output path)."""
        cls._instances[layer_id] = cls(maximum)
        return cls._instances[layer_id]

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> None:  # noqa: N802
        """Style ``layer`` when it is a raster layer."""
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            style_uncertainty_layer(layer, self.maximum)

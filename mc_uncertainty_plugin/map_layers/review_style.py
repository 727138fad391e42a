"""How the regions-to-review layer looks in QGIS, and the post-processor that applies it when Processing loads it.

Outlines only (the uncertainty underneath stays visible), coloured by rank from red (rank 1) through pink to
white (the last rank) in at most five equal rank intervals, over a wider dark halo so they read on any image;
each patch is labelled with its rank. The attribute
table opens sorted by rank, so a labeller can walk the patches in order (select a row, *Zoom to selection*).
"""

from __future__ import annotations

from qgis.core import (
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGradientStop,
    QgsGraduatedSymbolRenderer,
    QgsMapLayer,
    QgsPalLayerSettings,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRendererRange,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor, QFont

from ..core.review.vector import RANK_COLORS

__all__ = ["RANK_FIELD", "MAX_RANK_CLASSES", "rank_color_ramp", "style_review_layer", "ReviewLayerPostProcessor"]

RANK_FIELD = "rank"
MAX_RANK_CLASSES = 5
OUTLINE_WIDTH_MM = 0.8
HALO_WIDTH_MM = 1.4


def rank_color_ramp() -> QgsGradientColorRamp:
    """Red (rank 1) -> pink -> white (last rank): visible on viridis, from its dark purple to its yellow."""
    first, *middle, last = (QColor(c) for c in RANK_COLORS)
    stops = [QgsGradientStop((i + 1) / (len(middle) + 1), color) for i, color in enumerate(middle)]
    return QgsGradientColorRamp(first, last, False, stops)


def _rank_ranges(last_rank: int) -> list[tuple[int, int]]:
    """``[(1, 4), (5, 8), ...]``: at most :data:`MAX_RANK_CLASSES` intervals of whole ranks covering 1..last."""
    classes = max(1, min(MAX_RANK_CLASSES, last_rank))
    edges = [1 + round(i * last_rank / classes) for i in range(classes + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(classes)]


def _outline(color: QColor) -> QgsFillSymbol:
    """A fill symbol without fill: a dark halo, then the coloured outline on top."""

    def layer(stroke: str, width: float) -> dict[str, str]:
        return {
            "style": "no",
            "outline_style": "solid",
            "outline_color": stroke,
            "outline_width": str(width),
            "outline_width_unit": "MM",
        }

    symbol = QgsFillSymbol.createSimple(layer("#000000", HALO_WIDTH_MM))
    symbol.appendSymbolLayer(QgsFillSymbol.createSimple(layer(color.name(), OUTLINE_WIDTH_MM)).takeSymbolLayer(0))
    return symbol


def _rank_labels() -> QgsVectorLayerSimpleLabeling:
    text = QgsTextFormat()
    font = QFont()
    font.setBold(True)
    text.setFont(font)
    text.setSize(11)
    text.setColor(QColor("#ffffff"))
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(1.0)
    buffer.setColor(QColor("#000000"))
    text.setBuffer(buffer)
    settings = QgsPalLayerSettings()
    settings.fieldName = RANK_FIELD
    settings.placement = QgsPalLayerSettings.OverPoint
    settings.setFormat(text)
    return QgsVectorLayerSimpleLabeling(settings)


def style_review_layer(layer: QgsVectorLayer) -> None:
    """Outline colour graduated by rank, rank labels, attribute table sorted by rank (call on the main thread)."""
    index = layer.fields().indexOf(RANK_FIELD)
    if index < 0:
        raise ValueError(f"layer {layer.name()!r} has no {RANK_FIELD!r} field: not a regions-to-review layer.")
    last = layer.maximumValue(index)
    last_rank = int(last) if last not in (None, "") else 1
    ramp = rank_color_ramp()
    ranges = _rank_ranges(last_rank)
    renderer = QgsGraduatedSymbolRenderer(RANK_FIELD)
    for i, (low, high) in enumerate(ranges):
        color = ramp.color(i / (len(ranges) - 1) if len(ranges) > 1 else 0.0)
        label = f"rank {low}" if low == high else f"rank {low}–{high}"
        renderer.addClassRange(QgsRendererRange(low - 0.5, high + 0.5, _outline(color), label))
    layer.setRenderer(renderer)
    layer.setLabeling(_rank_labels())
    layer.setLabelsEnabled(True)
    table = layer.attributeTableConfig()
    table.setSortExpression(f'"{RANK_FIELD}"')
    layer.setAttributeTableConfig(table)
    layer.setDisplayExpression(f"'rank ' || \"{RANK_FIELD}\"")
    layer.triggerRepaint()


class ReviewLayerPostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles and names the regions-to-review layer when Processing loads it (``postProcessLayer`` runs on the
    main thread).

    One instance per output (layer id = output path) is kept in a class-level dict: Processing holds only a C++
    pointer to it, and a Python object nobody references would be collected before the layer is loaded.
    """

    _instances: dict[str, ReviewLayerPostProcessor] = {}

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    @classmethod
    def attach(cls, context: QgsProcessingContext, layer_id: str, name: str) -> bool:
        """Attach a post-processor to output ``layer_id`` if it will be loaded on completion; True when attached."""
        if not context.willLoadLayerOnCompletion(layer_id):
            return False
        processor = cls(name)
        cls._instances[layer_id] = processor
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(processor)
        return True

    def postProcessLayer(
        self,
        layer: QgsMapLayer,
        context: QgsProcessingContext,  # noqa: N802
        feedback: QgsProcessingFeedback,
    ) -> None:
        if isinstance(layer, QgsVectorLayer) and layer.isValid():
            style_review_layer(layer)
            layer.setName(self.name)

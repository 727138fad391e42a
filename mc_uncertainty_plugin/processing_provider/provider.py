"""The Processing provider ``mc_uncertainty`` ("MC Uncertainty"); lists its algorithms explicitly."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..icons import ICON_PATH, plugin_icon
from .evaluate_algorithm import EvaluateAlgorithm
from .mc_dropout_algorithm import McDropoutAlgorithm
from .review_regions_algorithm import ReviewRegionsAlgorithm
from .tta_algorithm import TtaAlgorithm

__all__ = ["McUncertaintyProvider"]


class McUncertaintyProvider(QgsProcessingProvider):
    """Segmentation-with-uncertainty algorithms. Loading it never imports torch."""

    def id(self) -> str:
        return "mc_uncertainty"

    def name(self) -> str:
        return "MC Uncertainty"

    def longName(self) -> str:  # noqa: N802
        return "MC Uncertainty: segmentation with uncertainty maps (MC Dropout, TTA)"

    def icon(self) -> QIcon:
        return plugin_icon()

    def svgIconPath(self) -> str:  # noqa: N802
        return ICON_PATH

    def loadAlgorithms(self) -> None:  # noqa: N802
        self.addAlgorithm(McDropoutAlgorithm())
        self.addAlgorithm(TtaAlgorithm())
        self.addAlgorithm(EvaluateAlgorithm())
        self.addAlgorithm(ReviewRegionsAlgorithm())

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802
        # GeoTIFF; a VRT (a mosaic of block files) with a SCHEDULER only, which the core checks
        return ["tif", "vrt"]

    def defaultRasterFileExtension(self) -> str:  # noqa: N802
        return "tif"

    def supportedOutputVectorLayerExtensions(self) -> list[str]:  # noqa: N802
        # review_regions writes single-file formats itself (Shapefile would cut its field names to 10 characters).
        return ["gpkg", "geojson", "fgb"]

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802, N803
        return "gpkg"

"""Processing algorithm ``mc_uncertainty:review_regions``: the most uncertain square patches of an uncertainty
raster, ranked and not overlapping, as a polygon layer to step through (labelling, quality control).

Thin: reads the parameters, makes one core call
(:func:`mc_uncertainty_plugin.core.review.vector.review_regions_to_file`) and returns the written file; the core's
errors become ``QgsProcessingException`` with the same message. When the output is loaded (Toolbox,
``runAndLoadResults``) a :class:`~.review_layer_style.ReviewLayerPostProcessor` styles it.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from ..i18n import tr
from ..map_layers.review_style import ReviewLayerPostProcessor
from .parameters import with_help
from .plugin_algorithm import PluginAlgorithm

__all__ = ["ReviewRegionsAlgorithm"]

UNCERTAINTY = "UNCERTAINTY"
CLASSES = "CLASSES"
PATCH_SIZE = "PATCH_SIZE"
COUNT = "COUNT"
OUTPUT = "OUTPUT"

# One paragraph per line: the Toolbox shows each line as a paragraph, qgis_process help prints it as is.
_HELP = "\n".join(
    (
        "Finds where a segmentation most needs a human look: the COUNT square patches of PATCH_SIZE x PATCH_SIZE "
        "pixels with the highest mean uncertainty, no two overlapping, written as a polygon layer (GeoPackage by "
        "default) ranked from 1 = most uncertain. Step through them to pick what to label next (active learning), "
        "to check the predictions where the model is unsure, or to find areas unlike the training data.",
        "Which uncertainty? For choosing what to label, and for out-of-distribution areas, use mutual information "
        "(run the segmentation with UNCERTAINTY_MODE = mutual_information): it measures what the model does not "
        "know (the T samples disagree), which new labels can fix. Entropy also counts ambiguity inherent to the "
        "data (class boundaries, mixed pixels), which more labels do not remove; it suits quality control.",
        "How patches are placed: candidate patches start every PATCH_SIZE / 4 pixels (plus one ending at the "
        "right and bottom edges), so every patch is a whole square inside the raster (a raster smaller than "
        "PATCH_SIZE gives one patch clipped to it). They are ranked by the mean uncertainty of their valid pixels "
        "(ties: upper, then left first); each is kept unless it overlaps a better one already kept. Patches with "
        "less than half their pixels valid (nodata, NaN) are skipped.",
        "Fields: rank, mean_uncertainty, max_uncertainty, valid_fraction (valid pixels / patch pixels) and, with a "
        "class raster, dominant_class (its most frequent valid class in the patch). Polygons are in the raster's CRS.",
        "The raster is read in blocks, so memory stays small on any raster. In the Toolbox the layer is drawn as "
        "outlines coloured by rank with the rank as label; its attribute table is sorted by rank.",
        "Command line: qgis_process run mc_uncertainty:review_regions -- UNCERTAINTY=scene_mc_uncertainty.tif "
        "CLASSES=scene_classes.tif PATCH_SIZE=256 COUNT=20 OUTPUT=review.gpkg",
    )
)


class ReviewRegionsAlgorithm(PluginAlgorithm):
    """The most uncertain non-overlapping patches of an uncertainty raster, ranked, as polygons."""

    ALGORITHM_ID = "review_regions"
    DISPLAY_NAME = "Regions to review (most uncertain patches)"
    SHORT_DESCRIPTION = "The most uncertain square patches, ranked and not overlapping: what to label or check first."
    TAGS = (
        "uncertainty",
        "review",
        "active learning",
        "labelling",
        "patches",
        "mutual information",
        "out-of-distribution",
        "quality control",
    )

    def shortHelpString(self) -> str:  # noqa: N802
        return tr(_HELP)

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        add = self.addParameter
        add(
            with_help(
                QgsProcessingParameterRasterLayer(UNCERTAINTY, tr("Uncertainty raster")),
                "Per-pixel uncertainty, higher = less sure: OUTPUT_UNCERTAINTY of MC Dropout or TTA segmentation (band "
                "1). Mutual information is recommended for choosing what to label. Its nodata and NaN pixels are left "
                "out.",
            )
        )
        add(
            with_help(
                QgsProcessingParameterRasterLayer(CLASSES, tr("Class raster (for the dominant class)"), optional=True),
                "Optional: the class raster on the same grid (OUTPUT of the segmentation; 255 and its nodata = no "
                "class). Adds the field dominant_class, the most frequent class in each patch.",
            )
        )
        add(
            with_help(
                QgsProcessingParameterNumber(
                    PATCH_SIZE,
                    tr("Patch size (pixels)"),
                    type=QgsProcessingParameterNumber.Integer,
                    defaultValue=256,
                    minValue=1,
                ),
                "Side of the square patches in pixels, e.g. the tile size you label or train on.",
            )
        )
        add(
            with_help(
                QgsProcessingParameterNumber(
                    COUNT,
                    tr("Number of patches"),
                    type=QgsProcessingParameterNumber.Integer,
                    defaultValue=20,
                    minValue=1,
                ),
                "How many patches to return at most (fewer when the raster has no room for more non-overlapping "
                "patches with enough valid pixels).",
            )
        )
        output = QgsProcessingParameterVectorDestination(
            OUTPUT, tr("Regions to review"), QgsProcessing.TypeVectorPolygon
        )
        output.setSupportsNonFileBasedOutput(False)  # the core writes the file itself
        add(
            with_help(
                output,
                "Polygon layer of the patches, ranked (rank 1 = most uncertain): GeoPackage (.gpkg, the default), "
                "GeoJSON (.geojson) or FlatGeobuf (.fgb). Must not be an input file.",
            )
        )

    def _raster_path(
        self, parameters: dict[str, Any], key: str, context: QgsProcessingContext
    ) -> tuple[str, str] | None:
        """``(path, layer name)`` of a raster parameter; None for an optional one left empty."""
        layer = self.optional_raster(parameters, key, context)
        return None if layer is None else (layer.source(), layer.name())

    def processAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.errors import McUncertaintyError
        from ..core.review.regions import ReviewConfig
        from ..core.review.vector import review_regions_to_file

        uncertainty = self._raster_path(parameters, UNCERTAINTY, context)
        classes = self._raster_path(parameters, CLASSES, context)
        output = self.parameterAsOutputLayer(parameters, OUTPUT, context)
        try:
            config = ReviewConfig(
                uncertainty_path=uncertainty[0],
                classes_path=classes[0] if classes else None,
                patch_size=self.parameterAsInt(parameters, PATCH_SIZE, context),
                count=self.parameterAsInt(parameters, COUNT, context),
            )
            result, written = review_regions_to_file(
                config, output, progress=feedback.setProgress, is_cancelled=feedback.isCanceled
            )
        except McUncertaintyError as error:
            raise QgsProcessingException(str(error)) from None
        feedback.pushInfo(
            f"{len(result.patches)} patches of {config.patch_size} px kept out of {result.eligible:,} "
            f"placements with enough valid pixels ({result.placements:,} in all, stride {config.stride} px)."
        )
        for patch in result.patches[:5]:
            feedback.pushInfo(
                f"rank {patch.rank}: pixels {patch.col},{patch.row}, mean {patch.mean_uncertainty:.4f}, "
                f"max {patch.max_uncertainty:.4f}, valid {patch.valid_fraction:.0%}"
            )
        if not result.patches:
            feedback.pushWarning("No patch has at least half of its pixels valid: the layer is empty.")
        ReviewLayerPostProcessor.attach(context, output, f"{uncertainty[1]} — regions to review")
        return {OUTPUT: written}

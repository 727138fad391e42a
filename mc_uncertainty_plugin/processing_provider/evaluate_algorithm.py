"""Processing algorithm ``mc_uncertainty:evaluate``: can the uncertainty be trusted? Metrics and plots against
reference labels, written as an HTML report, a PNG summary and a JSON file.

Thin: reads the parameters, makes one core call (:func:`mc_uncertainty_plugin.core.evaluate_to_files`) and returns
the paths and the key numbers; the core's errors become ``QgsProcessingException`` with the same message and its
warnings (a resampled reference) go to the log. The parameters are defined in groups, one function each, in the
order the dialog shows them.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from ..i18n import tr
from .parameters import compose_help, with_help
from .plugin_algorithm import PluginAlgorithm
from .run_guards import cancel_on_interrupt, processing_error

if TYPE_CHECKING:
    from ..core import EvaluationConfig

__all__ = ["EvaluateAlgorithm"]

CLASSES = "CLASSES"
UNCERTAINTY = "UNCERTAINTY"
CONFIDENCE = "CONFIDENCE"
REFERENCE = "REFERENCE"
CLASS_NAMES = "CLASS_NAMES"
PAVPU_PATCH_SIZE = "PAVPU_PATCH_SIZE"
OUTPUT_HTML = "OUTPUT_HTML"
OUTPUT_PNG = "OUTPUT_PNG"
OUTPUT_JSON = "OUTPUT_JSON"
# Numeric outputs for the Modeler: Processing key -> (description, attribute of the EvaluationResult)
_NUMBER_OUTPUTS = {
    "ACCURACY": ("Accuracy", "accuracy"),
    "MEAN_IOU": ("Mean IoU", "mean_iou"),
    "ECE": ("Expected calibration error", "ece"),
    "AUROC": ("AUROC of error detection", "auroc"),
    "AUPR": ("AUPR of error detection", "aupr"),
    "AURC": ("Area under the risk–coverage curve", "aurc"),
    "AUSE": ("Area under the sparsification error", "ause"),
}

# One paragraph per line: the Toolbox shows each line as a paragraph, qgis_process help prints it as is.
_HELP = "\n".join(
    (
        "Tells whether an uncertainty map can be trusted before you act on it: compares a class raster and its "
        "uncertainty raster (e.g. the outputs of MC Dropout or TTA segmentation) with reference labels, and writes an "
        "HTML report with plots, a PNG summary figure and a JSON file of all numbers and curves.",
        "Pixels count where the class (255 = nodata), the uncertainty (its nodata, NaN) and the reference (its "
        "nodata, 255) are all valid. A reference on another grid is resampled (nearest neighbour) onto the class "
        "raster's grid, with a warning. Every pixel counts; rasters are read by blocks, so memory stays small.",
        "• Accuracy: share of correct pixels. IoU per class: TP / (TP + FP + FN); mean IoU averages the classes.",
        '• ECE (needs the "Confidence raster" max p̄, e.g. the confidence raster of the segmentation): expected '
        "calibration error "
        "over 15 confidence bins, Σ (n_b/N)|accuracy_b − confidence_b|; 0 = calibrated. The reliability diagram "
        "shows accuracy against confidence per bin.",
        "• AUROC: probability that a wrong pixel is more uncertain than a correct one (0.5 = useless, 1 = perfect). "
        "AUPR: average precision of flagging the most uncertain pixels as errors (a random score gets the error rate).",
        "• Risk–coverage and AURC: keep the most certain share of pixels (coverage), measure their error rate "
        "(risk); AURC is the mean risk over all coverages, lower is better. Sparsification and AUSE: remove the most "
        "uncertain pixels first and compare with an oracle that removes the errors first; AUSE is the area between "
        "the two curves (0 = as good as the oracle).",
        '• PAvPU (Mukhoti & Gal 2018): in square patches ("PAvPU patch size"), accurate = accuracy ≥ 0.5, '
        "certain = mean uncertainty below a threshold; p(accurate | certain), p(uncertain | inaccurate) and "
        "PAvPU = (n_ac + n_iu) / all patches are plotted against the threshold.",
        "• Histograms of the uncertainty of correct and of wrong pixels: the less they overlap, the better.",
        "Uncertainties are binned on 2048 fine bins; values in one bin count as ties (the report states the bin "
        "width). Results: the three files and the numbers accuracy, mean IoU, ECE (empty without a confidence "
        "raster), AUROC, AUPR, AURC and AUSE.",
    )
)
_COMMAND_LINE = (
    "Command line: qgis_process run mc_uncertainty:evaluate -- CLASSES=classes.tif "
    "UNCERTAINTY=classes_mc_uncertainty.tif REFERENCE=labels.tif OUTPUT_HTML=report.html OUTPUT_PNG=report.png "
    "OUTPUT_JSON=report.json (parameter keys: qgis_process help mc_uncertainty:evaluate)"
)


Definitions = list[QgsProcessingParameterDefinition]


def _input_rasters() -> Definitions:
    """The class raster, its uncertainty, the optional confidence and the reference labels."""
    return [
        with_help(
            QgsProcessingParameterRasterLayer(CLASSES, tr("Class raster")),
            "Predicted class index per pixel (uint8, 255 = nodata), e.g. the class raster of MC Dropout "
            "segmentation. Its grid is the grid of the evaluation.",
        ),
        with_help(
            QgsProcessingParameterRasterLayer(UNCERTAINTY, tr("Uncertainty raster")),
            "Per-pixel uncertainty on the grid of the class raster, higher = less sure (entropy, mutual "
            "information ...), e.g. the uncertainty raster of the segmentation. Its nodata and NaN pixels are "
            "left out.",
        ),
        with_help(
            QgsProcessingParameterRasterLayer(
                CONFIDENCE, tr("Confidence raster (max p̄, for calibration)"), optional=True
            ),
            "Optional: the confidence max_c p̄_c in [0, 1] on the grid of the class raster (the confidence "
            "raster of the segmentation). Gives the ECE and the reliability diagram; without it they are left "
            "out.",
        ),
        with_help(
            QgsProcessingParameterRasterLayer(REFERENCE, tr("Reference labels")),
            "True class index per pixel (same class numbering as the class raster; nodata and 255 = no label). "
            "On another grid it is resampled by nearest neighbour onto the class raster's grid (a warning says "
            "so); without georeferencing it must have the class raster's size.",
        ),
    ]


def _report_settings() -> Definitions:
    """The class names of the tables and the patch size of the PAvPU metrics."""
    return [
        with_help(
            QgsProcessingParameterString(CLASS_NAMES, tr("Class names (comma-separated)"), optional=True),
            'Names of classes 0, 1, 2 ... for the tables, e.g. "background,building,road". Empty: the class '
            "raster's category names (written from the model config's class_names), else \"class i\".",
        ),
        with_help(
            QgsProcessingParameterNumber(
                PAVPU_PATCH_SIZE,
                tr("PAvPU patch size (pixels)"),
                type=QgsProcessingParameterNumber.Integer,
                defaultValue=4,
                minValue=1,
            ),
            "Side of the square, non-overlapping patches of the PAvPU metrics (Mukhoti & Gal use 4 x 4). A patch "
            "is accurate when at least half its pixels are right, certain when its mean uncertainty is below the "
            "threshold.",
        ),
    ]


def _report_files() -> Definitions:
    """The HTML report, the summary figure and the JSON of every number and curve."""
    return [
        with_help(
            QgsProcessingParameterFileDestination(OUTPUT_HTML, tr("HTML report"), tr("HTML files (*.html)")),
            "Self-contained HTML report: tables of every number, how to read each metric, and the plots "
            "embedded as images.",
        ),
        with_help(
            QgsProcessingParameterFileDestination(OUTPUT_PNG, tr("Summary figure (PNG)"), tr("PNG files (*.png)")),
            "2 x 3 panels: reliability diagram, risk–coverage, sparsification vs oracle, ROC, PAvPU vs threshold, "
            "uncertainty histograms of correct and wrong pixels.",
        ),
        with_help(
            QgsProcessingParameterFileDestination(
                OUTPUT_JSON, tr("Numbers and curves (JSON)"), tr("JSON files (*.json)")
            ),
            "All numbers and curves as JSON, for scripts and comparisons between runs.",
        ),
    ]


class EvaluateAlgorithm(PluginAlgorithm):
    """Evaluation of an uncertainty map against reference labels: metrics, plots, HTML / PNG / JSON."""

    ALGORITHM_ID = "evaluate"
    DISPLAY_NAME = "Evaluate uncertainty against reference labels"
    SHORT_DESCRIPTION = (
        "Can the uncertainty be trusted? Accuracy, IoU, calibration, error detection and PAvPU, with plots."
    )
    TAGS = (
        "uncertainty",
        "evaluation",
        "calibration",
        "ece",
        "auroc",
        "aurc",
        "pavpu",
        "accuracy",
        "iou",
        "reliability",
    )

    def shortHelpString(self) -> str:  # noqa: N802
        return compose_help(self, _HELP, _COMMAND_LINE)

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        for definition in _input_rasters() + _report_settings() + _report_files():
            self.addParameter(definition)
        for key, (description, _attribute) in _NUMBER_OUTPUTS.items():
            self.addOutput(QgsProcessingOutputNumber(key, tr(description)))

    def _raster_path(self, parameters: dict[str, Any], key: str, context: QgsProcessingContext) -> str | None:
        layer = self.optional_raster(parameters, key, context)
        return None if layer is None else layer.source()

    def _evaluation_config(self, parameters: dict[str, Any], context: QgsProcessingContext) -> EvaluationConfig:
        """The core's configuration from the parameters (raises ``ParameterError`` on a bad value)."""
        from ..core import EvaluationConfig

        return EvaluationConfig(
            classes_path=self._raster_path(parameters, CLASSES, context),
            uncertainty_path=self._raster_path(parameters, UNCERTAINTY, context),
            reference_path=self._raster_path(parameters, REFERENCE, context),
            confidence_path=self._raster_path(parameters, CONFIDENCE, context),
            class_names=self.parameterAsString(parameters, CLASS_NAMES, context) or None,
            pavpu_patch_size=self.parameterAsInt(parameters, PAVPU_PATCH_SIZE, context),
        )

    def processAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core import McUncertaintyError, evaluate_to_files

        files = [self.parameterAsFileOutput(parameters, key, context) for key in (OUTPUT_HTML, OUTPUT_PNG, OUTPUT_JSON)]
        try:
            config = self._evaluation_config(parameters, context)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with cancel_on_interrupt(feedback):
                    result, written = evaluate_to_files(
                        config, *files, progress=feedback.setProgress, is_cancelled=feedback.isCanceled
                    )
        except McUncertaintyError as error:
            raise processing_error(str(error)) from None
        for warning in caught:
            if issubclass(warning.category, UserWarning):
                feedback.pushWarning(str(warning.message))
        numbers = {key: getattr(result, attribute) for key, (_description, attribute) in _NUMBER_OUTPUTS.items()}
        feedback.pushInfo(f"{result.n_pixels:,} pixels evaluated, {result.n_errors:,} wrong.")
        feedback.pushInfo(", ".join(f"{k} {'—' if v is None else f'{v:.4f}'}" for k, v in numbers.items()))
        if result.calibration is None:
            feedback.pushInfo("No CONFIDENCE raster: calibration (ECE, reliability diagram) not computed.")
        return {
            OUTPUT_HTML: written["html"],
            OUTPUT_PNG: written["png"],
            OUTPUT_JSON: written["json"],
            **{k: (None if v is None or v != v else float(v)) for k, v in numbers.items()},
        }

"""A segmentation algorithm's run: the parameters read, one call through the bridge, the results arranged.

Progress goes in two weighted stages (loading the model: seconds; inference: up to hours), Ctrl+C cancels in
the main thread, the core's errors become ``QgsProcessingException`` with the same one-line message, and when the
Toolbox loads the outputs they get a post-processor that names, groups and styles them.
"""

from __future__ import annotations

import time
from typing import Any

from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProcessingUtils

from ..bridge import BridgeCallbacks, MissingDependencies, SegmentationRequest, run_segmentation
from ..i18n import tr
from ..map_layers.result_layers import (
    CLASSES,
    CONFIDENT,
    PROBABILITIES,
    UNCERTAINTY,
    Method,
    ResultGroup,
    ResultLayerPostProcessor,
    RunDetails,
    result_names,
)
from ..progress import StagedFeedback, StageTimer, format_seconds
from .parameters import (
    OUTPUT,
    OUTPUT_CONFIDENCE,
    OUTPUT_CONFIDENT,
    OUTPUT_PROBABILITIES,
    OUTPUT_UNCERTAINTY,
    CommonValues,
)
from .run_guards import cancel_on_interrupt, processing_error

__all__ = ["run_processor"]

# Share of the progress bar: loading a model takes seconds, inference up to hours.
_STAGES = (("Loading the model", 3.0), ("Inference (tiles x passes)", 97.0))


def run_processor(
    method: Method,
    settings: dict[str, Any],
    values: CommonValues,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
    stretch: bool = False,
) -> dict[str, str | None]:
    """Run ``method`` once on the parameters read, and arrange the result layers.

    Args:
        method: :data:`~..map_layers.result_layers.MC_DROPOUT` or ``TTA``: the processor, and the layers' names.
        settings: the algorithm's own settings (added to ``values.processor_kwargs``), e.g. ``n_samples``.
        values: the parameters read by :func:`~.parameters.read_common_values`.
        context: the Processing context (layers to load on completion).
        feedback: progress, cancellation and log.
        stretch: stretch the loaded uncertainty layer's colours to the data (2–98 %).

    Returns:
        ``{"OUTPUT": class raster, "OUTPUT_UNCERTAINTY": uncertainty raster or None, "OUTPUT_CONFIDENCE": ...,
        "OUTPUT_PROBABILITIES": ..., "OUTPUT_CONFIDENT": ...}`` (None: not written).

    Raises:
        QgsProcessingException: torch is missing, a parameter is bad, the run failed or was cancelled.
    """
    from ..core.errors import McUncertaintyError

    stages = StagedFeedback(feedback, _STAGES)
    timer = StageTimer(stages.feedback.setProgressText, feedback.pushInfo)
    started = time.monotonic()
    loaded = [started]

    def model_ready() -> None:
        loaded[0] = time.monotonic()
        stages.start(1)

    request = SegmentationRequest(
        method.key,
        values.input_path,
        values.model_path,
        values.output_path,
        values.checkpoint_path,
        values.uncertainty_path,
        values.confidence_path,
        {**values.processor_kwargs, **settings},
        probabilities_path=values.probabilities_path,
        probabilities_dtype=values.probabilities_dtype,
        confident_path=values.confident_path,
        confident_threshold=values.confident_threshold,
    )
    callbacks = BridgeCallbacks(
        feedback.pushInfo,
        feedback.pushWarning,
        stages.feedback.setProgressText,
        stages.set_progress,
        feedback.isCanceled,
        model_ready,
    )
    stages.start(0)
    try:
        with cancel_on_interrupt(feedback):
            paths = run_segmentation(request, callbacks, timer)
    except (MissingDependencies, McUncertaintyError) as error:
        raise processing_error(str(error)) from None
    stages.set_progress(100.0)
    finished = time.monotonic()
    feedback.pushInfo(
        f"Total {format_seconds(finished - started)}: model {format_seconds(loaded[0] - started)}, "
        f"inference and writing {format_seconds(finished - loaded[0])}."
    )
    segmentation_path, uncertainty_path = paths["segmentation"], paths.get("uncertainty")
    _arrange_result_layers(paths, values, method, context, stretch)
    return {
        OUTPUT: segmentation_path,
        OUTPUT_UNCERTAINTY: uncertainty_path,
        OUTPUT_CONFIDENCE: paths.get("confidence"),
        OUTPUT_PROBABILITIES: paths.get("probabilities"),
        OUTPUT_CONFIDENT: paths.get("confident"),
    }


def _arrange_result_layers(
    paths: dict[str, Any],
    values: CommonValues,
    method: Method,
    context: QgsProcessingContext,
    stretch: bool,
) -> None:
    """When the class raster is loaded on completion (Toolbox, batch, runAndLoadResults): load a default-path
    uncertainty raster with it, and give every output loaded a post-processor that styles, names and groups it
    (the confidence raster is left as QGIS loads it)."""
    segmentation_path, uncertainty_path = paths["segmentation"], paths.get("uncertainty")
    details = RunDetails.from_outputs(segmentation_path, uncertainty_path, paths.get("confident"), stretched=stretch)
    names = result_names(values.input_name, method, details)
    group = ResultGroup.new(names.group)
    if (
        uncertainty_path
        and values.uncertainty_path is None
        and context.willLoadLayerOnCompletion(segmentation_path)
        and not context.willLoadLayerOnCompletion(uncertainty_path)
    ):
        project = context.layerToLoadOnCompletionDetails(segmentation_path).project or context.project()
        layer = QgsProcessingContext.LayerDetails(
            tr("Uncertainty raster"), project, OUTPUT_UNCERTAINTY, QgsProcessingUtils.LayerHint.Raster
        )
        context.addLayerToLoadOnCompletion(uncertainty_path, layer)
    ResultLayerPostProcessor.attach(context, segmentation_path, CLASSES, names.classes, group, stretch)
    if uncertainty_path:
        ResultLayerPostProcessor.attach(context, uncertainty_path, UNCERTAINTY, names.uncertainty, group, stretch)
    if paths.get("confident"):
        ResultLayerPostProcessor.attach(context, paths["confident"], CONFIDENT, names.confident, group, stretch)
    if paths.get("probabilities"):
        ResultLayerPostProcessor.attach(
            context, paths["probabilities"], PROBABILITIES, names.probabilities, group, stretch
        )

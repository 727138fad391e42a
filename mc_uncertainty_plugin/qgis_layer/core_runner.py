"""The one call from a Processing algorithm into the core, shared by all algorithms.

Finds torch (see :mod:`mc_uncertainty_plugin.python_env`), imports the core only then, wires ``feedback`` into
the core's callbacks (two weighted stages: loading the model, inference with an ETA in the log), turns the core's
errors into ``QgsProcessingException`` with the same one-line message, and arranges loading, naming, grouping
and styling of both outputs when the Toolbox loads them.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsSettings,
)

from .. import python_env
from .parameters import OUTPUT, OUTPUT_CONFIDENCE, OUTPUT_UNCERTAINTY, CommonValues, tr
from .progress import EtaLog, StagedFeedback, format_seconds
from .result_layers import CLASSES, UNCERTAINTY, Method, ResultGroup, ResultLayerPostProcessor, result_names
from .run_guards import cancel_on_interrupt, processing_error
from .styling import uncertainty_mode

__all__ = ["require_torch", "require_dependencies", "run_processor"]

# Share of the progress bar: loading a model takes seconds, inference up to hours.
_STAGES = (("Loading the model", 3.0), ("Inference (tiles x passes)", 97.0))


ALLOWED_TARGETS_KEY = "mc_uncertainty_plugin/allowed_targets"


def allowed_target_prefixes() -> tuple[str, ...]:
    """Extra trusted ``_target_`` module prefixes from the QGIS setting ``mc_uncertainty_plugin/allowed_targets``
    (comma-separated; the core also reads ``MC_UNCERTAINTY_ALLOWED_TARGETS``)."""
    value = QgsSettings().value(ALLOWED_TARGETS_KEY, "")
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return tuple(p.strip() for p in str(value or "").split(",") if p.strip())


def require_torch() -> None:
    """Make torch importable or raise the install instructions.

    Raises:
        QgsProcessingException: torch cannot be imported even from the configured environment.
    """
    if not python_env.ensure_torch():
        raise processing_error(python_env.missing_torch_message())


def require_dependencies(model_path: str) -> None:
    """torch, and segmentation-models-pytorch when the model config needs it, or the install instructions.

    Raises:
        QgsProcessingException: a needed package cannot be imported even from the configured environment.
    """
    require_torch()
    missing = python_env.missing_model_modules(model_path)
    if missing:
        raise processing_error(python_env.missing_modules_message(missing))


def run_processor(
    processor_name: str,
    processor_kwargs: dict[str, Any],
    values: CommonValues,
    method: Method,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
) -> dict[str, str | None]:
    """Load the model, build the core processor ``processor_name`` and run it once.

    Args:
        processor_name: class exported by ``mc_uncertainty_plugin.core``, e.g. ``"MCDropoutInferenceProcessor"``.
        processor_kwargs: its algorithm-specific keyword arguments (added to ``values.processor_kwargs``).
        values: the parameters read by :func:`~.parameters.read_common_values`.
        method: names the result layers and their group (:data:`~.result_layers.MC_DROPOUT`, ``TTA``).
        context: the Processing context (layers to load on completion).
        feedback: progress, cancellation and log.

    Returns:
        ``{"OUTPUT": class raster path, "OUTPUT_UNCERTAINTY": uncertainty raster path or None}``.

    Raises:
        QgsProcessingException: torch is missing, a parameter is bad, the run failed or was cancelled.
    """
    require_dependencies(values.model_path)
    from .. import core  # imports torch
    from ..core.errors import McUncertaintyError

    processor_class: Callable[..., Any] = getattr(core, processor_name)
    stages = StagedFeedback(feedback, _STAGES)
    started = time.monotonic()
    try:
        stages.start(0)
        model = core.load_model(values.model_path, checkpoint=values.checkpoint_path,
                                allowed_prefixes=allowed_target_prefixes())
        for note in model.notes:  # e.g. where decoder_dropout was inserted
            feedback.pushInfo(f"Model: {note}.")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            processor = processor_class(model, **values.processor_kwargs, **processor_kwargs)
        for warning in caught:
            if issubclass(warning.category, UserWarning):
                feedback.pushWarning(str(warning.message))
        loaded = time.monotonic()
        feedback.pushInfo(f"Model loaded in {format_seconds(loaded - started)}: {os.path.basename(values.model_path)}.")
        stages.start(1)
        with cancel_on_interrupt(feedback):
            paths = processor.process(
                values.input_path,
                os.path.dirname(values.output_path),
                output_path=values.output_path,
                uncertainty_path=values.uncertainty_path,
                confidence_path=values.confidence_path,
                progress=EtaLog(stages.set_progress, feedback.pushInfo),
                is_cancelled=feedback.isCanceled,
                log=feedback.pushInfo,
                warn=feedback.pushWarning,
            )
    except McUncertaintyError as error:
        raise processing_error(str(error)) from None
    stages.set_progress(100.0)
    finished = time.monotonic()
    feedback.pushInfo(
        f"Total {format_seconds(finished - started)}: model {format_seconds(loaded - started)}, "
        f"inference and writing {format_seconds(finished - loaded)}."
    )

    segmentation_path = paths["segmentation"]
    uncertainty_path = paths.get("uncertainty")
    _arrange_result_layers(segmentation_path, uncertainty_path, values, method, context)
    return {OUTPUT: segmentation_path, OUTPUT_UNCERTAINTY: uncertainty_path, OUTPUT_CONFIDENCE: paths.get("confidence")}


def _arrange_result_layers(
    segmentation_path: str,
    uncertainty_path: str | None,
    values: CommonValues,
    method: Method,
    context: QgsProcessingContext,
) -> None:
    """When the class raster is loaded on completion (Toolbox, batch, runAndLoadResults): load a default-path
    uncertainty raster with it, and give both outputs a post-processor that styles, names and groups them."""
    names = result_names(values.input_name, method, uncertainty_mode(uncertainty_path) if uncertainty_path else None)
    group = ResultGroup.new(names.group)
    if (uncertainty_path and values.uncertainty_path is None and context.willLoadLayerOnCompletion(segmentation_path)
            and not context.willLoadLayerOnCompletion(uncertainty_path)):
        project = context.layerToLoadOnCompletionDetails(segmentation_path).project or context.project()
        details = QgsProcessingContext.LayerDetails(
            tr("Uncertainty raster"), project, OUTPUT_UNCERTAINTY, QgsProcessingUtils.LayerHint.Raster
        )
        context.addLayerToLoadOnCompletion(uncertainty_path, details)
    ResultLayerPostProcessor.attach(context, segmentation_path, CLASSES, names.classes, group)
    if uncertainty_path:
        ResultLayerPostProcessor.attach(context, uncertainty_path, UNCERTAINTY, names.uncertainty, group)

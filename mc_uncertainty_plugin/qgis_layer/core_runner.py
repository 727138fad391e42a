"""The one call from a Processing algorithm into the core, shared by all algorithms.

Finds torch (see :mod:`mc_uncertainty_plugin.python_env`), imports the core only then, wires ``feedback`` into
the core's callbacks, turns the core's errors into ``QgsProcessingException`` with the same one-line message,
and arranges loading and styling of the uncertainty raster in the Toolbox.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
)

from .. import python_env
from .parameters import OUTPUT, OUTPUT_UNCERTAINTY, CommonValues, tr
from .styling import UncertaintyLayerStyler, uncertainty_maximum

__all__ = ["require_torch", "run_processor"]


def require_torch() -> None:
    """Make torch importable or raise the install instructions.

    Raises:
        QgsProcessingException: torch cannot be imported even from the configured environment.
    """
    if not python_env.ensure_torch():
        raise QgsProcessingException(python_env.missing_torch_message())


def run_processor(
    processor_name: str,
    processor_kwargs: dict[str, Any],
    values: CommonValues,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
) -> dict[str, str | None]:
    """Load the model, build the core processor ``processor_name`` and run it once.

    Args:
        processor_name: class exported by ``mc_uncertainty_plugin.core``, e.g. ``"MCDropoutInferenceProcessor"``.
        processor_kwargs: its algorithm-specific keyword arguments (added to ``values.processor_kwargs``).
        values: the parameters read by :func:`~.parameters.read_common_values`.
        context: the Processing context (layers to load on completion).
        feedback: progress, cancellation and log.

    Returns:
        ``{"OUTPUT": class raster path, "OUTPUT_UNCERTAINTY": uncertainty raster path or None}``.

    Raises:
        QgsProcessingException: torch is missing, a parameter is bad, the run failed or was cancelled.
    """
    require_torch()
    from .. import core  # imports torch
    from ..core.errors import McUncertaintyError

    processor_class: Callable[..., Any] = getattr(core, processor_name)
    log: Callable[[str], None] = feedback.pushInfo
    try:
        model = core.load_model(values.model_path, checkpoint=values.checkpoint_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            processor = processor_class(model, **values.processor_kwargs, **processor_kwargs)
        for warning in caught:
            if issubclass(warning.category, UserWarning):
                feedback.pushWarning(str(warning.message))
        paths = processor.process(
            values.input_path,
            os.path.dirname(values.output_path),
            output_path=values.output_path,
            uncertainty_path=values.uncertainty_path,
            progress=feedback.setProgress,
            is_cancelled=feedback.isCanceled,
            log=log,
        )
    except McUncertaintyError as error:
        raise QgsProcessingException(str(error)) from None

    segmentation_path = paths["segmentation"]
    uncertainty_path = paths.get("uncertainty")
    if uncertainty_path:
        _load_and_style_uncertainty(uncertainty_path, values, segmentation_path, context)
    return {OUTPUT: segmentation_path, OUTPUT_UNCERTAINTY: uncertainty_path}


def _load_and_style_uncertainty(
    uncertainty_path: str, values: CommonValues, segmentation_path: str, context: QgsProcessingContext
) -> None:
    """Load a default-path uncertainty raster with the class raster, and style it when it is loaded."""
    if values.uncertainty_path is None and context.willLoadLayerOnCompletion(segmentation_path):
        details = QgsProcessingContext.LayerDetails(
            tr("Uncertainty raster"), context.project(), OUTPUT_UNCERTAINTY, QgsProcessingUtils.LayerHint.Raster
        )
        context.addLayerToLoadOnCompletion(uncertainty_path, details)
    if context.willLoadLayerOnCompletion(uncertainty_path):
        num_classes = values.processor_kwargs.get("num_classes")
        styler = UncertaintyLayerStyler.create(uncertainty_path, uncertainty_maximum(uncertainty_path, num_classes))
        context.layerToLoadOnCompletionDetails(uncertainty_path).setPostProcessor(styler)

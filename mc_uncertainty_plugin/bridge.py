"""The one way from QGIS into the core, shared by the Processing algorithms and the desktop task.

- :func:`session_model`: finds torch (see :mod:`mc_uncertainty_plugin.python_env`), then leases the model from
  the session cache (:mod:`mc_uncertainty_plugin.core.models.cache`) or loads it, naming and timing each stage
  ("Loading PyTorch…", "Building the model…", "Reading weights…"); a model loaded by an earlier run of the
  session is reused as long as its files are unchanged, and the log says so.
- :func:`build_processor`: the core processor, its warnings passed on.
- :func:`run_processor`: the Processing algorithms' whole run: weighted progress stages, the core's errors as
  ``QgsProcessingException`` with the same one-line message, and loading, naming, grouping and styling of the
  outputs when the Toolbox loads them.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsSettings,
)

from . import python_env
from .i18n import tr
from .map_layers.result_layers import (
    CLASSES,
    UNCERTAINTY,
    Method,
    ResultGroup,
    ResultLayerPostProcessor,
    RunDetails,
    result_names,
)
from .processing_provider.parameters import OUTPUT, OUTPUT_CONFIDENCE, OUTPUT_UNCERTAINTY, CommonValues
from .processing_provider.run_guards import cancel_on_interrupt, processing_error
from .progress import EtaLog, StagedFeedback, StageTimer, format_seconds

__all__ = [
    "ALLOWED_TARGETS_KEY",
    "MissingDependencies",
    "allowed_target_prefixes",
    "dependency_problem",
    "require_torch",
    "require_dependencies",
    "session_model",
    "build_processor",
    "run_processor",
]

# Share of the progress bar: loading a model takes seconds, inference up to hours.
_STAGES = (("Loading the model", 3.0), ("Inference (tiles x passes)", 97.0))
ALLOWED_TARGETS_KEY = "mc_uncertainty_plugin/allowed_targets"
LOADING_TORCH = "Loading PyTorch…"
_LOAD_STAGES = {"build": "Building the model…", "weights": "Reading weights…"}


class MissingDependencies(Exception):
    """torch (or a package the model config needs) cannot be imported; the message says how to install it."""


def allowed_target_prefixes() -> tuple[str, ...]:
    """Extra trusted ``_target_`` module prefixes from the QGIS setting ``mc_uncertainty_plugin/allowed_targets``
    (comma-separated; the core also reads ``MC_UNCERTAINTY_ALLOWED_TARGETS``)."""
    value = QgsSettings().value(ALLOWED_TARGETS_KEY, "")
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return tuple(p.strip() for p in str(value or "").split(",") if p.strip())


def dependency_problem(model_path: str | None = None) -> str | None:
    """Why the model cannot run here (torch, or segmentation-models-pytorch for an SMP config, cannot be
    imported, even from the configured environments), with how to install it; None when all is there."""
    if not python_env.ensure_torch():
        return python_env.missing_torch_message()
    missing = python_env.missing_model_modules(model_path) if model_path else []
    return python_env.missing_modules_message(missing) if missing else None


def require_torch() -> None:
    """Make torch importable or raise the install instructions.

    Raises:
        QgsProcessingException: torch cannot be imported even from the configured environment.
    """
    problem = dependency_problem()
    if problem:
        raise processing_error(problem)


def require_dependencies(model_path: str) -> None:
    """torch, and segmentation-models-pytorch when the model config needs it, or the install instructions.

    Raises:
        QgsProcessingException: a needed package cannot be imported even from the configured environment.
    """
    problem = dependency_problem(model_path)
    if problem:
        raise processing_error(problem)


def _loading_options() -> tuple[str, ...]:
    """What else changes how a config loads: the trusted ``_target_`` prefixes (setting and environment)."""
    from .core.models.loading import ALLOWED_TARGETS_ENV

    return allowed_target_prefixes() + (f"env:{os.environ.get(ALLOWED_TARGETS_ENV, '')}",)


@contextmanager
def session_model(
    model_path: str,
    checkpoint_path: str | None,
    device: str | None,
    timer: StageTimer,
    log: Callable[[str], None],
) -> Iterator[Any]:
    """The :class:`~mc_uncertainty_plugin.core.LoadedModel` of ``model_path`` for one run (a ``with`` block).

    Each start-up stage is shown and timed by ``timer``; ``log`` gets whether the model was loaded or reused
    and the model's notes (e.g. where decoder_dropout was inserted).

    Raises:
        MissingDependencies: torch (or segmentation-models-pytorch) cannot be imported.
        McUncertaintyError: the model cannot be loaded (bad file, refused checkpoint ...).
    """
    timer.begin(tr(LOADING_TORCH))
    problem = dependency_problem(model_path)
    if problem:
        timer.end()
        raise MissingDependencies(problem)
    from .core.models.cache import SESSION_MODELS, model_key
    from .core.models.loading import load_model  # imports torch (found above)

    prefixes = allowed_target_prefixes()

    def load() -> Any:
        return load_model(
            model_path,
            checkpoint=checkpoint_path,
            allowed_prefixes=prefixes,
            stage=lambda name: timer.begin(tr(_LOAD_STAGES.get(name, name))),
        )

    key = model_key(model_path, checkpoint_path, device, _loading_options())
    try:
        with SESSION_MODELS.lease(key, load) as lease:
            timer.end()
            name = os.path.basename(model_path)
            if lease.reused:
                log(
                    tr("Model reused from this session (loaded {} ago, files unchanged): {}; nothing to load.").format(
                        format_seconds(lease.age_s), name
                    )
                )
            elif lease.cached:
                log(tr("Model loaded: {}; kept for the next runs of this session.").format(name))
            else:
                log(
                    tr("Model loaded: {} (a copy of its own: the session's copy is in use by another run).").format(
                        name
                    )
                )
            for note in lease.value.notes:
                log(f"Model: {note}.")
            yield lease.value
    finally:
        timer.end()  # the stage that failed, if loading failed


def build_processor(processor_name: str, model: Any, kwargs: dict[str, Any], warn: Callable[[str], None]) -> Any:
    """``mc_uncertainty_plugin.core.<processor_name>(model, **kwargs)``; its ``UserWarning`` s go to ``warn``."""
    from . import core

    processor_class: Callable[..., Any] = getattr(core, processor_name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        processor = processor_class(model, **kwargs)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            warn(str(warning.message))
    return processor


def run_processor(
    processor_name: str,
    processor_kwargs: dict[str, Any],
    values: CommonValues,
    method: Method,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
    stretch: bool = False,
) -> dict[str, str | None]:
    """Load (or reuse) the model, build the core processor ``processor_name`` and run it once.

    Args:
        processor_name: class exported by ``mc_uncertainty_plugin.core``, e.g. ``"MCDropoutInferenceProcessor"``.
        processor_kwargs: its algorithm-specific keyword arguments (added to ``values.processor_kwargs``).
        values: the parameters read by :func:`~.parameters.read_common_values`.
        method: names the result layers and their group (:data:`~.result_layers.MC_DROPOUT`, ``TTA``).
        context: the Processing context (layers to load on completion).
        feedback: progress, cancellation and log.
        stretch: stretch the loaded uncertainty layer's colours to the data (2–98 %).

    Returns:
        ``{"OUTPUT": class raster, "OUTPUT_UNCERTAINTY": uncertainty raster or None, "OUTPUT_CONFIDENCE": ...}``.

    Raises:
        QgsProcessingException: torch is missing, a parameter is bad, the run failed or was cancelled.
    """
    from .core.errors import McUncertaintyError

    stages = StagedFeedback(feedback, _STAGES)
    timer = StageTimer(stages.feedback.setProgressText, feedback.pushInfo)
    started = time.monotonic()
    stages.start(0)
    try:
        with session_model(
            values.model_path, values.checkpoint_path, values.processor_kwargs.get("device"), timer, feedback.pushInfo
        ) as model:
            processor = build_processor(
                processor_name, model, {**values.processor_kwargs, **processor_kwargs}, feedback.pushWarning
            )
            loaded = time.monotonic()
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
    except MissingDependencies as error:
        raise processing_error(str(error)) from None
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
    _arrange_result_layers(segmentation_path, uncertainty_path, values, method, context, stretch)
    return {OUTPUT: segmentation_path, OUTPUT_UNCERTAINTY: uncertainty_path, OUTPUT_CONFIDENCE: paths.get("confidence")}


def _arrange_result_layers(
    segmentation_path: str,
    uncertainty_path: str | None,
    values: CommonValues,
    method: Method,
    context: QgsProcessingContext,
    stretch: bool,
) -> None:
    """When the class raster is loaded on completion (Toolbox, batch, runAndLoadResults): load a default-path
    uncertainty raster with it, and give both outputs a post-processor that styles, names and groups them."""
    names = result_names(
        values.input_name, method, RunDetails.from_outputs(segmentation_path, uncertainty_path, stretch)
    )
    group = ResultGroup.new(names.group)
    if (
        uncertainty_path
        and values.uncertainty_path is None
        and context.willLoadLayerOnCompletion(segmentation_path)
        and not context.willLoadLayerOnCompletion(uncertainty_path)
    ):
        project = context.layerToLoadOnCompletionDetails(segmentation_path).project or context.project()
        details = QgsProcessingContext.LayerDetails(
            tr("Uncertainty raster"), project, OUTPUT_UNCERTAINTY, QgsProcessingUtils.LayerHint.Raster
        )
        context.addLayerToLoadOnCompletion(uncertainty_path, details)
    ResultLayerPostProcessor.attach(context, segmentation_path, CLASSES, names.classes, group, stretch)
    if uncertainty_path:
        ResultLayerPostProcessor.attach(context, uncertainty_path, UNCERTAINTY, names.uncertainty, group, stretch)

"""The one way from QGIS into the core, shared by the Processing algorithms and the desktop task.

- :func:`session_model`: finds torch (see :mod:`mc_uncertainty_plugin.python_env`), then leases the model from
  the session cache (:mod:`mc_uncertainty_plugin.core.models.cache`) or loads it, naming and timing each stage
  ("Loading PyTorch…", "Building the model…", "Reading weights…"); a model loaded by an earlier run of the
  session is reused as long as its files are unchanged, and the log says so.
- :func:`build_processor`: the core processor of a method, its warnings passed on.
- :func:`run_segmentation`: one run of a :class:`SegmentationRequest`, reported through :class:`BridgeCallbacks`:
  the Processing algorithms (:mod:`.processing_provider.segmentation_run`) and the desktop task
  (:mod:`.gui.task`) both call it, so both honour every setting the same way (the trusted ``_target_`` prefixes,
  the configured Python environment, the session's models).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from qgis.core import QgsSettings

from . import python_env
from .i18n import tr
from .progress import EtaLog, StageTimer, format_seconds

__all__ = [
    "ALLOWED_TARGETS_KEY",
    "MissingDependencies",
    "allowed_target_prefixes",
    "dependency_problem",
    "session_model",
    "METHODS",
    "build_processor",
    "SegmentationRequest",
    "BridgeCallbacks",
    "run_segmentation",
]

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


METHODS = ("mc_dropout", "tta")


def build_processor(method: str, model: Any, settings: dict[str, Any], warn: Callable[[str], None]) -> Any:
    """The core processor of ``method`` (``mc_dropout`` or ``tta``) for ``model`` with ``settings`` (fields of
    :class:`~mc_uncertainty_plugin.core.InferenceConfig`); its ``UserWarning`` s go to ``warn``."""
    from .core.inference.processors import MCDropoutInferenceProcessor, MultiClassInferenceProcessor  # torch

    classes = {"mc_dropout": MCDropoutInferenceProcessor, "tta": MultiClassInferenceProcessor}
    if method not in classes:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}.")
    processor_class = classes[method]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        processor = processor_class(model, **settings)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            warn(str(warning.message))
    return processor


@dataclass(frozen=True)
class SegmentationRequest:
    """One segmentation run, as both routes (Processing and the desktop task) ask for it.

    Attributes:
        method: ``mc_dropout`` or ``tta``.
        input_path: a GDAL source.
        model_path: model config YAML or TorchScript file; ``checkpoint_path``: its weights, or None.
        output_path: the class raster; ``uncertainty_path`` / ``confidence_path``: None = the core's default
            (beside the class raster) / not written.
        settings: fields of :class:`~mc_uncertainty_plugin.core.InferenceConfig`; left out (or None), the model
            config's ``inference_processor:`` values apply, then the defaults.
        probabilities_path: the per-class probability raster, or None (not written); ``probabilities_dtype``:
            ``float32`` or ``uint8``.
        confident_path: the confident class raster, or None (not written); ``confident_threshold``: its
            threshold, in the units of the uncertainty mode.
    """

    method: str
    input_path: str
    model_path: str
    output_path: str
    checkpoint_path: str | None = None
    uncertainty_path: str | None = None
    confidence_path: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    probabilities_path: str | None = None
    probabilities_dtype: str = "float32"
    confident_path: str | None = None
    confident_threshold: Any = 0.5


@dataclass(frozen=True)
class BridgeCallbacks:
    """How a route follows a run: ``log`` / ``warn`` lines, ``stage`` (a start-up stage begins: its label),
    ``progress`` of the inference (0..100), ``is_cancelled`` (polled), ``model_ready`` (loading is over)."""

    log: Callable[[str], None]
    warn: Callable[[str], None]
    stage: Callable[[str], None]
    progress: Callable[[float], None]
    is_cancelled: Callable[[], bool]
    model_ready: Callable[[], None] = lambda: None


def run_segmentation(request: SegmentationRequest, callbacks: BridgeCallbacks, timer: StageTimer) -> dict[str, Any]:
    """Load (or reuse) the model, build the processor and run it once; returns the core's paths
    (``{"segmentation": …, "uncertainty": …}`` and, when written, ``"confidence"``, ``"probabilities"``,
    ``"confident"``).

    Raises:
        MissingDependencies: torch (or segmentation-models-pytorch) cannot be imported.
        McUncertaintyError: a parameter, the model or the run failed (``InferenceCancelled`` when cancelled).
    """
    settings = dict(request.settings)
    with session_model(
        request.model_path, request.checkpoint_path, settings.get("device"), timer, callbacks.log
    ) as model:
        processor = build_processor(request.method, model, settings, callbacks.warn)
        callbacks.model_ready()
        return processor.process(
            request.input_path,
            os.path.dirname(os.path.abspath(request.output_path)),
            output_path=request.output_path,
            uncertainty_path=request.uncertainty_path,
            confidence_path=request.confidence_path,
            probabilities_path=request.probabilities_path,
            probabilities_dtype=request.probabilities_dtype,
            confident_path=request.confident_path,
            confident_threshold=request.confident_threshold,
            progress=EtaLog(callbacks.progress, callbacks.log),
            is_cancelled=callbacks.is_cancelled,
            log=callbacks.log,
            warn=callbacks.warn,
        )

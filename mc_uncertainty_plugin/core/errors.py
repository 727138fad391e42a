"""Exception types of the core.

Every error a user can cause is a :class:`McUncertaintyError` whose message names the parameter (with the
Processing key users see, e.g. ``N_SAMPLES``) and echoes the bad value. The QGIS layer turns them into
``QgsProcessingException`` with the same one-line message.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "McUncertaintyError",
    "ParameterError",
    "ModelLoadError",
    "RasterIOError",
    "Cancelled",
    "InferenceCancelled",
    "EvaluationCancelled",
    "ReviewCancelled",
    "InferenceError",
    "MissingDependencyError",
]


class McUncertaintyError(Exception):
    """Base class of every error the plugin raises on purpose."""


class ParameterError(McUncertaintyError, ValueError):
    """A parameter has a bad value.

    Args:
        parameter: the Processing key of the parameter (``N_SAMPLES``, ``STEP_SHAPE`` ...).
        value: the value that was given.
        requirement: what the value must be, phrased to follow "must", e.g. ``"be an integer >= 1"``.
    """

    def __init__(self, parameter: str, value: Any, requirement: str) -> None:
        self.parameter = parameter
        self.value = value
        self.requirement = requirement
        super().__init__(f"{parameter} must {requirement}, got {value!r}.")


class ModelLoadError(McUncertaintyError):
    """A model file, config or checkpoint cannot be loaded (or is refused for safety)."""


class RasterIOError(McUncertaintyError):
    """A raster cannot be read or an output cannot be written."""


class InferenceError(McUncertaintyError):
    """The model failed on a window during the run (after the start-up checks passed); nothing is left written."""


class Cancelled(McUncertaintyError):
    """The user cancelled a run (its ``is_cancelled`` callback returned True); no output was left behind.

    Catch this to handle every kind of cancelled run at once; the subclasses say which run it was.
    """


class InferenceCancelled(Cancelled):
    """The segmentation run (inference) was cancelled by the user; no output was left behind."""


class EvaluationCancelled(Cancelled):
    """The evaluation against reference labels was cancelled by the user; no report file was left behind."""


class ReviewCancelled(Cancelled):
    """The search for regions to review was cancelled by the user; no vector file was left behind."""


class MissingDependencyError(McUncertaintyError, ImportError):
    """torch / segmentation-models-pytorch is not importable from QGIS's Python."""

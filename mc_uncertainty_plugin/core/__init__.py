"""Pure-Python core of mc_uncertainty_plugin: numpy, torch and GDAL only (no qgis / PyQt).

>>> from mc_uncertainty_plugin.core import load_model, MCDropoutInferenceProcessor  # doctest: +SKIP
"""

from .config import InferenceConfig, parse_shape
from .engine import RunResult, run_inference
from .errors import (
    InferenceCancelled,
    McUncertaintyError,
    MissingDependencyError,
    ModelLoadError,
    ParameterError,
    RasterIOError,
)
from .evaluation import (
    EvaluationConfig,
    EvaluationResult,
    ReferenceResampledWarning,
    evaluate_uncertainty,
)
from .model_loading import LoadedModel, Normalization, load_model
from .processors import MCDropoutInferenceProcessor, MultiClassInferenceProcessor, NoActiveDropoutWarning
from .report import evaluate_to_files, write_evaluation_outputs
from .uncertainty import entropy, mutual_information, predictive_entropy

__all__ = [
    "InferenceConfig",
    "parse_shape",
    "RunResult",
    "run_inference",
    "InferenceCancelled",
    "McUncertaintyError",
    "MissingDependencyError",
    "ModelLoadError",
    "ParameterError",
    "RasterIOError",
    "EvaluationConfig",
    "EvaluationResult",
    "ReferenceResampledWarning",
    "evaluate_uncertainty",
    "evaluate_to_files",
    "write_evaluation_outputs",
    "LoadedModel",
    "Normalization",
    "load_model",
    "MCDropoutInferenceProcessor",
    "MultiClassInferenceProcessor",
    "NoActiveDropoutWarning",
    "entropy",
    "mutual_information",
    "predictive_entropy",
]

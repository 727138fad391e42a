"""Pure-Python core of mc_uncertainty_plugin: numpy, torch and GDAL only (no qgis / PyQt).

>>> from mc_uncertainty_plugin.core import load_model, MCDropoutInferenceProcessor  # doctest: +SKIP

Names are imported on first use (PEP 562), so ``from mc_uncertainty_plugin.core import evaluate_to_files``
works where torch is not installed: only inference needs torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "InferenceConfig": "config",
    "parse_shape": "config",
    "RunResult": "inference.engine",
    "run_inference": "inference.engine",
    "Cancelled": "errors",
    "InferenceCancelled": "errors",
    "EvaluationCancelled": "errors",
    "ReviewCancelled": "errors",
    "InferenceError": "errors",
    "McUncertaintyError": "errors",
    "MissingDependencyError": "errors",
    "ModelLoadError": "errors",
    "ParameterError": "errors",
    "RasterIOError": "errors",
    "EvaluationConfig": "evaluation.config",
    "EvaluationResult": "evaluation.result",
    "ReferenceResampledWarning": "evaluation.rasters",
    "evaluate_uncertainty": "evaluation.evaluation",
    "evaluate_to_files": "evaluation.outputs",
    "write_evaluation_outputs": "evaluation.outputs",
    "LoadedModel": "models.loading",
    "Normalization": "models.loading",
    "load_model": "models.loading",
    "MCDropoutInferenceProcessor": "inference.processors",
    "MultiClassInferenceProcessor": "inference.processors",
    "NoActiveDropoutWarning": "inference.processors",
    "MCCompatibilityWarning": "inference.processors",
    "entropy": "inference.uncertainty",
    "mutual_information": "inference.uncertainty",
    "ReviewConfig": "review.regions",
    "ReviewPatch": "review.regions",
    "ReviewResult": "review.regions",
    "find_review_regions": "review.regions",
    "review_regions_to_file": "review.vector",
    "write_review_layer": "review.vector",
    "predictive_entropy": "inference.uncertainty",
    "variation_ratio": "inference.uncertainty",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

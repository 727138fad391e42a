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
    "RunResult": "engine",
    "run_inference": "engine",
    "InferenceCancelled": "errors",
    "InferenceError": "errors",
    "McUncertaintyError": "errors",
    "MissingDependencyError": "errors",
    "ModelLoadError": "errors",
    "ParameterError": "errors",
    "RasterIOError": "errors",
    "EvaluationConfig": "evaluation",
    "EvaluationResult": "evaluation",
    "ReferenceResampledWarning": "evaluation",
    "evaluate_uncertainty": "evaluation",
    "evaluate_to_files": "report",
    "write_evaluation_outputs": "report",
    "LoadedModel": "model_loading",
    "Normalization": "model_loading",
    "load_model": "model_loading",
    "MCDropoutInferenceProcessor": "processors",
    "MultiClassInferenceProcessor": "processors",
    "NoActiveDropoutWarning": "processors",
    "MCCompatibilityWarning": "processors",
    "entropy": "uncertainty",
    "mutual_information": "uncertainty",
    "predictive_entropy": "uncertainty",
    "variation_ratio": "uncertainty",
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

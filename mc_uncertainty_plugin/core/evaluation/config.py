"""What an evaluation reads and how finely it bins: :class:`EvaluationConfig` and its defaults."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError

__all__ = ["DEFAULT_PAVPU_QUANTILES", "EvaluationConfig", "parse_class_names"]

DEFAULT_PAVPU_QUANTILES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ..., 0.95

# Processing key of each raster -> the EvaluationConfig field that holds its path
_PATH_FIELDS = {
    "CLASSES": "classes_path",
    "UNCERTAINTY": "uncertainty_path",
    "REFERENCE": "reference_path",
    "CONFIDENCE": "confidence_path",
}


def parse_class_names(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"background, building"`` or a sequence of names as a tuple of stripped names; None when empty."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    names = tuple(p.strip() for p in parts)
    return names if any(names) else None


@dataclass(frozen=True)
class EvaluationConfig:
    """What to evaluate and how finely.

    Attributes:
        classes_path: class raster (CLASSES).
        uncertainty_path: uncertainty raster (UNCERTAINTY), higher = less sure.
        reference_path: reference label raster (REFERENCE).
        confidence_path: optional ``max_c p̄_c`` raster (CONFIDENCE) for calibration.
        class_names: one name per class index (CLASS_NAMES); None takes the class raster's category names.
        pavpu_patch_size: side ``p`` of the square patches of the PAvPU metrics (PAVPU_PATCH_SIZE).
        block_rows: rows read per block (rounded down to a multiple of ``p``, at least ``p``).
        uncertainty_bins: bins over ``[lo, hi]`` of the uncertainty histograms.
        calibration_bins: equal-width confidence bins of the ECE and the reliability diagram.
        pavpu_quantiles: PAvPU thresholds at these quantiles of the patch mean uncertainty (snapped up to bin
            edges) ...
        pavpu_even_thresholds: ... and at this many thresholds evenly spaced inside ``[lo, hi]`` (as Mukhoti &
            Gal do), also bin edges.
        curve_points: points of the risk–coverage and sparsification curves.

    Raises:
        ParameterError: a path is empty or not a path, a count is below its minimum, or a quantile is outside
            ``(0, 1)``.
    """

    classes_path: str
    uncertainty_path: str
    reference_path: str
    confidence_path: str | None = None
    class_names: tuple[str, ...] | None = None
    pavpu_patch_size: int = 4
    block_rows: int = 512
    uncertainty_bins: int = 2048
    calibration_bins: int = 15
    pavpu_quantiles: tuple[float, ...] = DEFAULT_PAVPU_QUANTILES
    pavpu_even_thresholds: int = 19
    curve_points: int = 200

    def __post_init__(self) -> None:
        self._check_paths()
        object.__setattr__(self, "class_names", parse_class_names(self.class_names))
        self._check_counts()
        quantiles = tuple(float(q) for q in self.pavpu_quantiles)
        if not quantiles or any(not 0.0 < q < 1.0 for q in quantiles):
            raise ParameterError("pavpu_quantiles", self.pavpu_quantiles, "be levels strictly between 0 and 1")
        object.__setattr__(self, "pavpu_quantiles", quantiles)

    def _check_paths(self) -> None:
        """Every raster path (CONFIDENCE may be None) is a non-empty ``str`` or path-like, stored as ``str``."""
        for key, field_name in _PATH_FIELDS.items():
            path = getattr(self, field_name)
            if key == "CONFIDENCE" and path is None:
                continue
            if not isinstance(path, (str, os.PathLike)) or not str(path):
                raise ParameterError(key, path, "be a raster path")
            object.__setattr__(self, field_name, str(path))

    def _check_counts(self) -> None:
        """The patch size, block rows, bin counts and curve points are integers at or above their minimum."""
        for name, value, minimum in (
            ("PAVPU_PATCH_SIZE", self.pavpu_patch_size, 1),
            ("block_rows", self.block_rows, 1),
            ("uncertainty_bins", self.uncertainty_bins, 2),
            ("calibration_bins", self.calibration_bins, 1),
            ("pavpu_even_thresholds", self.pavpu_even_thresholds, 0),
            ("curve_points", self.curve_points, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ParameterError(name, value, f"be an integer >= {minimum}")

    def raster_paths(self) -> dict[str, str | None]:
        """``{Processing key: path}`` of the four input rasters (CONFIDENCE may be None)."""
        return {key: getattr(self, field_name) for key, field_name in _PATH_FIELDS.items()}

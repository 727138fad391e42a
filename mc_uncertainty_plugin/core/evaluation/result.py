"""What an evaluation returns: :class:`EvaluationResult` and its parts, and their JSON form.

:class:`Calibration` (ECE, reliability diagram), :class:`ErrorDetection` (AUROC, AUPR, risk–coverage, AURC, AUSE)
and :class:`PatchMetrics` (PAvPU) are frozen dataclasses of numbers and numpy curves; each has ``to_json()``,
which turns NaN and infinities into None so that the JSON is strict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import EvaluationConfig
from .metrics import PatchCounts

__all__ = ["Calibration", "ErrorDetection", "PatchMetrics", "EvaluationResult"]


def _number(value: float | None) -> float | None:
    """``value`` as a float; None for None, NaN and infinities (strict JSON has none of them)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _numbers(values: np.ndarray) -> list[float | None]:
    """An array as a list of :func:`_number` values."""
    return [_number(v) for v in np.asarray(values, dtype=np.float64).tolist()]


@dataclass(frozen=True, eq=False)
class Calibration:
    """Calibration of the confidence ``max_c p̄_c`` (Guo et al., 2017).

    Attributes:
        ece: expected calibration error ``Σ_b (n_b / N) |acc_b - conf_b|``, in ``[0, 1]``; 0 = calibrated.
        bin_edges: ``(M + 1,)`` confidence bin edges ``0, 1/M, ..., 1`` (bin ``b`` is ``[b/M, (b+1)/M)``, 1 in
            the last).
        counts: ``(M,)`` int64 pixels per bin.
        mean_confidence: ``(M,)`` mean confidence per bin (NaN when empty).
        accuracy: ``(M,)`` share of correct pixels per bin (NaN when empty).
        n_pixels: pixels with a valid confidence.
    """

    ece: float
    bin_edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    n_pixels: int

    def to_json(self) -> dict[str, Any]:
        """The ECE and the reliability diagram's bins as plain values."""
        return {
            "ece": _number(self.ece),
            "n_pixels": int(self.n_pixels),
            "bin_edges": _numbers(self.bin_edges),
            "counts": self.counts.tolist(),
            "mean_confidence": _numbers(self.mean_confidence),
            "accuracy": _numbers(self.accuracy),
        }


@dataclass(frozen=True, eq=False)
class ErrorDetection:
    """How well the uncertainty separates wrong from correct pixels (errors are the positive class).

    Attributes:
        auroc: area under the ROC curve, P(a random error is more uncertain than a random correct pixel).
        aupr: average precision of "uncertain means wrong".
        aurc: area under the risk–coverage curve, ``(1/N) Σ_k risk(k)``; lower is better.
        aurc_oracle: the smallest AURC possible (errors ranked last).
        aurc_random: AURC of an uninformative uncertainty, the error rate.
        ause: area between the sparsification curve and the oracle's, ``aurc - aurc_oracle`` (also called
            E-AURC); 0 = perfect ranking.
        uncertainty_edges: ``(B + 1,)`` edges of the uncertainty bins.
        hist_correct, hist_wrong: ``(B,)`` int64 correct / wrong pixels per uncertainty bin.
        roc_fpr, roc_tpr: the ROC curve. pr_recall, pr_precision: the precision–recall curve.
        coverage: ``(P,)`` shares of pixels retained, ``1/P .. 1``; ``risk``: expected error rate of the
            retained most certain pixels; ``oracle_risk``: the same with errors removed first. The
            sparsification curves are ``risk`` and ``oracle_risk`` against the fraction removed ``1 - coverage``.
    """

    auroc: float
    aupr: float
    aurc: float
    aurc_oracle: float
    aurc_random: float
    ause: float
    uncertainty_edges: np.ndarray
    hist_correct: np.ndarray
    hist_wrong: np.ndarray
    roc_fpr: np.ndarray
    roc_tpr: np.ndarray
    pr_recall: np.ndarray
    pr_precision: np.ndarray
    coverage: np.ndarray
    risk: np.ndarray
    oracle_risk: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """The areas, the curves and the uncertainty histograms as plain values."""
        return {
            "auroc": _number(self.auroc),
            "aupr": _number(self.aupr),
            "aurc": _number(self.aurc),
            "aurc_oracle": _number(self.aurc_oracle),
            "aurc_random": _number(self.aurc_random),
            "ause": _number(self.ause),
            "roc": {"fpr": _numbers(self.roc_fpr), "tpr": _numbers(self.roc_tpr)},
            "precision_recall": {"recall": _numbers(self.pr_recall), "precision": _numbers(self.pr_precision)},
            "risk_coverage": {
                "coverage": _numbers(self.coverage),
                "risk": _numbers(self.risk),
                "oracle_risk": _numbers(self.oracle_risk),
            },
            "sparsification": {
                "fraction_removed": _numbers(1.0 - self.coverage),
                "error": _numbers(self.risk),
                "oracle_error": _numbers(self.oracle_risk),
            },
            "uncertainty_histogram": {
                "edges": _numbers(self.uncertainty_edges),
                "correct": self.hist_correct.tolist(),
                "wrong": self.hist_wrong.tolist(),
            },
        }


@dataclass(frozen=True, eq=False)
class PatchMetrics:
    """Mukhoti & Gal (2018) patch-wise accuracy vs uncertainty, at ``T`` thresholds.

    Attributes:
        patch_size: side ``p`` of the non-overlapping patches.
        n_patches: patches with at least one valid pixel.
        thresholds: ``(T,)`` ascending uncertainty thresholds, bin edges at quantiles of the patch mean
            uncertainty and evenly spaced over the uncertainty range: a patch is certain when its mean uncertainty
            is below.
        certain_fraction: ``(T,)`` share of patches certain at each threshold.
        counts: n_ac, n_au, n_ic, n_iu, p(accurate | certain), p(uncertain | inaccurate) and PAvPU per threshold.
    """

    patch_size: int
    n_patches: int
    thresholds: np.ndarray
    certain_fraction: np.ndarray
    counts: PatchCounts

    def to_json(self) -> dict[str, Any]:
        """The thresholds and the patch counts and probabilities at each, as plain values."""
        counts = self.counts
        return {
            "patch_size": int(self.patch_size),
            "n_patches": int(self.n_patches),
            "thresholds": _numbers(self.thresholds),
            "certain_fraction": _numbers(self.certain_fraction),
            "n_ac": counts.n_ac.tolist(),
            "n_au": counts.n_au.tolist(),
            "n_ic": counts.n_ic.tolist(),
            "n_iu": counts.n_iu.tolist(),
            "p_accurate_given_certain": _numbers(counts.p_accurate_given_certain),
            "p_uncertain_given_inaccurate": _numbers(counts.p_uncertain_given_inaccurate),
            "pavpu": _numbers(counts.pavpu),
        }


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """All numbers and curves of one evaluation.

    Attributes:
        config: what was evaluated.
        class_names: ``C`` names, one per class index.
        n_pixels: valid pixels evaluated (``N``); ``n_errors``: those whose class differs from the reference.
        confusion: ``(C, C)`` int64, rows = reference class, columns = predicted class.
        accuracy: ``trace(confusion) / N``.
        iou: ``(C,)`` per-class ``TP / (TP + FP + FN)``; NaN for a class absent from both rasters.
        mean_iou: mean of the defined IoUs.
        calibration: None without a confidence raster.
        detection: error detection by uncertainty (AUROC, AUPR, AURC, AUSE and their curves).
        patches: PAvPU and its conditional probabilities.
        uncertainty_range: ``(lo, hi)`` of the uncertainty bins.
        reference_resampled: REFERENCE was resampled onto the grid of CLASSES.
        notes: sentences for the report (e.g. how REFERENCE was resampled).
    """

    config: EvaluationConfig
    class_names: tuple[str, ...]
    n_pixels: int
    n_errors: int
    confusion: np.ndarray
    accuracy: float
    iou: np.ndarray
    mean_iou: float
    calibration: Calibration | None
    detection: ErrorDetection
    patches: PatchMetrics
    uncertainty_range: tuple[float, float]
    reference_resampled: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def ece(self) -> float | None:
        """The ECE, or None without a confidence raster."""
        return None if self.calibration is None else self.calibration.ece

    @property
    def auroc(self) -> float:
        """AUROC of error detection (:attr:`ErrorDetection.auroc`)."""
        return self.detection.auroc

    @property
    def aupr(self) -> float:
        """AUPR of error detection (:attr:`ErrorDetection.aupr`)."""
        return self.detection.aupr

    @property
    def aurc(self) -> float:
        """Area under the risk–coverage curve (:attr:`ErrorDetection.aurc`)."""
        return self.detection.aurc

    @property
    def ause(self) -> float:
        """Area under the sparsification error (:attr:`ErrorDetection.ause`)."""
        return self.detection.ause

    def to_json(self) -> dict[str, Any]:
        """The numbers and curves as plain, JSON-serialisable values (NaN becomes None)."""
        config = self.config
        return {
            "inputs": {
                "classes": config.classes_path,
                "uncertainty": config.uncertainty_path,
                "confidence": config.confidence_path,
                "reference": config.reference_path,
                "reference_resampled": self.reference_resampled,
            },
            "class_names": list(self.class_names),
            "n_pixels": int(self.n_pixels),
            "n_errors": int(self.n_errors),
            "accuracy": _number(self.accuracy),
            "mean_iou": _number(self.mean_iou),
            "iou": {name: _number(v) for name, v in zip(self.class_names, self.iou)},
            "confusion_matrix": {"rows": "reference", "columns": "predicted", "values": self.confusion.tolist()},
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "error_detection": self.detection.to_json(),
            "patches": self.patches.to_json(),
            "uncertainty_range": [float(self.uncertainty_range[0]), float(self.uncertainty_range[1])],
            "notes": list(self.notes),
        }

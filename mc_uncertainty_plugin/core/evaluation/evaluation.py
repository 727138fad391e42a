"""Can the uncertainty be trusted? Evaluation of a class raster and its uncertainty raster against reference labels.

Inputs, all single-band rasters on one grid (the reference may be on another one, see below):

- CLASSES: predicted class index per pixel (255 = nodata, as the core writes it; the band's nodata too);
- UNCERTAINTY: any score where higher means less sure (entropy, mutual information ...); its nodata and NaN
  are excluded;
- CONFIDENCE (optional): ``max_c p̄_c`` in ``[0, 1]``, for calibration;
- REFERENCE: the true class index (its nodata and 255 are excluded). When it is georeferenced on another grid
  (size, origin, pixel size or CRS), it is resampled by nearest neighbour onto the grid of CLASSES with
  ``gdal.Warp`` into an in-memory VRT, and a :class:`~.rasters.ReferenceResampledWarning` is issued.

A pixel is evaluated when CLASSES, UNCERTAINTY and REFERENCE are all valid there; calibration uses those of them
where CONFIDENCE is valid too.

Streaming. Nothing holds a full raster: a first pass reads UNCERTAINTY by row blocks for its range
``[lo, hi]`` (``lo = min(0, min u)``, ``hi = max u``); a second pass reads all rasters by blocks of
``block_rows`` rows (a multiple of the patch size, so no patch straddles two blocks) and accumulates
(:class:`~.accumulation.EvaluationCounts`)

- the confusion matrix (accuracy, IoU);
- per calibration bin (15 equal-width bins of confidence): pixel count, sum of confidence, number correct (ECE);
- counts of correct and of wrong pixels on ``uncertainty_bins`` (2048) equal-width bins over ``[lo, hi]``:
  AUROC, AUPR, risk–coverage, AURC and AUSE follow from these (see :mod:`.metrics` for how the
  binning bounds their exactness: values in one bin are ties);
- per ``p x p`` patch (Mukhoti & Gal 2018): valid pixels, correct pixels, summed uncertainty; the patch's mean
  uncertainty is binned on the same grid, separately for accurate and inaccurate patches, which gives the PAvPU
  counts exactly at thresholds on bin edges. Patches cut by the raster's right or bottom edge keep the pixels
  they have; a patch without a valid pixel is skipped.

Nothing is subsampled: every valid pixel counts, and the result does not depend on ``block_rows``.

Where things are: :mod:`.config` (what to evaluate), :mod:`.rasters` (opening, grids, blocks of rows),
:mod:`.accumulation` (the counts), :mod:`.metrics` (metrics from counts), :mod:`.result` (what is returned);
this module ties them together.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np

from ..errors import EvaluationCancelled, ParameterError
from ..io.conventions import MAX_CLASSES
from . import metrics
from .accumulation import EvaluationCounts
from .config import EvaluationConfig
from .rasters import EvaluationRasters, ReferenceResampledWarning
from .result import Calibration, ErrorDetection, EvaluationResult, PatchMetrics

__all__ = ["evaluate_uncertainty"]

Tick = Callable[[int], None]  # called with the first row of each block read


def evaluate_uncertainty(
    config: EvaluationConfig,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> EvaluationResult:
    """Evaluate a class raster and its uncertainty against reference labels (see the module docstring).

    Args:
        config: the inputs and the binning.
        progress: called with a percentage 0..100.
        is_cancelled: polled between blocks; True stops the run.

    Returns:
        The numbers and curves.

    Raises:
        ParameterError: an input is missing or not a raster GDAL can open, on another grid without
            georeferencing, holds invalid labels or probabilities, or no pixel is valid in all of CLASSES,
            UNCERTAINTY and REFERENCE.
        RasterIOError: reading the pixels of an input failed midway (the message names its key).
        EvaluationCancelled: ``is_cancelled`` returned True.

    Warns:
        ReferenceResampledWarning: REFERENCE was on another grid and was resampled onto that of CLASSES.
    """
    rasters = EvaluationRasters(config)
    notes = _warn_if_resampled(rasters)
    p = config.pavpu_patch_size
    block_rows = max(p, config.block_rows // p * p)

    def tick(start: float, share: float) -> Tick:
        height = max(rasters.height, 1)
        return lambda row: progress(start + share * min(1.0, (row + block_rows) / height)) if progress else None

    lo, hi = _uncertainty_range(rasters, block_rows, tick(0.0, 15.0), is_cancelled)
    counts = _count(rasters, EvaluationCounts(config, lo, hi), block_rows, tick(15.0, 80.0), is_cancelled)
    result = _result(config, rasters, counts, notes)
    if progress is not None:
        progress(100.0)
    return result


def _warn_if_resampled(rasters: EvaluationRasters) -> tuple[str, ...]:
    """Warn (for the caller of :func:`evaluate_uncertainty`) when REFERENCE was resampled; the notes for the
    report."""
    note = rasters.resampling_note()
    if note is None:
        return ()
    warnings.warn(ReferenceResampledWarning(note), stacklevel=3)
    return (note,)


def _stop_if_cancelled(is_cancelled: Callable[[], bool] | None) -> None:
    if is_cancelled is not None and is_cancelled():
        raise EvaluationCancelled("Evaluation cancelled.")


def _uncertainty_range(
    rasters: EvaluationRasters, block_rows: int, tick: Tick, is_cancelled: Callable[[], bool] | None
) -> tuple[float, float]:
    """First pass: ``(lo, hi)`` with ``lo = min(0, min u)``, ``hi = max u`` over valid uncertainty pixels
    (``hi = lo + 1`` when all are equal).

    Raises:
        ParameterError: UNCERTAINTY has no valid pixel.
    """
    lo, hi = math.inf, -math.inf
    for row, values in rasters.uncertainty_blocks(block_rows):
        _stop_if_cancelled(is_cancelled)
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        tick(row)
    if math.isinf(lo):
        raise ParameterError("UNCERTAINTY", rasters.config.uncertainty_path, "have valid (not nodata) pixels")
    lo = min(lo, 0.0)
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _count(
    rasters: EvaluationRasters,
    counts: EvaluationCounts,
    block_rows: int,
    tick: Tick,
    is_cancelled: Callable[[], bool] | None,
) -> EvaluationCounts:
    """Second pass: every block of rows added to ``counts``."""
    for block in rasters.blocks(block_rows):
        _stop_if_cancelled(is_cancelled)
        counts.add(block)
        tick(block.row)
    return counts


def _class_names(config: EvaluationConfig, rasters: EvaluationRasters, confusion: np.ndarray) -> tuple[str, ...]:
    """``C`` names: ``C`` covers the given or stored names, MC_NUM_CLASSES and every label present."""
    given = list(config.class_names) if config.class_names else rasters.category_names()
    present = np.flatnonzero(confusion.sum(axis=0) + confusion.sum(axis=1))
    count = max(len(given), rasters.declared_class_count(), int(present.max()) + 1 if present.size else 1)
    return tuple(given[i] if i < len(given) and given[i] else f"class {i}" for i in range(count))


def _result(
    config: EvaluationConfig, rasters: EvaluationRasters, counts: EvaluationCounts, notes: tuple[str, ...]
) -> EvaluationResult:
    """The metrics from the counts: over the ``C x C`` confusion matrix ``m`` (rows = reference),
    ``accuracy = trace(m) / N`` and per class ``IoU_c = m_cc / (Σ_j m_jc + Σ_j m_cj - m_cc)`` (NaN when the
    class is absent from both rasters); the rest from :func:`_calibration`, :func:`_detection`, :func:`_patches`.

    Raises:
        ParameterError: no pixel is valid in all of CLASSES, UNCERTAINTY and REFERENCE.
    """
    full = counts.confusion.reshape(MAX_CLASSES, MAX_CLASSES)
    n_pixels = int(full.sum())
    if n_pixels == 0:
        raise ParameterError(
            "REFERENCE",
            config.reference_path,
            "have labels where CLASSES and UNCERTAINTY are valid (no pixel is valid in all three)",
        )
    names = _class_names(config, rasters, full)
    count = len(names)
    confusion = full[:count, :count].copy()
    true_positive = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    iou = np.divide(true_positive, union, out=np.full(count, np.nan), where=union > 0)
    return EvaluationResult(
        config=config,
        class_names=names,
        n_pixels=n_pixels,
        n_errors=n_pixels - int(true_positive.sum()),
        confusion=confusion,
        accuracy=float(true_positive.sum() / n_pixels),
        iou=iou,
        mean_iou=float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan,
        calibration=_calibration(config, counts) if rasters.confidence is not None else None,
        detection=_detection(config, counts),
        patches=_patches(config, counts),
        uncertainty_range=(counts.lo, counts.hi),
        reference_resampled=rasters.reference_resampled,
        notes=notes,
    )


def _calibration(config: EvaluationConfig, counts: EvaluationCounts) -> Calibration:
    """Per confidence bin ``b``: ``conf_b = Σ conf / n_b`` and ``acc_b = correct_b / n_b`` (NaN when empty);
    the ECE from them (:func:`.metrics.expected_calibration_error`)."""
    n = counts.cal_counts
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_confidence = np.where(n > 0, counts.cal_confidence / n, np.nan)
        accuracy = np.where(n > 0, counts.cal_correct / n, np.nan)
    return Calibration(
        ece=metrics.expected_calibration_error(n, counts.cal_confidence, counts.cal_correct),
        bin_edges=np.linspace(0.0, 1.0, config.calibration_bins + 1),
        counts=n.copy(),
        mean_confidence=mean_confidence,
        accuracy=accuracy,
        n_pixels=int(n.sum()),
    )


def _detection(config: EvaluationConfig, counts: EvaluationCounts) -> ErrorDetection:
    """Error detection from the uncertainty histograms of wrong and correct pixels. The curves are sampled at
    ``P = config.curve_points`` coverages ``c = k / P``, ``k = 1 .. P``: ``max(1, round(c N))`` pixels retained;
    ``AUSE = AURC - AURC_oracle`` and a random uncertainty's AURC is the error rate ``n_wrong / N``."""
    wrong, correct = counts.hist_wrong, counts.hist_correct
    n_wrong, n_correct = int(wrong.sum()), int(correct.sum())
    n = n_wrong + n_correct
    fpr, tpr = metrics.roc_curve(wrong, correct)
    recall, precision = metrics.precision_recall_curve(wrong, correct)
    coverage = np.arange(1, config.curve_points + 1) / config.curve_points
    retained = np.maximum(1, np.round(coverage * n))
    aurc = metrics.binned_aurc(wrong, correct)
    aurc_oracle = metrics.oracle_aurc(n_wrong, n_correct)
    return ErrorDetection(
        auroc=metrics.binned_auroc(wrong, correct),
        aupr=metrics.binned_average_precision(wrong, correct),
        aurc=aurc,
        aurc_oracle=aurc_oracle,
        aurc_random=n_wrong / n,
        ause=aurc - aurc_oracle,
        uncertainty_edges=np.linspace(counts.lo, counts.hi, config.uncertainty_bins + 1),
        hist_correct=correct.copy(),
        hist_wrong=wrong.copy(),
        roc_fpr=fpr,
        roc_tpr=tpr,
        pr_recall=recall,
        pr_precision=precision,
        coverage=retained / n,
        risk=metrics.expected_risk(wrong, correct, retained),
        oracle_risk=metrics.oracle_risk(n_wrong, n_correct, retained),
    )


def _patches(config: EvaluationConfig, counts: EvaluationCounts) -> PatchMetrics:
    """PAvPU at thresholds on bin edges: the edges at ``config.pavpu_quantiles`` of the patch mean uncertainty
    (:func:`.metrics.quantile_edges`) and ``E = config.pavpu_even_thresholds`` evenly spaced edges
    ``round(k B / (E + 1))``, ``k = 1 .. E``; edge ``j`` is the threshold ``lo + j (hi - lo) / B``."""
    per_bin = counts.patch_accurate + counts.patch_inaccurate
    n_patches = int(per_bin.sum())
    bins = config.uncertainty_bins
    even = np.round(np.arange(1, config.pavpu_even_thresholds + 1) * bins / (config.pavpu_even_thresholds + 1))
    edges = (
        np.union1d(
            metrics.quantile_edges(per_bin, np.asarray(config.pavpu_quantiles)),
            np.clip(even, 1, bins - 1).astype(np.int64),
        )
        if n_patches
        else np.zeros(0, dtype=np.int64)
    )
    below = np.concatenate(([0], np.cumsum(per_bin)))[edges]
    return PatchMetrics(
        patch_size=config.pavpu_patch_size,
        n_patches=n_patches,
        thresholds=counts.lo + edges * (counts.hi - counts.lo) / config.uncertainty_bins,
        certain_fraction=below / max(n_patches, 1),
        counts=metrics.patch_counts(counts.patch_accurate, counts.patch_inaccurate, edges),
    )

"""Metrics of an uncertainty map computed from binned counts (pure numpy; no raster access).

The evaluation (:mod:`.evaluation`) streams a raster once and keeps only counts: a confusion matrix, per-bin
counts of correct and wrong pixels over a fine, fixed grid of uncertainty values, calibration bin sums and a
histogram of patch mean uncertainties. Every metric here is a function of those counts.

Binning and exactness. Uncertainty values are put into ``B`` equal-width bins over ``[lo, hi]``
(``B = 2048`` by default, so the resolution is ``(hi - lo) / 2048``, about 0.0008 for entropies in
``[0, ln 5]``). Pixels in one bin are treated as *ties*. For scores that are distinct whenever they fall into
different bins, the results are exact for these tie conventions:

- AUROC is the Mann–Whitney statistic with ties counted 0.5;
- AUPR is the average precision with one threshold per distinct score (per bin), as scikit-learn computes it;
- the risk–coverage curve, AURC and AUSE are the *expected* values over a uniformly random order of tied pixels.

Two different values that share a bin are the only source of error: at most the share of (error, correct) pairs
inside one bin for AUROC, and the within-bin order for AURC; both vanish as ``B`` grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "bin_index",
    "roc_curve",
    "binned_auroc",
    "precision_recall_curve",
    "binned_average_precision",
    "expected_risk",
    "binned_aurc",
    "oracle_aurc",
    "oracle_risk",
    "expected_calibration_error",
    "PatchCounts",
    "patch_counts",
    "quantile_edges",
    "harmonic_difference",
]

_EULER_GAMMA = 0.5772156649015329


def bin_index(values: np.ndarray, lo: float, hi: float, n_bins: int) -> np.ndarray:
    """Bin of each value on ``n_bins`` equal-width bins over ``[lo, hi]``: ``floor((v - lo) / (hi - lo) * B)``,
    clipped to ``0 .. B - 1`` (so ``hi`` is in the last bin). Bin ``j`` is ``[lo + j w, lo + (j + 1) w)``,
    ``w = (hi - lo) / B``; returns ``int64`` of the shape of ``values``."""
    scaled = (np.asarray(values, dtype=np.float64) - lo) * (n_bins / (hi - lo))
    return np.clip(np.floor(scaled), 0, n_bins - 1).astype(np.int64)


def _check_counts(wrong: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    wrong = np.asarray(wrong, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if wrong.shape != correct.shape or wrong.ndim != 1:
        raise ValueError(
            f"wrong and correct must be 1-D counts of equal length, got {wrong.shape} and {correct.shape}."
        )
    return wrong, correct


def roc_curve(wrong: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC of "uncertainty detects errors": errors are the positives, the uncertainty is the score.

    Args:
        wrong: ``(B,)`` counts of wrong pixels per uncertainty bin, bins in ascending uncertainty.
        correct: ``(B,)`` counts of correct pixels per bin.

    Returns:
        ``fpr``, ``tpr``: ``(K,)`` float64 from ``(0, 0)`` to ``(1, 1)``, one point per threshold between occupied
        bins ("flag bins ``>= j`` as errors"): ``tpr = Σ_{i>=j} wrong_i / n_wrong``,
        ``fpr = Σ_{i>=j} correct_i / n_correct``. Empty arrays when either class has no pixel.
    """
    wrong, correct = _check_counts(wrong, correct)
    n_wrong, n_correct = wrong.sum(), correct.sum()
    if n_wrong == 0 or n_correct == 0:
        return np.zeros(0), np.zeros(0)
    occupied = (wrong + correct) > 0
    tp = np.cumsum(wrong[::-1])[::-1][occupied]  # flagged errors when the threshold is the bin's lower edge
    fp = np.cumsum(correct[::-1])[::-1][occupied]
    tpr = np.concatenate(([0.0], tp[::-1] / n_wrong))
    fpr = np.concatenate(([0.0], fp[::-1] / n_correct))
    return fpr, tpr


def binned_auroc(wrong: np.ndarray, correct: np.ndarray) -> float:
    """Area under the ROC curve, the probability that a random error is more uncertain than a random correct pixel.

    ``AUROC = Σ_j wrong_j (Σ_{i<j} correct_i + correct_j / 2) / (n_wrong n_correct)`` (Mann–Whitney; pixels in
    one bin are ties and count one half). This equals the trapezoidal area under :func:`roc_curve`. 0.5 is a
    random uncertainty, 1 a perfect one. NaN when there is no error or no correct pixel.
    """
    wrong, correct = _check_counts(wrong, correct)
    n_wrong, n_correct = wrong.sum(), correct.sum()
    if n_wrong == 0 or n_correct == 0:
        return math.nan
    below = np.cumsum(correct) - correct
    return float(np.sum(wrong * (below + 0.5 * correct)) / (n_wrong * n_correct))


def precision_recall_curve(wrong: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of errors flagged by "uncertainty in bin ``>= j``", for each occupied bin ``j``.

    Returns:
        ``recall``, ``precision``: ``(K,)`` float64 in decreasing threshold order (recall ascending):
        ``precision_j = TP_j / (TP_j + FP_j)``, ``recall_j = TP_j / n_wrong``. Empty when there is no error.
    """
    wrong, correct = _check_counts(wrong, correct)
    n_wrong = wrong.sum()
    if n_wrong == 0:
        return np.zeros(0), np.zeros(0)
    occupied = (wrong + correct) > 0
    tp = np.cumsum(wrong[::-1])[::-1][occupied][::-1]
    fp = np.cumsum(correct[::-1])[::-1][occupied][::-1]
    return tp / n_wrong, tp / (tp + fp)


def binned_average_precision(wrong: np.ndarray, correct: np.ndarray) -> float:
    """AUPR as average precision, errors being the positives: ``AP = Σ_j (R_j - R_{j-1}) P_j`` over thresholds
    in decreasing order (``R_0 = 0``). The error rate is a random uncertainty's AP, 1 a perfect one. NaN when
    there is no error."""
    recall, precision = precision_recall_curve(wrong, correct)
    if recall.size == 0:
        return math.nan
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def _harmonic(m: int) -> float:
    """``H_m = Σ_{i=1..m} 1/i`` (``H_0 = 0``): exact below 32, else the asymptotic series (error < 1e-16)."""
    if m < 32:
        return math.fsum(1.0 / i for i in range(1, m + 1))
    x = float(m)
    return math.log(x) + _EULER_GAMMA + 1 / (2 * x) - 1 / (12 * x**2) + 1 / (120 * x**4) - 1 / (252 * x**6)


def harmonic_difference(a: int, b: int) -> float:
    """``H_b - H_a = Σ_{i=a+1..b} 1/i`` for ``0 <= a <= b``, without cancellation for large ``a``."""
    if b - a <= 64:
        return math.fsum(1.0 / i for i in range(a + 1, b + 1))
    if a < 32:
        return _harmonic(b) - _harmonic(a)
    x, y = float(a), float(b)
    return (
        math.log1p((y - x) / x)
        + (1 / (2 * y) - 1 / (2 * x))
        - (1 / (12 * y**2) - 1 / (12 * x**2))
        + (1 / (120 * y**4) - 1 / (120 * x**4))
    )


def binned_aurc(wrong: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk–coverage curve (Geifman et al., 2019), expected over the order of tied pixels.

    Pixels are retained from the most certain: ``risk(k)`` is the error rate of the ``k`` most certain pixels and
    ``AURC = (1/N) Σ_{k=1..N} risk(k)``. In bin ``j`` (``n_j`` pixels, ``e_j`` errors, after ``K`` pixels
    with ``E`` errors), a random order of the ties gives ``E[risk(K + i)] = (E + i e_j / n_j) / (K + i)``, whose sum
    over ``i = 1..n_j`` is ``e_j + (E - K e_j / n_j)(H_{K+n_j} - H_K)`` (``H`` harmonic numbers). Lower is
    better; a random uncertainty gives about the error rate. NaN for no pixel.
    """
    wrong, correct = _check_counts(wrong, correct)
    total = 0.0
    seen = errors = 0
    for e, c in zip(wrong.astype(np.int64).tolist(), correct.astype(np.int64).tolist()):
        n = e + c
        if n == 0:
            continue
        total += e + (errors - seen * e / n) * harmonic_difference(seen, seen + n)
        seen += n
        errors += e
    return total / seen if seen else math.nan


def oracle_aurc(n_wrong: int, n_correct: int) -> float:
    """The best possible AURC, all correct pixels retained first:
    ``(1/N) Σ_{k>n_correct} (k - n_correct)/k = (n_wrong - n_correct (H_N - H_{n_correct})) / N``."""
    n = n_wrong + n_correct
    if n == 0:
        return math.nan
    return (n_wrong - n_correct * harmonic_difference(n_correct, n)) / n


def expected_risk(wrong: np.ndarray, correct: np.ndarray, retained: np.ndarray) -> np.ndarray:
    """``E[risk(k)]`` of the risk–coverage curve at retained pixel counts ``k`` (``1 <= k <= N``), ties in random
    order (see :func:`binned_aurc`); ``(len(retained),)`` float64."""
    wrong, correct = _check_counts(wrong, correct)
    n = wrong + correct
    cum_n = np.cumsum(n)
    cum_e = np.cumsum(wrong)
    retained = np.asarray(retained, dtype=np.float64)
    j = np.searchsorted(cum_n, retained, side="left")  # first bin whose end reaches k
    j = np.clip(j, 0, len(n) - 1)
    before_n = cum_n[j] - n[j]
    before_e = cum_e[j] - wrong[j]
    rate = np.divide(wrong[j], n[j], out=np.zeros_like(retained), where=n[j] > 0)
    return (before_e + (retained - before_n) * rate) / retained


def oracle_risk(n_wrong: int, n_correct: int, retained: np.ndarray) -> np.ndarray:
    """Risk of the ``k`` retained pixels when errors are removed first: ``max(0, k - n_correct) / k``."""
    retained = np.asarray(retained, dtype=np.float64)
    return np.maximum(0.0, retained - n_correct) / retained


def expected_calibration_error(counts: np.ndarray, confidence_sums: np.ndarray, correct_sums: np.ndarray) -> float:
    """ECE over confidence bins (Guo et al., 2017): ``Σ_b (n_b / N) |acc_b - conf_b|`` with ``acc_b`` the accuracy
    and ``conf_b`` the mean confidence of bin ``b``, i.e. ``Σ_b |Σ correct - Σ confidence| / N``. NaN for no
    pixel."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n == 0:
        return math.nan
    return float(np.sum(np.abs(np.asarray(correct_sums, np.float64) - np.asarray(confidence_sums, np.float64))) / n)


@dataclass(frozen=True, eq=False)
class PatchCounts:
    """Mukhoti & Gal (2018) patch counts at each threshold, with the ratios built from them.

    A patch is accurate when its accuracy is ``>= 0.5`` and certain when its mean uncertainty is below the
    threshold. All arrays are ``(T,)`` for ``T`` thresholds.

    Attributes:
        n_ac, n_au, n_ic, n_iu: accurate-certain, accurate-uncertain, inaccurate-certain, inaccurate-uncertain.
        p_accurate_given_certain: ``n_ac / (n_ac + n_ic)`` (NaN when no patch is certain).
        p_uncertain_given_inaccurate: ``n_iu / (n_ic + n_iu)`` (NaN when no patch is inaccurate).
        pavpu: ``(n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu)``.
    """

    n_ac: np.ndarray
    n_au: np.ndarray
    n_ic: np.ndarray
    n_iu: np.ndarray
    p_accurate_given_certain: np.ndarray
    p_uncertain_given_inaccurate: np.ndarray
    pavpu: np.ndarray


def patch_counts(accurate: np.ndarray, inaccurate: np.ndarray, edge_indices: np.ndarray) -> PatchCounts:
    """Patch counts from histograms of patch mean uncertainty.

    Args:
        accurate: ``(B,)`` accurate patches per uncertainty bin; ``inaccurate``: the same for inaccurate ones.
        edge_indices: ``(T,)`` thresholds as bin-edge indices ``k``: a patch is certain when its bin is ``< k``,
            i.e. its mean uncertainty is below edge ``k``, exactly (thresholds are bin edges).
    """
    accurate = np.asarray(accurate, dtype=np.float64)
    inaccurate = np.asarray(inaccurate, dtype=np.float64)
    k = np.asarray(edge_indices, dtype=np.int64)
    below_a = np.concatenate(([0.0], np.cumsum(accurate)))[k]
    below_i = np.concatenate(([0.0], np.cumsum(inaccurate)))[k]
    n_ac, n_au = below_a, accurate.sum() - below_a
    n_ic, n_iu = below_i, inaccurate.sum() - below_i
    with np.errstate(divide="ignore", invalid="ignore"):
        p_ac = np.where(n_ac + n_ic > 0, n_ac / (n_ac + n_ic), np.nan)
        p_ui = np.where(n_ic + n_iu > 0, n_iu / (n_ic + n_iu), np.nan)
        total = n_ac + n_au + n_ic + n_iu
        pavpu = np.where(total > 0, (n_ac + n_iu) / total, np.nan)
    as_int = lambda a: a.astype(np.int64)  # noqa: E731
    return PatchCounts(as_int(n_ac), as_int(n_au), as_int(n_ic), as_int(n_iu), p_ac, p_ui, pavpu)


def quantile_edges(counts: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Bin-edge indices at quantiles of a histogram: for each level ``q`` the smallest ``k`` with
    ``Σ_{j<k} counts_j >= q Σ counts`` (so about a share ``q`` lies below edge ``k``); unique, ascending,
    clipped to the inner edges ``1 .. B - 1`` (edge 0 has nothing below; edge ``B`` is ``hi``, which the last,
    closed bin ``[hi - w, hi]`` contains, so "below ``hi``" could not be decided from the bins)."""
    counts = np.asarray(counts, dtype=np.float64)
    below = np.concatenate(([0.0], np.cumsum(counts)))
    total = below[-1]
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    k = np.searchsorted(below, np.asarray(levels, dtype=np.float64) * total, side="left")
    return np.unique(np.clip(k, 1, len(counts) - 1))

"""Uncertainty measures over class probabilities (natural log; the entropies in ``[0, ln C]``).

Notation: ``p_t(c|x)`` is the softmax of stochastic pass ``t = 1..T`` (dropout mask and/or augmentation),
``p̄(c|x) = (1/T) Σ_t p_t(c|x)`` the predictive mean, ``H[p] = -Σ_c p_c ln p_c`` (with ``0 ln 0 = 0``).

- predictive entropy: ``H[p̄]`` — total uncertainty (aleatoric + epistemic).
- mutual information (BALD): ``MI = H[p̄] - (1/T) Σ_t H[p_t]`` — epistemic part, the samples' disagreement.
  ``MI >= 0`` because ``H`` is concave (Jensen); it is clipped at 0 against float rounding.
- expected entropy: ``(1/T) Σ_t H[p_t]`` — the aleatoric part (``H[p̄] = MI + expected entropy``).
- variation ratio: ``1 - max_c v_c`` with ``v_c = (1/T) Σ_t 1[argmax p_t = c]``, the share of samples that do
  not vote for the modal class; in ``[0, 1 - 1/C]``.
- normalised entropy: ``H[p̄] / ln C`` — the predictive entropy on a scale of ``[0, 1]`` whatever C, so one
  threshold suits models with different class counts.
- margin: ``p̄_(1) - p̄_(2)``, the gap between the two largest mean probabilities, in ``[0, 1]``. Unlike the
  others, *low* means unsure (0: a tie between the two best classes).
- confidence: ``max_c p̄_c`` (for calibration), in ``[1/C, 1]``.

Blending over overlapping tiles (see :mod:`.merger`) keeps *linear* accumulators per pixel, normalised by
``Σ_k w_k``: ``Σ_k w_k p̄_k``, and as the mode needs ``Σ_k w_k E_k`` with ``E_k = (1/T) Σ_t H[p_{k,t}]``,
``Σ_k w_k I_k`` with each window's own ``I_k = H[p̄_k] - E_k``, or the vote shares ``Σ_k w_k v_k``.
The class map is the argmax of the blended ``p̄`` and the entropy is ``H`` of it, so both describe the same
distribution. The mutual information is the blend of the windows' own MI, not ``H[blended p̄] - blended E``:
the latter counts the disagreement *between overlapping windows* (which see different context) as model
uncertainty, and would be > 0 for a model without dropout; the blend of ``I_k`` is exactly 0 there, and stays
in ``[0, ln C]``.
"""

from __future__ import annotations

import numpy as np

from ..io.conventions import LOW_MEANS_UNSURE

__all__ = [
    "entropy",
    "predictive_entropy",
    "mutual_information",
    "uncertainty_from_accumulators",
    "variation_ratio",
    "uncertainty_maximum",
    "low_means_unsure",
    "top_two_margin",
    "argmax_and_max",
]

_TINY = np.float32(1e-30)


def uncertainty_maximum(mode: str, num_classes: int) -> float:
    """Largest possible value of a mode: ``ln C`` for the entropies and MI, ``1 - 1/C`` for the variation ratio,
    1 for the normalised entropy and the margin (every mode's smallest value is 0)."""
    if mode in ("normalized_entropy", "margin"):
        return 1.0
    return 1.0 - 1.0 / num_classes if mode == "variation_ratio" else float(np.log(num_classes))


def low_means_unsure(mode: str) -> bool:
    """True for the margin, where a low value means unsure; every other mode grows with the uncertainty."""
    return mode in LOW_MEANS_UNSURE


def top_two_margin(probs: np.ndarray) -> np.ndarray:
    """``p_(1) - p_(2)``, the largest minus the second largest value along axis 0 of ``(C, H, W)``; ``(H, W)``
    float32 in ``[0, 1]`` for probabilities (0 where the two best classes tie).

    Class by class (a running best and second best), without sorting the class axis.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[0] == 1:  # one class: nothing competes with it
        return np.ones(probs.shape[1:], dtype=np.float32)
    best = np.maximum(probs[0], probs[1])
    second = np.minimum(probs[0], probs[1])
    for plane in probs[2:]:
        np.maximum(second, np.minimum(best, plane), out=second)
        np.maximum(best, plane, out=best)
    return np.clip(best - second, np.float32(0.0), np.float32(1.0))


def variation_ratio(sample_probs: np.ndarray) -> np.ndarray:
    """``1 - max_c (1/T) Σ_t 1[argmax p_t = c]`` for ``(T, C, ...)`` sample probabilities; ``(...)`` float32."""
    sample_probs = np.asarray(sample_probs)
    votes = np.argmax(sample_probs, axis=1)
    shares = np.stack([(votes == c).mean(axis=0) for c in range(sample_probs.shape[1])])
    return (1.0 - shares.max(axis=0)).astype(np.float32)


def entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy ``-Σ_c p_c ln p_c`` along ``axis`` (the class axis), with ``0 ln 0 = 0``.

    Summed class by class over 2-D planes (4x faster than a vectorised 3-D expression on ``(C, H, W)``
    blocks, which matters when the merge finishes rows of a wide raster).

    Args:
        probs: probabilities, e.g. ``(C, H, W) float32``; each slice along ``axis`` sums to 1.

    Returns:
        Entropy with ``axis`` removed, float32, clipped to ``[0, ln C]``.
    """
    planes = np.moveaxis(np.asarray(probs, dtype=np.float32), axis, 0)
    num_classes = planes.shape[0]
    total = np.zeros(planes.shape[1:], dtype=np.float32)
    term = np.empty(planes.shape[1:], dtype=np.float32)
    for plane in planes:
        np.maximum(plane, _TINY, out=term)  # p = 0 gives 0 * ln(tiny) = 0
        np.log(term, out=term)
        term *= plane
        total -= term
    return np.clip(total, np.float32(0.0), np.float32(np.log(num_classes)), out=total)


def argmax_and_max(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(argmax_c p_c as uint8, max_c p_c as float32)`` over axis 0 of ``(C, H, W)`` (first class on ties).

    Class by class with branch-free arithmetic: about 6x faster than ``np.argmax(axis=0)`` on such blocks.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[0] > 256:
        raise ValueError(f"at most 256 classes fit a uint8 class index, got {probs.shape[0]}.")
    best = probs[0].copy()
    index = np.zeros(probs.shape[1:], dtype=np.uint8)
    better = np.empty(probs.shape[1:], dtype=bool)
    step = np.empty(probs.shape[1:], dtype=np.uint8)
    for c in range(1, probs.shape[0]):
        np.greater(probs[c], best, out=better)
        np.maximum(best, probs[c], out=best)
        np.subtract(np.uint8(c), index, out=step)  # index becomes c where better: index += (c - index) * better
        step *= better
        index += step
    return index, best


def predictive_entropy(sample_probs: np.ndarray) -> np.ndarray:
    """``H[p̄]`` for ``(T, C, ...)`` sample probabilities; returns ``(...)`` float32."""
    return entropy(np.asarray(sample_probs, dtype=np.float64).mean(axis=0), axis=0)


def mutual_information(sample_probs: np.ndarray) -> np.ndarray:
    """BALD ``H[p̄] - (1/T) Σ_t H[p_t]`` for ``(T, C, ...)`` sample probabilities; ``(...)`` float32, ``>= 0``."""
    sample_probs = np.asarray(sample_probs, dtype=np.float64)
    expected = np.mean([entropy(p, axis=0) for p in sample_probs], axis=0)
    num_classes = sample_probs.shape[1]
    return np.clip(predictive_entropy(sample_probs) - expected, 0.0, np.log(num_classes)).astype(np.float32)


def uncertainty_from_accumulators(
    mean_probs: np.ndarray,
    expected_entropy: np.ndarray | None,
    mode: str,
    votes: np.ndarray | None = None,
    *,
    mutual_information: np.ndarray | None = None,
) -> np.ndarray:
    """Uncertainty from blended accumulators (already divided by the weight sum).

    Args:
        mean_probs: blended ``p̄``, ``(C, H, W)``.
        expected_entropy: blended ``(1/T) Σ_t H[p_t]``, ``(H, W)``; for ``expected_entropy`` (and for
            ``mutual_information`` of a single window, when ``mutual_information`` is not given).
        mode: ``entropy`` -> ``H[p̄]``; ``mutual_information`` -> the blended per-window MI (else ``H[p̄] - E``),
            clipped to ``[0, ln C]``; ``expected_entropy`` -> ``E``; ``variation_ratio`` -> ``1 - max_c v_c``;
            ``normalized_entropy`` -> ``H[p̄] / ln C``; ``margin`` -> ``p̄_(1) - p̄_(2)`` (both of the blended p̄).
        votes: blended vote shares ``v``, ``(C, H, W)``; for ``variation_ratio``.
        mutual_information: blended per-window ``H[p̄_k] - E_k``, ``(H, W)``.

    Returns:
        ``(H, W) float32``.
    """
    num_classes = mean_probs.shape[0]
    ceiling = np.float32(np.log(num_classes))
    if mode == "margin":
        return top_two_margin(mean_probs)
    if mode == "expected_entropy":
        if expected_entropy is None:
            raise ValueError("expected_entropy needs the blended expected entropy.")
        return np.clip(expected_entropy, 0.0, ceiling).astype(np.float32)
    if mode == "variation_ratio":
        if votes is None:
            raise ValueError("variation_ratio needs the blended vote shares.")
        return np.clip(1.0 - votes.max(axis=0), 0.0, 1.0 - 1.0 / num_classes).astype(np.float32)
    if mode == "mutual_information" and mutual_information is not None:
        return np.clip(mutual_information, 0.0, ceiling).astype(np.float32)
    total = entropy(mean_probs, axis=0)
    if mode == "entropy":
        return total
    if mode == "normalized_entropy":
        total /= ceiling
        return np.clip(total, np.float32(0.0), np.float32(1.0), out=total)
    if mode == "mutual_information":
        if expected_entropy is None:
            raise ValueError("mutual_information needs the blended mutual information or expected entropy.")
        return np.clip(total - expected_entropy, 0.0, ceiling).astype(np.float32)
    raise ValueError(f"unknown uncertainty mode {mode!r}.")

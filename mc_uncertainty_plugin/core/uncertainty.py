"""Uncertainty measures over class probabilities (natural log, values in ``[0, ln C]``).

Notation: ``p_t(c|x)`` is the softmax of stochastic pass ``t = 1..T`` (dropout mask and/or augmentation),
``p̄(c|x) = (1/T) Σ_t p_t(c|x)`` the predictive mean, ``H[p] = -Σ_c p_c ln p_c`` (with ``0 ln 0 = 0``).

- predictive entropy: ``H[p̄]`` — total uncertainty (aleatoric + epistemic).
- mutual information (BALD): ``MI = H[p̄] - (1/T) Σ_t H[p_t]`` — epistemic part, the samples' disagreement.
  ``MI >= 0`` because ``H`` is concave (Jensen); it is clipped at 0 against float rounding.

Blending over overlapping tiles (see :mod:`.merger`) keeps these *linear* accumulators per pixel,
``Σ_k w_k p̄_k`` and ``Σ_k w_k E_k`` with ``E_k = (1/T) Σ_t H[p_{k,t}]``, normalised by ``Σ_k w_k``. Entropy
and MI are then computed from the blended ``p̄`` and ``E``: the blend is itself the predictive mean of a
mixture over tiles and samples, so the class map (argmax of blended ``p̄``) and the uncertainty describe the
same distribution, and MI stays in ``[0, ln C]``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "entropy",
    "predictive_entropy",
    "mutual_information",
    "uncertainty_from_accumulators",
]


def entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Shannon entropy ``-Σ_c p_c ln p_c`` along ``axis`` (the class axis), with ``0 ln 0 = 0``.

    Args:
        probs: probabilities, e.g. ``(C, H, W) float32``; each slice along ``axis`` sums to 1.

    Returns:
        Entropy with ``axis`` removed, float32, clipped to ``[0, ln C]``.
    """
    probs = np.asarray(probs, dtype=np.float32)
    num_classes = probs.shape[axis]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    result = -terms.sum(axis=axis, dtype=np.float64)
    return np.clip(result, 0.0, np.log(num_classes)).astype(np.float32)


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
    mean_probs: np.ndarray, expected_entropy: np.ndarray | None, mode: str
) -> np.ndarray:
    """Uncertainty from blended accumulators (already divided by the weight sum).

    Args:
        mean_probs: blended ``p̄``, ``(C, H, W)``.
        expected_entropy: blended ``(1/T) Σ_t H[p_t]``, ``(H, W)``; needed for ``mutual_information``.
        mode: ``entropy`` -> ``H[p̄]``; ``mutual_information`` -> ``H[p̄] - E``, clipped to ``[0, ln C]``.

    Returns:
        ``(H, W) float32``.
    """
    total = entropy(mean_probs, axis=0)
    if mode == "entropy":
        return total
    if mode == "mutual_information":
        if expected_entropy is None:
            raise ValueError("mutual_information needs the blended expected entropy.")
        num_classes = mean_probs.shape[0]
        return np.clip(total - expected_entropy, 0.0, np.log(num_classes)).astype(np.float32)
    raise ValueError(f"unknown uncertainty mode {mode!r}.")

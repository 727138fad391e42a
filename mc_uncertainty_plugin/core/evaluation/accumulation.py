"""The counts an evaluation keeps while it streams the rasters: :class:`EvaluationCounts`.

Every metric of the evaluation is a function of these counts (:mod:`.metrics`), so no pixel needs to be held after
its block was added, and adding the blocks in any split of the rows gives the same counts.
"""

from __future__ import annotations

import numpy as np

from ..io.conventions import MAX_CLASSES
from . import metrics
from .config import EvaluationConfig
from .rasters import RowBlock

__all__ = ["EvaluationCounts"]


class EvaluationCounts:
    """Counts gathered block by block over the valid pixels.

    ``B`` = ``config.uncertainty_bins`` equal-width bins over ``[lo, hi]`` (:func:`.metrics.bin_index`),
    ``M`` = ``config.calibration_bins`` equal-width confidence bins over ``[0, 1]``.

    Attributes:
        lo, hi: the range of the uncertainty bins.
        confusion: ``(255 * 255,)`` int64, ``reference * 255 + predicted`` -> pixels.
        hist_correct, hist_wrong: ``(B,)`` int64 correct / wrong pixels per uncertainty bin.
        cal_counts: ``(M,)`` int64 pixels with a valid confidence per confidence bin ``floor(conf * M)``.
        cal_confidence: ``(M,)`` float64 sum of their confidences; ``cal_correct``: ``(M,)`` int64 correct ones.
        patch_accurate, patch_inaccurate: ``(B,)`` int64 patches per bin of their mean uncertainty, split by
            whether at least half of their valid pixels are correct.
    """

    def __init__(self, config: EvaluationConfig, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.bins = config.uncertainty_bins
        self.calibration_bins = config.calibration_bins
        self.patch = config.pavpu_patch_size
        self.confusion = np.zeros(MAX_CLASSES * MAX_CLASSES, dtype=np.int64)
        self.hist_correct = np.zeros(self.bins, dtype=np.int64)
        self.hist_wrong = np.zeros(self.bins, dtype=np.int64)
        self.cal_counts = np.zeros(self.calibration_bins, dtype=np.int64)
        self.cal_confidence = np.zeros(self.calibration_bins, dtype=np.float64)
        self.cal_correct = np.zeros(self.calibration_bins, dtype=np.int64)
        self.patch_accurate = np.zeros(self.bins, dtype=np.int64)
        self.patch_inaccurate = np.zeros(self.bins, dtype=np.int64)

    def add(self, block: RowBlock) -> None:
        """Add the valid pixels of ``block`` to every count."""
        valid = block.valid
        correct = valid & (block.classes == block.reference)
        self.confusion += np.bincount(
            (block.reference[valid] * MAX_CLASSES + block.classes[valid]).ravel(), minlength=MAX_CLASSES * MAX_CLASSES
        )
        bins = metrics.bin_index(block.uncertainty[valid], self.lo, self.hi, self.bins)
        is_correct = correct[valid]
        self.hist_correct += np.bincount(bins[is_correct], minlength=self.bins)
        self.hist_wrong += np.bincount(bins[~is_correct], minlength=self.bins)
        if block.confidence is not None and block.confidence_valid is not None:
            self._add_calibration(block.confidence[block.confidence_valid], correct[block.confidence_valid])
        self._add_patches(valid, correct, block.uncertainty)

    def _add_calibration(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        """Confidence bin ``b = min(floor(conf * M), M - 1)`` of each pixel (``conf`` clipped to ``[0, 1]``):
        add its count, its confidence and whether it is correct (``(n,)`` arrays)."""
        conf = np.clip(confidence, 0.0, 1.0)
        cal_bins = np.clip(np.floor(conf * self.calibration_bins), 0, self.calibration_bins - 1).astype(np.int64)
        self.cal_counts += np.bincount(cal_bins, minlength=self.calibration_bins)
        self.cal_confidence += np.bincount(cal_bins, weights=conf, minlength=self.calibration_bins)
        self.cal_correct += np.bincount(cal_bins[correct], minlength=self.calibration_bins)

    def _add_patches(self, valid: np.ndarray, correct: np.ndarray, uncertainty: np.ndarray) -> None:
        """Patch sums over ``p x p`` cells of ``(h, W)`` arrays; the block starts on a patch boundary (its first
        row is a multiple of ``p``). A patch with ``n`` valid pixels, ``k`` of them correct, has the mean
        uncertainty ``Σ u / n`` and is accurate when ``k / n >= 0.5``; a patch without a valid pixel is skipped."""
        p = self.patch
        rows, cols = valid.shape
        pad = ((0, (-rows) % p), (0, (-cols) % p))
        shape = ((rows + pad[0][1]) // p, p, (cols + pad[1][1]) // p, p)

        def patch_sum(array: np.ndarray) -> np.ndarray:
            return np.pad(array, pad).reshape(shape).sum(axis=(1, 3))

        n_valid = patch_sum(valid.astype(np.int64))
        n_correct = patch_sum(correct.astype(np.int64))
        u_sum = patch_sum(np.where(valid, uncertainty, 0.0))
        has = n_valid > 0
        mean_u = u_sum[has] / n_valid[has]
        accurate = 2 * n_correct[has] >= n_valid[has]  # accuracy >= 0.5, in integers
        bins = metrics.bin_index(mean_u, self.lo, self.hi, self.bins)
        self.patch_accurate += np.bincount(bins[accurate], minlength=self.bins)
        self.patch_inaccurate += np.bincount(bins[~accurate], minlength=self.bins)

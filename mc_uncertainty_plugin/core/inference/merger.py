"""Streaming blend of overlapping tile predictions into finished output rows.

The merger holds accumulators only for the rows that windows still touch: at most one tile height of a
column panel of a region. Rows are handed out (:meth:`StreamingMerger.pop_rows`) as soon as no later window can
reach them, so memory does not depend on the raster height. Windows are clipped to the region: a region's rows
get exactly the sums (same terms, same order) as the same rows of the whole raster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.conventions import CLASS_NODATA, UNCERTAINTY_NODATA
from .tiling import Window
from .uncertainty import argmax_and_max, low_means_unsure, uncertainty_from_accumulators

__all__ = ["FinishedRows", "StreamingMerger", "CLASS_NODATA", "UNCERTAINTY_NODATA"]


@dataclass
class FinishedRows:
    """Final output for rows ``row .. row + classes.shape[0]`` of a panel starting at column ``col``."""

    row: int
    col: int
    classes: np.ndarray  # (h, w) uint8, CLASS_NODATA where no valid input
    uncertainty: np.ndarray | None  # (h, w) float32, UNCERTAINTY_NODATA where no valid input
    confidence: np.ndarray | None = None  # (h, w) float32 max_c p̄_c, UNCERTAINTY_NODATA where no valid input
    probabilities: np.ndarray | None = None  # (C, h, w) float32 p̄, UNCERTAINTY_NODATA where no valid input
    confident: np.ndarray | None = None  # (h, w) uint8 classes, CLASS_NODATA where unsure or no valid input


class StreamingMerger:
    """Weighted blend of tile outputs over rows ``[row0, row1)`` and columns ``[col0, col1)`` of a raster.

    Per pixel it accumulates ``S_p = Σ_k w_k p̄_k`` (``(C,)``), ``S_w = Σ_k w_k`` and, as the uncertainty mode
    needs, ``S_e = Σ_k w_k E_k`` (expected entropy), ``S_i = Σ_k w_k I_k`` (each window's own mutual information
    ``I_k = H[p̄_k] - E_k``) or ``S_v = Σ_k w_k v_k`` (vote shares, variation ratio), where ``w_k`` is the tile
    weight at the pixel, zeroed where the input is nodata. A pixel with ``S_w = 0`` is nodata in every output.

    Windows whose probabilities are not finite at a pixel (a model emitting NaN/inf logits there) mark the
    pixel as broken: it is nodata in every output, whatever other windows say, and is counted in
    :attr:`nonfinite_pixels`.

    Args:
        num_classes: C.
        row_range: ``(row0, row1)``, the rows to blend (the whole raster: ``(0, height)``).
        col_range: ``(col0, col1)``, the columns to blend (a panel).
        buffer_rows: rows kept in memory; at least the tile height.
        uncertainty_mode: a mode of :mod:`.uncertainty`, or ``None`` (no uncertainty output).
        with_confidence: also hand out ``max_c p̄_c``.
        with_probabilities: also hand out the blended ``p̄`` (``(C, h, w)``).
        confident_threshold: also hand out the confident classes: the classes where the uncertainty is at most
            this value (for the margin, where low means unsure: at least it), compared in float32 as the
            uncertainty raster stores it; ``CLASS_NODATA`` elsewhere. Needs ``uncertainty_mode``.
    """

    def __init__(
        self,
        num_classes: int,
        row_range: tuple[int, int],
        col_range: tuple[int, int],
        buffer_rows: int,
        uncertainty_mode: str | None,
        with_confidence: bool = False,
        with_probabilities: bool = False,
        confident_threshold: float | None = None,
    ) -> None:
        if confident_threshold is not None and uncertainty_mode is None:
            raise ValueError("the confident classes need an uncertainty mode.")
        self.num_classes = num_classes
        self.row0, self.row1 = row_range
        self.col0, self.col1 = col_range
        self.uncertainty_mode = uncertainty_mode
        self.with_confidence = with_confidence
        self.with_probabilities = with_probabilities
        self.confident_threshold = None if confident_threshold is None else np.float32(confident_threshold)
        self.top = self.row0  # first row not yet handed out
        rows = min(buffer_rows, self.row1 - self.row0)
        cols = self.col1 - self.col0
        self._probs = np.zeros((num_classes, rows, cols), dtype=np.float32)
        self._weights = np.zeros((rows, cols), dtype=np.float32)
        self._expected = np.zeros((rows, cols), dtype=np.float32) if uncertainty_mode == "expected_entropy" else None
        self._information = (
            np.zeros((rows, cols), dtype=np.float32) if uncertainty_mode == "mutual_information" else None
        )
        self._broken = np.zeros((rows, cols), dtype=bool)
        self.nonfinite_pixels = 0  # pixels with valid input made nodata because the model's output was not finite
        self._votes = (
            np.zeros((num_classes, rows, cols), dtype=np.float32) if uncertainty_mode == "variation_ratio" else None
        )

    def aggregate(
        self,
        window: Window,
        mean_probs: np.ndarray,
        expected_entropy: np.ndarray | None,
        weights: np.ndarray,
        votes: np.ndarray | None = None,
        mutual_information: np.ndarray | None = None,
    ) -> None:
        """Add one window's output.

        Args:
            window: where the output lies in the raster.
            mean_probs: ``(C, h, w) float32`` per-tile p̄, already cropped to the window size.
            expected_entropy: ``(h, w) float32`` per-tile mean_t H[p_t], or ``None`` if not needed.
            weights: ``(h, w) float32`` tile weight times input validity (0 on nodata).
            votes: ``(C, h, w) float32`` per-tile vote shares, or ``None`` if not needed.
            mutual_information: ``(h, w) float32`` per-tile ``H[p̄] - E``, or ``None`` if not needed.
        """
        if window.row < self.top and self.top != self.row0:
            raise RuntimeError(f"window at row {window.row} reaches rows already written (top {self.top}).")
        r0, r1 = max(window.row, self.top), min(window.row + window.height, self.row1)
        c0, c1 = max(window.col, self.col0), min(window.col + window.width, self.col1)
        if r0 >= r1 or c0 >= c1:
            return
        if r1 - self.top > self._weights.shape[0]:
            raise RuntimeError(f"window at row {window.row} exceeds the merge buffer.")
        src = (slice(r0 - window.row, r1 - window.row), slice(c0 - window.col, c1 - window.col))
        dst = slice(c0 - self.col0, c1 - self.col0)
        rows = slice(r0 - self.top, r1 - self.top)
        w = weights[src]
        parts: list[np.ndarray | None] = [mean_probs[(slice(None),) + src]]
        for extra in (expected_entropy, mutual_information, votes):
            parts.append(extra[(Ellipsis,) + src] if extra is not None else None)
        finite = np.isfinite(sum(p.sum(axis=0) if p.ndim == 3 else p for p in parts if p is not None))
        if not finite.all():  # non-negative terms: the sum is finite exactly when every term is
            self._broken[rows, dst] |= ~finite & (w > 0)
            w = w * finite
            parts = [None if p is None else np.where(finite, p, np.float32(0.0)) for p in parts]
        probs, expected, information, shares = parts
        self._weights[rows, dst] += w
        self._probs[:, rows, dst] += probs * w
        for buffer, value in ((self._expected, expected), (self._information, information), (self._votes, shares)):
            if buffer is not None and value is not None:
                buffer[..., rows, dst] += value * w

    def pop_rows(self, until_row: int) -> FinishedRows | None:
        """Finish rows ``[top, until_row)`` (no later window may touch them) and release their memory."""
        until_row = min(until_row, self.row1)
        count = until_row - self.top
        if count <= 0:
            return None
        if count > self._weights.shape[0]:
            raise RuntimeError(f"cannot finish {count} rows at once; the buffer holds {self._weights.shape[0]}.")
        weights = self._weights[:count]
        broken = self._broken[:count]
        self.nonfinite_pixels += int(np.count_nonzero(broken))
        valid = (weights > 0) & ~broken
        safe = np.where(valid, weights, 1.0)
        probs = self._probs[:, :count] / safe
        classes, top = argmax_and_max(probs)
        classes[~valid] = CLASS_NODATA
        uncertainty = None
        if self.uncertainty_mode is not None:

            def blended(buffer: np.ndarray | None) -> np.ndarray | None:
                return buffer[..., :count, :] / safe if buffer is not None else None

            uncertainty = uncertainty_from_accumulators(
                probs,
                blended(self._expected),
                self.uncertainty_mode,
                blended(self._votes),
                mutual_information=blended(self._information),
            )
            uncertainty[~valid] = UNCERTAINTY_NODATA
        confidence = None
        if self.with_confidence:
            confidence = top
            confidence[~valid] = UNCERTAINTY_NODATA
        confident = None
        if uncertainty is not None and self.confident_threshold is not None:
            confident = self._confident(classes, uncertainty, valid)
        if self.with_probabilities:
            probs[:, ~valid] = UNCERTAINTY_NODATA
        finished = FinishedRows(
            self.top,
            self.col0,
            classes,
            uncertainty,
            confidence,
            probs if self.with_probabilities else None,
            confident,
        )
        for buffer in (self._probs, self._weights, self._expected, self._information, self._votes, self._broken):
            if buffer is None:
                continue
            axis = buffer.ndim - 2
            index = (slice(None),) * axis
            keep = buffer.shape[axis] - count
            buffer[index + (slice(0, keep),)] = buffer[index + (slice(count, None),)]
            buffer[index + (slice(keep, None),)] = 0
        self.top = until_row
        return finished

    def _confident(self, classes: np.ndarray, uncertainty: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """``classes`` with the unsure pixels set to ``CLASS_NODATA``: uncertainty above the threshold (margin:
        below it). ``uncertainty`` holds the float32 values written to the uncertainty raster."""
        threshold = self.confident_threshold
        unsure = uncertainty < threshold if low_means_unsure(str(self.uncertainty_mode)) else uncertainty > threshold
        confident = classes.copy()
        confident[unsure & valid] = CLASS_NODATA
        return confident

    def finalize(self) -> FinishedRows | None:
        """Finish every remaining row; calling it again returns ``None``."""
        return self.pop_rows(self.row1)

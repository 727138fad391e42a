"""Overview levels 2, 4, 8, ... computed from the output rows as they are written, not read back at the end.

GDAL's ``BuildOverviews`` re-reads and decompresses the finished raster; for a 150 MP output that is several
seconds after the model is done. :class:`OverviewPyramid` instead halves each written piece level by level:

- ``average``: each level keeps per-pixel sums and counts of the valid (non-nodata) full-resolution pixels
  below it, so an overview pixel is the exact mean of the valid pixels of its ``f x f`` block (nodata where
  there are none; rounded half up for integer rasters) — like GDAL's AVERAGE, without averaging averages;
- nearest (the class raster): the top-left pixel of each ``f x f`` block.

Pieces of one column panel must arrive top to bottom; a level keeps at most one pending row per panel, so
memory does not grow with the raster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

__all__ = ["OverviewPyramid"]


def _halve(values: np.ndarray) -> np.ndarray:
    """Sum of 2 x 2 blocks, the last row/column alone where the size is odd."""
    h, w = values.shape
    padded = np.zeros((h + h % 2, w + w % 2), dtype=values.dtype)
    padded[:h, :w] = values
    return padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]


class OverviewPyramid:
    """Overview pieces of a ``width x height`` raster, level ``k`` (0-based) being factor ``2 ** (k + 1)``.

    Args:
        width, height: full-resolution size.
        levels: number of levels.
        average: mean of valid pixels (True) or top-left pixel (False).
        nodata: the raster's nodata value (not counted in means; written where a block has no valid pixel).
        dtype: the raster's data type.
    """

    def __init__(self, width: int, height: int, levels: int, average: bool, nodata: float, dtype: np.dtype) -> None:
        self.sizes = [(math.ceil(width / 2**k), math.ceil(height / 2**k)) for k in range(levels + 1)]
        self.levels = levels
        self.average = average
        self.nodata = nodata
        self.dtype = np.dtype(dtype)
        self._pending: dict[tuple[int, int], tuple[int, np.ndarray, np.ndarray | None]] = {}  # (level, col) -> row
        self._written = [0] * levels  # pixels handed out per level

    @staticmethod
    def aligned(col: int, levels: int) -> bool:
        """True when a panel starting at ``col`` starts on a whole overview pixel at every level."""
        return col % (2**levels) == 0

    @property
    def complete(self) -> bool:
        """Every pixel of every level has been handed out."""
        return all(self._written[k] == w * h for k, (w, h) in enumerate(self.sizes[1:]))

    def add(self, row: int, col: int, data: np.ndarray) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """Feed full-resolution rows ``data`` at ``(row, col)``; yields ``(level, row, col, pixels)`` to write."""
        if not self.aligned(col, self.levels):
            raise ValueError(f"column {col} is not a multiple of {2**self.levels}.")
        if self.average:
            valid = data != self.nodata
            if data.dtype.kind == "f":
                valid &= np.isfinite(data)
            sums = np.where(valid, data, 0).astype(np.float32)  # float32 sums: exact counts below 2**24
            counts = valid.astype(np.float32)
        else:
            sums, counts = np.asarray(data), None
        yield from self._level(0, row, col, sums, counts)

    def _level(self, k: int, row: int, col: int, sums: np.ndarray, counts: np.ndarray | None):
        """Halve the rows of level ``k`` resolution (k = 0: full resolution) into level ``k + 1``."""
        if k >= self.levels:
            return
        key = (k, col)
        if key in self._pending:  # the odd last row of the previous piece
            pending_row, pending_sums, pending_counts = self._pending.pop(key)
            if pending_row + 1 != row:
                raise ValueError(f"rows of the panel at column {col} did not arrive in order.")
            row = pending_row
            sums = np.concatenate([pending_sums, sums])
            if counts is not None and pending_counts is not None:
                counts = np.concatenate([pending_counts, counts])
        height = self.sizes[k][1]
        rows = sums.shape[0]
        if row % 2:
            raise ValueError(f"a piece of level {k} starts on odd row {row}.")
        if rows % 2 and row + rows < height:  # keep the unpaired last row for the next piece
            self._pending[key] = (row + rows - 1, sums[-1:], None if counts is None else counts[-1:])
            sums = sums[:-1]
            counts = None if counts is None else counts[:-1]
        if not sums.shape[0]:
            return
        if counts is None:
            half_sums, half_counts = sums[0::2, 0::2], None
            pixels = half_sums
        else:
            half_sums, half_counts = _halve(sums), _halve(counts)
            with np.errstate(invalid="ignore", divide="ignore"):
                pixels = np.where(half_counts > 0, half_sums / np.maximum(half_counts, 1), self.nodata)
        if self.dtype.kind in "iu" and counts is not None:  # integer means round half up, as GDAL's AVERAGE
            pixels = np.floor(pixels + 0.5)
        pixels = pixels.astype(self.dtype)
        self._written[k] += pixels.size
        yield k, row // 2, col // 2, pixels
        yield from self._level(k + 1, row // 2, col // 2, half_sums, half_counts)

"""Placements and per-cell statistics for the regions-to-review search (:mod:`.regions`).

Along each axis the boundaries of all placements (patch starts and ends) cut the raster into *cells*, intervals
of at most the stride; every placement is a union of whole cells. :class:`CellReader` reads the uncertainty
raster (and the class raster) in windows of whole cells and reduces each window at once to per-cell sums, valid
counts, maxima and class counts (:class:`CellStats`); every pixel read goes through :func:`read_window`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from ..errors import ParameterError, RasterIOError
from ..io.conventions import CLASS_NODATA
from ..io.grids import describe_grid, same_grid
from ..io.raster_io import open_raster

__all__ = ["CLASS_NODATA", "PlacementAxis", "CellStats", "CellReader", "read_window"]


# -- placements and cells along one axis -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PlacementAxis:
    """Placements and cells along one axis of ``size`` pixels.

    Attributes:
        starts: ``(n,) int64`` first pixel of each placement, increasing.
        length: pixels of a patch along this axis (``P``, or ``size`` when the raster is shorter).
        bounds: ``(m + 1,) int64`` cell boundaries ``0 = b_0 < ... < b_m = size``.
        first: ``(n,) int64`` index of each placement's first cell; ``stop``: one past its last cell.
    """

    starts: np.ndarray
    length: int
    bounds: np.ndarray
    first: np.ndarray
    stop: np.ndarray

    @classmethod
    def build(cls, size: int, patch: int, stride: int) -> PlacementAxis:
        length = min(patch, size)
        starts = np.arange(0, size - length + 1, stride, dtype=np.int64)
        if starts[-1] != size - length:
            starts = np.append(starts, size - length)
        bounds = np.unique(np.concatenate([starts, starts + length, [0, size]])).astype(np.int64)
        first = np.searchsorted(bounds, starts)
        stop = np.searchsorted(bounds, starts + length)
        return cls(starts, length, bounds, first, stop)

    @property
    def cells(self) -> int:
        return len(self.bounds) - 1

    @property
    def cells_per_patch(self) -> int:
        return int((self.stop - self.first).max())

    def overlapping(self, index: int) -> range:
        """Indices of the placements that overlap placement ``index`` along this axis (itself included)."""
        start = self.starts[index]
        lo = int(np.searchsorted(self.starts, start - self.length, side="right"))
        hi = int(np.searchsorted(self.starts, start + self.length, side="left"))
        return range(lo, hi)

    def max_overlapping(self) -> int:
        lo = np.searchsorted(self.starts, self.starts - self.length, side="right")
        hi = np.searchsorted(self.starts, self.starts + self.length, side="left")
        return int((hi - lo).max())

    def chunks(self, pixels: int) -> Iterator[tuple[int, int]]:
        """Runs of whole cells ``[lo, hi)`` of at most ``pixels`` pixels each (at least one cell)."""
        lo = 0
        while lo < self.cells:
            hi = int(np.searchsorted(self.bounds, self.bounds[lo] + pixels, side="right")) - 1
            hi = min(max(hi, lo + 1), self.cells)
            yield lo, hi
            lo = hi


# -- reading -----------------------------------------------------------------------------------------------------


def read_window(band: gdal.Band, col: int, row: int, cols: int, rows: int) -> np.ndarray | None:
    """``(rows, cols)`` pixels of ``band`` (None on a GDAL error). Every read of the inputs goes through here."""
    try:
        return band.ReadAsArray(col, row, cols, rows)
    except RuntimeError:
        return None


class _Band:
    """Band 1 of an input, read by windows with its validity (nodata value, GDAL mask, NaN / inf)."""

    def __init__(self, key: str, path: str) -> None:
        self.key, self.path = key, path
        self.dataset = open_raster(key, path)
        self.band = self.dataset.GetRasterBand(1)
        flags = self.band.GetMaskFlags()
        self.nodata = self.band.GetNoDataValue() if flags & gdal.GMF_NODATA else None
        self.mask = None if flags & (gdal.GMF_ALL_VALID | gdal.GMF_NODATA) else self.band.GetMaskBand()
        self.block_rows = max(1, self.band.GetBlockSize()[1])

    def release(self, start: int, stop: int) -> None:
        """Drop GDAL's cached blocks once rows ``[start, stop)`` reached or crossed a block boundary.

        Without this GDAL keeps every block read, up to its cache size (5 % of the RAM by default), so memory
        would grow with the raster. A block row cut by ``stop`` may then be read twice, never more.
        """
        if start // self.block_rows != stop // self.block_rows:
            self.dataset.FlushCache()

    def _read(self, band: gdal.Band, col: int, row: int, cols: int, rows: int) -> np.ndarray:
        array = read_window(band, col, row, cols, rows)
        if array is None:
            raise RasterIOError(
                f"{self.key}: reading pixels {col},{row} ({cols} x {rows}) of '{self.path}' "
                f"failed: {gdal.GetLastErrorMsg() or 'unknown GDAL error'}."
            )
        return array

    def read(self, col: int, row: int, cols: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """``(values, valid)``, both ``(rows, cols)``; values as read, valid ``bool``."""
        values = self._read(self.band, col, row, cols, rows)
        valid = np.ones(values.shape, dtype=bool)
        if np.issubdtype(values.dtype, np.floating):
            valid &= np.isfinite(values)
        if self.nodata is not None and not math.isnan(self.nodata):
            valid &= values != np.asarray(self.nodata).astype(values.dtype)
        if self.mask is not None:
            valid &= self._read(self.mask, col, row, cols, rows) > 0
        return values, valid


@dataclass(frozen=True, eq=False)
class CellStats:
    """Per-cell statistics of a band of cell rows: arrays ``(cell rows, cells along x)``, class counts
    ``(cell rows, K, cells along x)`` (K = highest class seen + 1), or None without a class raster."""

    total: np.ndarray  # float64, sum of the valid uncertainties
    valid: np.ndarray  # int64, valid uncertainty pixels
    peak: np.ndarray  # float64, their maximum (-inf where none)
    classes: np.ndarray | None  # int64


def _check_classes(key: str, path: str, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Where ``values`` hold a class (valid and not 255); raises unless those are integers in 0..254."""
    labelled = valid & (values != CLASS_NODATA)
    if values.dtype == np.uint8:
        return labelled
    labels = values[labelled]
    wrong = (labels < 0) | (labels > CLASS_NODATA) | (labels != np.floor(labels))
    if wrong.any():
        raise ParameterError(
            key, path, f"hold class indices 0..254 (255 or its nodata = none); it has {labels[wrong][0]!r}"
        )
    return labelled


def _cell_reduce(
    array: np.ndarray, rows: np.ndarray, cols: np.ndarray, ufunc: np.ufunc = np.add, dtype: type | None = None
) -> np.ndarray:
    """``ufunc`` over each cell of ``array`` ``(h, w)``, cells starting at ``rows`` / ``cols`` (local offsets):
    along each pixel row's segments first (contiguous, ten times faster than down the columns first), then over
    the cell's rows. ``dtype`` is the accumulator (float64 sums of float32 values)."""
    inner = ufunc.reduceat(array, cols, axis=1, dtype=dtype)  # type: ignore[attr-defined]  # (not in numpy's stubs)
    return ufunc.reduceat(inner, rows, axis=0)  # type: ignore[attr-defined]


class CellReader:
    """The uncertainty raster and the optional class raster, checked to share one grid."""

    def __init__(self, uncertainty_path: str, classes_path: str | None = None) -> None:
        self.uncertainty = _Band("UNCERTAINTY", uncertainty_path)
        dataset = self.uncertainty.dataset
        self.width, self.height = dataset.RasterXSize, dataset.RasterYSize
        self.classes = None
        if classes_path is not None:
            self.classes = _Band("CLASSES", classes_path)
            if not same_grid(dataset, self.classes.dataset):
                raise ParameterError(
                    "CLASSES",
                    classes_path,
                    f"have the grid of UNCERTAINTY ({describe_grid(dataset)}); "
                    f"it has {describe_grid(self.classes.dataset)}",
                )

    def release(self, start: int, stop: int) -> None:
        """Called after reading rows ``[start, stop)``: lets both inputs drop their cached blocks."""
        for band in (self.uncertainty, self.classes):
            if band is not None:
                band.release(start, stop)

    def cells(
        self, rows: PlacementAxis, cols: PlacementAxis, row_cells: tuple[int, int], col_chunks: list[tuple[int, int]]
    ) -> CellStats:
        """Read cell rows ``[row_cells)`` chunk by chunk and reduce them to per-cell statistics."""
        r0, r1 = int(rows.bounds[row_cells[0]]), int(rows.bounds[row_cells[1]])
        row_starts = rows.bounds[row_cells[0] : row_cells[1]] - r0
        shape = (len(row_starts), cols.cells)
        total, valid, peak = np.zeros(shape), np.zeros(shape, np.int64), np.full(shape, -np.inf)
        counts: dict[int, np.ndarray] = {}
        for lo, hi in col_chunks:
            c0, c1 = int(cols.bounds[lo]), int(cols.bounds[hi])
            col_starts = cols.bounds[lo:hi] - c0
            window = (c0, r0, c1 - c0, r1 - r0)
            values, ok = self.uncertainty.read(*window)
            if not np.issubdtype(values.dtype, np.floating):
                values = values.astype(np.float64)
            holes = not ok.all()
            if holes:
                np.copyto(values, -np.inf, where=~ok)
            peak[:, lo:hi] = _cell_reduce(values, row_starts, col_starts, np.maximum)
            if holes:
                np.copyto(values, 0.0, where=~ok)
            total[:, lo:hi] = _cell_reduce(values, row_starts, col_starts, dtype=np.float64)
            valid[:, lo:hi] = _cell_reduce(ok, row_starts, col_starts, dtype=np.int64)
            if self.classes is not None:
                raw, raw_ok = self.classes.read(*window)
                labelled = _check_classes("CLASSES", self.classes.path, raw, raw_ok)
                for label in np.flatnonzero(np.bincount(raw[labelled].astype(np.int64), minlength=1)):
                    per_cell = counts.setdefault(int(label), np.zeros(shape, np.int64))
                    per_cell[:, lo:hi] = _cell_reduce(labelled & (raw == label), row_starts, col_starts, dtype=np.int64)
        classes = None
        if self.classes is not None:
            classes = np.zeros((shape[0], max(counts, default=-1) + 1, shape[1]), np.int64)
            for label, per_cell in counts.items():
                classes[:, label, :] = per_cell
        return CellStats(total, valid, peak, classes)

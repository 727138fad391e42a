"""Regions to review: the most uncertain square patches of an uncertainty raster, ranked, not overlapping.

What a labeller (or a reviewer of the predictions) steps through: the ``count`` patches of ``P x P`` pixels
(``P`` = PATCH_SIZE) with the highest mean uncertainty, no two of them overlapping. Definitions, for a raster of
``W x H`` pixels and a stride ``S`` (default ``max(1, P // 4)``):

- **Placements.** Along x, patches start at ``0, S, 2S, ...`` up to ``W - P``, plus ``W - P`` itself when that
  grid misses it: every pixel is in some placement and every patch is a whole ``P x P`` square inside the
  raster. Along an axis where the raster is shorter than ``P`` there is one placement, clipped to the raster.
  The same along y. A stride finer than ``P`` lets a patch centre on a hot spot (off by at most ``S / 2``
  pixels per axis) instead of cutting it in two, as a fixed grid of ``P``-steps would.
- **Statistics** of a placement over its valid pixels (not the band's nodata, finite, not masked by GDAL):
  ``mean_uncertainty`` and ``max_uncertainty``; ``valid_fraction`` = valid pixels / pixels of the patch; with a
  class raster, ``dominant_class`` = the most frequent class among its pixels with a valid class (0..254, not the
  class band's nodata, not 255; ties go to the smaller class index; None when there is none).
- **Skipped:** placements with ``valid_fraction < min_valid_fraction`` (0.5), i.e. mostly nodata.
- **Selection:** the greedy non-maximum suppression of object detectors. The remaining placements are taken in order
  of mean uncertainty, highest first (ties: upper row first, then left column first); one is kept unless it
  overlaps a kept one, until ``count`` are kept. ``rank`` 1 is the first kept.

**Streaming.** The boundaries of all placements cut each axis into *cells* (intervals of at most ``S``
pixels); every placement is a union of whole cells. The rasters are read in windows of whole cells holding at
most ``max_read_pixels`` pixels (a band of cell rows, split into column chunks on wide rasters), reduced at once
to per-cell sums, valid counts, maxima and class counts. A placement's statistics are sums (maxima) over its
cells, added in a fixed order, so the result does not depend on the window sizes. Only the cell rows that a
placement still waiting to be completed needs are kept, about ``P / S + 1`` of them, and at most ``pool_size``
candidates plus one row of placements: memory does not grow with the raster's height, only with its width
divided by ``S`` (and the number of classes).

**Exact with a bounded pool.** Let ``B`` be the most placements that one placement overlaps (itself included):
``B = Bx * By`` with ``Bx`` the most x-starts closer than ``P`` to one x-start (``2 * ceil(P / S) - 1`` on a
regular grid, one more next to the extra placement at the edge; 7 x 7 = 49 for the default stride) and ``By``
likewise. Walking the ranked list, the greedy keeps a placement or drops it because it overlaps one kept before
it; each of the first ``count - 1`` kept ones causes at most ``B - 1`` drops, so the last one kept is at most at
position ``(count - 1) * B + 1``. Keeping just that many of the best placements (``pool_size``) gives the same
patches as ranking every placement in memory, and in the worst case (a hill whose best placement's neighbours
all outrank everything else) no fewer would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ParameterError, ReviewCancelled
from .cells import CLASS_NODATA, CellReader, CellStats, PlacementAxis

__all__ = [
    "CLASS_NODATA",
    "ReviewConfig",
    "ReviewPatch",
    "ReviewResult",
    "find_review_regions",
]


@dataclass(frozen=True)
class ReviewConfig:
    """Which raster to search and what to return.

    Attributes:
        uncertainty_path: the uncertainty raster (UNCERTAINTY), band 1; higher = less sure.
        classes_path: optional class raster on the same grid (CLASSES), band 1, class index per pixel.
        patch_size: side ``P`` of the square patches in pixels (PATCH_SIZE).
        count: how many patches to return at most (COUNT).
        stride: step ``S`` between placements, ``1 <= S <= P``; None = ``max(1, P // 4)``.
        min_valid_fraction: placements with a smaller share of valid pixels are skipped, in ``(0, 1]``.
        max_read_pixels: the most pixels read from a raster at once (a window is never smaller than one
            cell of at most ``S x S`` pixels).
    """

    uncertainty_path: str
    classes_path: str | None = None
    patch_size: int = 256
    count: int = 20
    stride: int | None = None
    min_valid_fraction: float = 0.5
    max_read_pixels: int = 1 << 22

    def __post_init__(self) -> None:
        for key, path, optional in (
            ("UNCERTAINTY", self.uncertainty_path, False),
            ("CLASSES", self.classes_path, True),
        ):
            if optional and path is None:
                continue
            if not isinstance(path, (str, os.PathLike)) or not str(path):
                raise ParameterError(key, path, "be a raster path")
        object.__setattr__(self, "uncertainty_path", str(self.uncertainty_path))
        if self.classes_path is not None:
            object.__setattr__(self, "classes_path", str(self.classes_path))
        for key, value in (
            ("PATCH_SIZE", self.patch_size),
            ("COUNT", self.count),
            ("max_read_pixels", self.max_read_pixels),
        ):
            if not _is_int(value) or value < 1:
                raise ParameterError(key, value, "be an integer >= 1")
        stride = max(1, self.patch_size // 4) if self.stride is None else self.stride
        if not _is_int(stride) or not 1 <= stride <= self.patch_size:
            raise ParameterError("stride", self.stride, f"be an integer in 1..PATCH_SIZE ({self.patch_size})")
        object.__setattr__(self, "stride", int(stride))
        fraction = self.min_valid_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
            raise ParameterError("min_valid_fraction", fraction, "be a number in (0, 1]")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ReviewPatch:
    """One selected patch: pixels ``[col, col + width) x [row, row + height)`` of the uncertainty raster."""

    rank: int
    col: int
    row: int
    width: int
    height: int
    mean_uncertainty: float
    max_uncertainty: float
    valid_fraction: float
    dominant_class: int | None


@dataclass(frozen=True, eq=False)
class ReviewResult:
    """The selected patches (best first) and what they were chosen from.

    Attributes:
        patches: at most ``count`` patches, ``rank`` 1, 2, ... in this order.
        width, height: the raster's size in pixels.
        geotransform: GDAL's six coefficients, None when the raster has no georeferencing.
        projection: the raster's CRS as WKT ("" when it has none).
        placements: how many placements were considered.
        eligible: how many of them had enough valid pixels.
        has_classes: whether a class raster was given (``dominant_class`` is then meaningful).
    """

    patches: tuple[ReviewPatch, ...]
    width: int
    height: int
    geotransform: tuple[float, ...] | None
    projection: str
    placements: int
    eligible: int
    has_classes: bool


# -- candidates --------------------------------------------------------------------------------------------------

_FIELDS = ("mean", "peak", "fraction", "dominant", "ix", "iy")


def _row_candidates(cells: list[CellStats], cols: PlacementAxis, area: int) -> dict[str, np.ndarray]:
    """Statistics of every placement along x of one row of placements, whose cell rows are ``cells`` (top first).

    Returns:
        ``(n,)`` arrays, ``n`` = placements along x: ``mean``, ``peak``, ``fraction`` (float64), ``dominant``
        (-1 = none), ``ix`` (placement index along x), ``iy`` (zeros, for the caller to fill), ``valid``.
    """
    total = sum((c.total for c in cells), np.zeros(cols.cells))  # fixed order: top to bottom
    valid = sum((c.valid for c in cells), np.zeros(cols.cells, np.int64))
    peak = np.maximum.reduce([c.peak for c in cells])
    histograms = [c.classes for c in cells if c.classes is not None]
    classes = None
    if histograms:
        classes = np.zeros((max(h.shape[0] for h in histograms), cols.cells), np.int64)
        for histogram in histograms:
            classes[: histogram.shape[0]] += histogram
    n = len(cols.starts)
    w_total, w_valid, w_peak = np.zeros(n), np.zeros(n, np.int64), np.full(n, -np.inf)
    w_classes = None if classes is None else np.zeros((classes.shape[0], n), np.int64)
    for offset in range(cols.cells_per_patch):  # fixed order: left to right
        index = cols.first + offset
        inside = index < cols.stop
        index = np.minimum(index, cols.cells - 1)
        w_total += np.where(inside, total[index], 0.0)
        w_valid += np.where(inside, valid[index], 0)
        w_peak = np.maximum(w_peak, np.where(inside, peak[index], -np.inf))
        if w_classes is not None and classes is not None:
            w_classes += np.where(inside, classes[:, index], 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = w_total / w_valid
    if w_classes is None or w_classes.shape[0] == 0:
        dominant = np.full(n, -1, np.int64)
    else:
        dominant = np.where(w_classes.sum(axis=0) > 0, np.argmax(w_classes, axis=0), -1)
    return {
        "mean": mean,
        "peak": w_peak,
        "fraction": w_valid / area,
        "dominant": dominant,
        "ix": np.arange(n, dtype=np.int64),
        "iy": np.zeros(n, np.int64),
        "valid": w_valid,
    }


def _ranked(pool: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of ``pool`` best first: mean uncertainty descending, then upper row, then left column."""
    return np.lexsort((pool["ix"], pool["iy"], -pool["mean"]))


class _Pool:
    """The best ``size`` eligible candidates seen so far; rows are gathered and trimmed once they exceed ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = {
            name: np.zeros(0, np.float64 if name in ("mean", "peak", "fraction") else np.int64) for name in _FIELDS
        }
        self.parts: list[dict[str, np.ndarray]] = []
        self.waiting = 0
        self.eligible = 0

    def add(self, candidates: dict[str, np.ndarray], keep: np.ndarray) -> None:
        self.eligible += int(keep.sum())
        self.parts.append({name: candidates[name][keep] for name in _FIELDS})
        self.waiting += int(keep.sum())
        if self.waiting > self.size:
            self.trim()

    def trim(self) -> None:
        """Merge the waiting rows and keep the best ``size``."""
        merged = {name: np.concatenate([self.data[name]] + [part[name] for part in self.parts]) for name in _FIELDS}
        best = _ranked(merged)[: self.size]
        self.data = {name: values[best] for name, values in merged.items()}
        self.parts, self.waiting = [], 0


def _select(pool: dict[str, np.ndarray], rows: PlacementAxis, cols: PlacementAxis, count: int) -> list[int]:
    """Greedy non-overlapping selection over ``pool``; the indices kept, best first."""
    blocked: set[tuple[int, int]] = set()
    kept: list[int] = []
    for index in _ranked(pool):
        ix, iy = int(pool["ix"][index]), int(pool["iy"][index])
        if (ix, iy) in blocked:
            continue
        kept.append(int(index))
        if len(kept) == count:
            break
        blocked.update((a, b) for a in cols.overlapping(ix) for b in rows.overlapping(iy))
    return kept


# -- the search --------------------------------------------------------------------------------------------------


def _scan(
    inputs: CellReader,
    config: ReviewConfig,
    rows: PlacementAxis,
    cols: PlacementAxis,
    pool: _Pool,
    progress: Callable[[float], None] | None,
    is_cancelled: Callable[[], bool] | None,
) -> None:
    """Stream the rasters by bands of cell rows; every completed row of placements goes into ``pool``."""
    area = rows.length * cols.length
    stored: dict[int, CellStats] = {}  # cell row -> its statistics, as a one-row CellStats
    pending = 0  # next row of placements (index into rows.starts) to complete
    for lo, hi in rows.chunks(max(1, config.max_read_pixels // inputs.width)):
        if is_cancelled is not None and is_cancelled():
            raise ReviewCancelled("The search for regions to review was cancelled.")
        height = int(rows.bounds[hi] - rows.bounds[lo])
        band = inputs.cells(rows, cols, (lo, hi), list(cols.chunks(max(1, config.max_read_pixels // height))))
        inputs.release(int(rows.bounds[lo]), int(rows.bounds[hi]))
        for i in range(hi - lo):
            stored[lo + i] = CellStats(
                band.total[i], band.valid[i], band.peak[i], None if band.classes is None else band.classes[i]
            )
        while pending < len(rows.starts) and rows.stop[pending] <= hi:
            needed = range(int(rows.first[pending]), int(rows.stop[pending]))
            candidates = _row_candidates([stored[r] for r in needed], cols, area)
            candidates["iy"][:] = pending
            keep = (candidates["valid"] > 0) & (candidates["fraction"] >= config.min_valid_fraction)
            pool.add(candidates, keep)
            pending += 1
        if pending < len(rows.starts):
            for row in [r for r in stored if r < rows.first[pending]]:
                del stored[row]
        if progress is not None:
            progress(100.0 * float(rows.bounds[hi]) / inputs.height)


def find_review_regions(
    config: ReviewConfig,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> ReviewResult:
    """The ``config.count`` most uncertain non-overlapping patches (see the module docstring for the rules).

    Args:
        config: rasters and settings.
        progress: called with a percentage after each band of rows.
        is_cancelled: polled before each band of rows.

    Returns:
        The patches, best first, and the raster's grid.

    Raises:
        ParameterError: a raster is missing or unreadable, CLASSES is on another grid or holds non-class values.
        RasterIOError: reading failed midway.
        ReviewCancelled: ``is_cancelled`` returned True.
    """
    inputs = CellReader(config.uncertainty_path, config.classes_path)
    stride = int(config.stride or 1)  # set by ReviewConfig (P // 4 when not given)
    rows = PlacementAxis.build(inputs.height, config.patch_size, stride)
    cols = PlacementAxis.build(inputs.width, config.patch_size, stride)
    placements = len(rows.starts) * len(cols.starts)
    overlaps = rows.max_overlapping() * cols.max_overlapping()
    pool = _Pool(min(placements, (config.count - 1) * overlaps + 1))
    _scan(inputs, config, rows, cols, pool, progress, is_cancelled)
    pool.trim()
    data = pool.data
    patches = tuple(
        ReviewPatch(
            rank=rank,
            col=int(cols.starts[data["ix"][i]]),
            row=int(rows.starts[data["iy"][i]]),
            width=cols.length,
            height=rows.length,
            mean_uncertainty=float(data["mean"][i]),
            max_uncertainty=float(data["peak"][i]),
            valid_fraction=float(data["fraction"][i]),
            dominant_class=int(data["dominant"][i]) if data["dominant"][i] >= 0 else None,
        )
        for rank, i in enumerate(_select(data, rows, cols, config.count), start=1)
    )
    dataset = inputs.uncertainty.dataset
    return ReviewResult(
        patches=patches,
        width=inputs.width,
        height=inputs.height,
        geotransform=dataset.GetGeoTransform(can_return_null=True),
        projection=dataset.GetProjection() or "",
        placements=placements,
        eligible=pool.eligible,
        has_classes=inputs.classes is not None,
    )

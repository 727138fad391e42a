"""Blocks: the raster cut into rectangles that separate processes compute, and how big they should be.

A block is a :class:`~..inference.plan.Region` of the *global* window grid (:func:`~..inference.engine.run_region`
computes it exactly as the whole run computes those pixels). Block edges lie on multiples of an alignment unit
per axis, ``lcm(256, step)``: 256 so that a block file's 256 px tiles and overview pixels coincide with those of
the whole raster, the step so that a cut between two blocks is crossed by as few windows as possible (with
512 px tiles and a 256 px step, one row or column of windows).

Every window that touches a block runs in that block, so windows crossing a cut run twice (in a job array; on
Dask they run once and the blocks share their results, :mod:`.seams`). The *halo overhead*
of a layout is the windows computed over all blocks divided by the windows of the whole run; it factorises per
axis: ``(sum_i rows_i) x (sum_j cols_j) / (grid rows x grid cols)``, where ``rows_i`` counts the grid rows whose
windows touch block row ``i``.

:func:`choose_layout` with BLOCK_SIZE 0 picks the block shape (multiples of the unit, at most
:data:`MAX_BLOCK_EDGE` px a side) by the estimated wall time on ``slots`` parallel workers (the longest worker's
windows under a longest-first assignment, plus a small cost per block): of the shapes within 5 % of the fastest
estimate, the one that computes the fewest windows (an estimate is not worth more halo than that). Few workers and a small
raster give a few big blocks (4096 x 4096 px, 512/256 tiles, two workers: two 2048 x 4096 halves, overhead
16/15 = 1.067); a country-wide raster gives blocks of 8192 x 8192 px (overhead (33/32)^2 = 1.063).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import ParameterError
from ..inference.plan import Region
from ..inference.tiling import TileGrid

__all__ = [
    "OUTPUT_TILE",
    "MAX_BLOCK_EDGE",
    "BlockLayout",
    "alignment_unit",
    "parse_block_size",
    "windows_touching",
    "block_window_counts",
    "halo_overhead",
    "choose_layout",
]

OUTPUT_TILE = 256  # the 256 px tiles of every GeoTIFF written (raster_io.GeoTiffWriter.BLOCK)
MAX_BLOCK_EDGE = 8192  # px; bounds what a lost worker or a cancel throws away, and one block's run time
_MAX_UNIT = 4096  # an lcm(256, step) above this (an odd step) falls back to 256: cuts off the step cost a window
_BLOCK_COST = 0.5  # windows' worth of fixed work per block (files, overviews, scheduling), for choose_layout
_EXACT_SCHEDULE_LIMIT = 4096  # blocks; above it the schedule estimate is total / slots + the largest block
_TIME_TOLERANCE = 0.05  # among layouts within 5 % of the fastest estimate, the one computing the fewest windows


@dataclass(frozen=True)
class BlockLayout:
    """Blocks of ``block_shape`` px over a ``raster_shape`` raster, row-major; the last row and column of
    blocks are cut at the raster's edge.

    Attributes:
        raster_shape: ``(height, width)`` of the raster.
        block_shape: ``(height, width)`` of a block, multiples of the alignment unit.
    """

    raster_shape: tuple[int, int]
    block_shape: tuple[int, int]

    @property
    def rows(self) -> int:
        return math.ceil(self.raster_shape[0] / self.block_shape[0])

    @property
    def cols(self) -> int:
        return math.ceil(self.raster_shape[1] / self.block_shape[1])

    def __len__(self) -> int:
        return self.rows * self.cols

    def region(self, index: int) -> Region:
        """Block ``index`` (row-major, 0-based) as a region of the raster."""
        if not 0 <= index < len(self):
            raise ParameterError("block", index, f"be in 0..{len(self) - 1} (the job has {len(self)} blocks)")
        (height, width), (bh, bw) = self.raster_shape, self.block_shape
        row, col = (index // self.cols) * bh, (index % self.cols) * bw
        return Region(row, col, min(bh, height - row), min(bw, width - col))

    def __iter__(self) -> Iterator[Region]:
        return (self.region(index) for index in range(len(self)))


def alignment_unit(step_shape: tuple[int, int]) -> tuple[int, int]:
    """Per axis ``lcm(256, step)``, or 256 when that exceeds 4096 px (an odd step)."""
    units = []
    for step in step_shape:
        unit = OUTPUT_TILE * step // math.gcd(OUTPUT_TILE, step)
        units.append(unit if unit <= _MAX_UNIT else OUTPUT_TILE)
    return units[0], units[1]


def parse_block_size(value: object) -> int:
    """BLOCK_SIZE as an int: 0 (automatic) or a number of pixels >= 1 (rounded up to the alignment later).

    Raises:
        ParameterError: naming BLOCK_SIZE when the value is not a non-negative integer.
    """
    requirement = "be 0 (automatic) or a block edge in pixels (rounded up to a multiple of 256 and of the step)"
    if isinstance(value, bool):
        raise ParameterError("BLOCK_SIZE", value, requirement)
    if value is None:
        return 0
    try:
        number = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    except ValueError:
        raise ParameterError("BLOCK_SIZE", value, requirement) from None
    if number < 0 or (isinstance(value, float) and not value.is_integer()):
        raise ParameterError("BLOCK_SIZE", value, requirement)
    return number


def windows_touching(starts: Sequence[int], window: int, cuts: Sequence[int]) -> list[int]:
    """Per block along one axis, how many window starts of the grid touch it.

    Args:
        starts: the grid's window starts along the axis (strictly increasing).
        window: the window length along the axis (the tile, or the raster when it is smaller).
        cuts: block boundaries ``0 = c_0 < c_1 < ... < c_n = length``.

    Returns:
        ``n`` counts: starts ``s`` with ``s < c_{i+1}`` and ``s + window > c_i``.
    """
    counts = []
    for begin, end in zip(cuts, cuts[1:]):
        first = bisect.bisect_right(starts, begin - window)  # first start with s + window > begin
        last = bisect.bisect_left(starts, end)  # first start with s >= end
        counts.append(max(0, last - first))
    return counts


def _cuts(length: int, edge: int) -> list[int]:
    return list(range(0, length, edge)) + [length]


def _axis_counts(grid: TileGrid, layout: BlockLayout) -> tuple[list[int], list[int]]:
    rows = windows_touching(grid.row_starts, grid.window_height, _cuts(layout.raster_shape[0], layout.block_shape[0]))
    cols = windows_touching(grid.col_starts, grid.window_width, _cuts(layout.raster_shape[1], layout.block_shape[1]))
    return rows, cols


def block_window_counts(grid: TileGrid, layout: BlockLayout) -> list[int]:
    """Windows touching each block, row-major (without listing them: a country-wide job has millions)."""
    rows, cols = _axis_counts(grid, layout)
    return [r * c for r in rows for c in cols]


def halo_overhead(grid: TileGrid, layout: BlockLayout) -> float:
    """Windows computed over all blocks / windows of the whole run (1.0 for a single block)."""
    rows, cols = _axis_counts(grid, layout)
    return sum(rows) * sum(cols) / len(grid)


def _longest_worker(loads: list[int], slots: int) -> float:
    """Longest-first assignment of ``loads`` to ``slots`` workers: the most windows one worker runs."""
    workers = [0] * max(1, min(slots, len(loads)))
    for load in sorted(loads, reverse=True):
        heapq.heapreplace(workers, workers[0] + load)
    return float(max(workers))


def _estimated_time(rows: list[int], cols: list[int], slots: int) -> float:
    if len(rows) * len(cols) > _EXACT_SCHEDULE_LIMIT:  # without listing every block
        busiest = sum(rows) * sum(cols) / slots + max(rows) * max(cols)
    else:
        busiest = _longest_worker([r * c for r in rows for c in cols], slots)
    return busiest + _BLOCK_COST * len(rows) * len(cols) / slots


def choose_layout(grid: TileGrid, block_size: int = 0, slots: int = 1) -> BlockLayout:
    """The block layout of a run over ``grid``.

    Args:
        grid: the run's global window grid.
        block_size: BLOCK_SIZE: 0 chooses automatically (module docstring); otherwise square blocks of that edge
            rounded up to the alignment unit of each axis.
        slots: blocks that run at the same time (the workers' threads).

    Returns:
        The layout; a raster smaller than one block is one block.
    """
    height, width = grid.raster_shape
    unit_h, unit_w = alignment_unit(grid.step_shape)
    if block_size:
        return BlockLayout(
            (height, width), (math.ceil(block_size / unit_h) * unit_h, math.ceil(block_size / unit_w) * unit_w)
        )
    row_counts = {
        edge: windows_touching(grid.row_starts, grid.window_height, _cuts(height, edge))
        for edge in _candidate_edges(height, unit_h)
    }
    col_counts = {
        edge: windows_touching(grid.col_starts, grid.window_width, _cuts(width, edge))
        for edge in _candidate_edges(width, unit_w)
    }
    scores = []  # (estimated time, windows computed, -area, shape)
    for edge_h, rows in row_counts.items():
        for edge_w, cols in col_counts.items():
            scores.append(
                (_estimated_time(rows, cols, max(1, slots)), sum(rows) * sum(cols), -edge_h * edge_w, (edge_h, edge_w))
            )
    fastest = min(score[0] for score in scores)
    near = [score for score in scores if score[0] <= fastest * (1 + _TIME_TOLERANCE)]
    return BlockLayout((height, width), min(near, key=lambda score: score[1:3])[3])


def _candidate_edges(length: int, unit: int) -> list[int]:
    """Multiples of ``unit`` up to the first that covers ``length``, at most :data:`MAX_BLOCK_EDGE` (or one unit)."""
    top = min(math.ceil(length / unit) * unit, max(unit, MAX_BLOCK_EDGE // unit * unit))
    return list(range(unit, top + 1, unit))

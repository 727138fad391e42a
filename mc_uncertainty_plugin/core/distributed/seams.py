"""Windows crossing a cut between blocks: on Dask they run once and every block they touch takes their results.

A block runs every window that touches it (:mod:`.blocks`), so a window crossing a cut would run in each block it
touches: the halo overhead. On Dask those windows run once instead, in *seam tasks* of a few batches
(:func:`seam_tasks`, computed by :func:`~..inference.window_outputs.compute_windows`), and each block they touch
blends their results as given (``run_region(given=...)``). A window's result depends only on the job and the
window, so the blocks blend the very floats they would have computed, in the same order: the mosaic stays bit for
bit the in-process run's. The job-array fallback (``run-block``) has no way to pass results between tasks and
keeps computing the halo.

A block waits for its seam tasks. The seam tasks of a block are submitted just before it, and only those no
earlier block needed, so the cluster holds the results of the seams of the blocks in flight, not of the raster.
Windows shared with a block already done (a resumed job) are shared only among the blocks still to run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..inference.plan import balanced_split
from ..inference.tiling import TileGrid, Window
from .blocks import BlockLayout

__all__ = ["SeamTask", "shared_windows", "seam_tasks"]

_MAX_BATCHES = 4  # batches per seam task at most: a block waits for its seams, so they come in small tasks


@dataclass(frozen=True)
class SeamTask:
    """Windows run together for the blocks that touch them (``blocks``, ascending)."""

    windows: tuple[Window, ...]
    blocks: tuple[int, ...]


def _axis_blocks(starts: Sequence[int], window: int, length: int, edge: int) -> list[range]:
    """For each grid row (or column) of windows: the block rows (or columns) those windows touch."""
    return [range(start // edge, (min(start + window, length) - 1) // edge + 1) for start in starts]


def shared_windows(grid: TileGrid, layout: BlockLayout, blocks: Sequence[int]) -> dict[Window, tuple[int, ...]]:
    """The windows of ``grid`` that touch two or more of ``blocks``, in grid order, each with those blocks."""
    (height, width), (edge_h, edge_w) = layout.raster_shape, layout.block_shape
    rows = _axis_blocks(grid.row_starts, grid.window_height, height, edge_h)
    cols = _axis_blocks(grid.col_starts, grid.window_width, width, edge_w)
    wanted = set(blocks)
    crossing_rows = {i for i, touched in enumerate(rows) if len(touched) > 1}
    crossing_cols = [j for j, touched in enumerate(cols) if len(touched) > 1]
    shared = {}
    for i in range(len(rows)):
        for j in range(len(cols)) if i in crossing_rows else crossing_cols:
            touched = tuple(r * layout.cols + c for r in rows[i] for c in cols[j] if r * layout.cols + c in wanted)
            if len(touched) > 1:
                shared[grid.window(i, j)] = touched
    return shared


def seam_tasks(
    grid: TileGrid, layout: BlockLayout, blocks: Sequence[int], batch_size: int, slots: int
) -> dict[int, list[SeamTask]]:
    """The seam tasks to submit just before each block of ``blocks`` (submission order): the shared windows no
    earlier block needs, grouped by the blocks that take them, in tasks of whole batches, at most
    :data:`_MAX_BATCHES`, and small enough that the ``slots`` workers share a group."""
    order = {block: position for position, block in enumerate(blocks)}
    groups: dict[int, dict[tuple[int, ...], list[Window]]] = {}
    for window, touched in shared_windows(grid, layout, blocks).items():
        first = min(touched, key=order.__getitem__)
        groups.setdefault(first, {}).setdefault(touched, []).append(window)
    tasks: dict[int, list[SeamTask]] = {}
    for first, by_blocks in groups.items():
        for touched, windows in by_blocks.items():
            share = math.ceil(len(windows) / max(1, slots) / batch_size) * batch_size
            cap = min(_MAX_BATCHES * batch_size, max(batch_size, share))
            tasks.setdefault(first, []).extend(SeamTask(part, touched) for part in balanced_split(windows, cap))
    return tasks

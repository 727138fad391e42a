"""Sliding windows over a raster and the importance weights that blend them.

A :class:`TileGrid` covers a ``(height, width)`` raster with ``tile``-sized windows every ``step`` pixels. The
last window of each axis is shifted inwards so that it ends at the raster edge; along an axis shorter than the
tile there is one window, padded by the reader and cropped back by the merger.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError

__all__ = ["Window", "TileGrid", "axis_starts", "tile_weight_map"]


def axis_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets of the windows along one axis.

    Starts are ``0, step, 2*step, ...`` while the window fits, plus ``length - tile`` so the last window ends at
    the edge. The list is strictly increasing, so a pixel row is final once the next start is beyond it.

    >>> axis_starts(10, 4, 3)
    [0, 3, 6]
    >>> axis_starts(3, 4, 2)
    [0]
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class Window:
    """A window of the raster: its top-left pixel and the size actually inside the raster.

    ``height``/``width`` are smaller than the tile only when the raster itself is smaller than the tile.
    ``grid_row``/``grid_col`` index the window in the grid; dropout masks are keyed by ``(row, col)``.
    """

    row: int
    col: int
    height: int
    width: int
    grid_row: int
    grid_col: int

    @property
    def key(self) -> tuple[int, int]:
        """Position key, independent of processing order and batching."""
        return self.row, self.col


class TileGrid:
    """The windows covering a raster, in rows of windows sharing a start row.

    Args:
        raster_shape: (height, width) of the raster in pixels.
        tile_shape: (height, width) of a model input tile.
        step_shape: (height, width) stride between windows, each in ``1 .. tile``.
    """

    def __init__(self, raster_shape: tuple[int, int], tile_shape: tuple[int, int], step_shape: tuple[int, int]):
        height, width = raster_shape
        if height < 1 or width < 1:
            raise ParameterError("INPUT", f"{width}x{height} pixels", "have at least one pixel")
        for axis in (0, 1):
            if not 1 <= step_shape[axis] <= tile_shape[axis]:
                raise ParameterError("STEP_SHAPE", step_shape, f"be in 1..{tile_shape[axis]} (MODEL_INPUT_SHAPE)")
        self.raster_shape = (int(height), int(width))
        self.tile_shape = (int(tile_shape[0]), int(tile_shape[1]))
        self.step_shape = (int(step_shape[0]), int(step_shape[1]))
        self.row_starts = axis_starts(height, tile_shape[0], step_shape[0])
        self.col_starts = axis_starts(width, tile_shape[1], step_shape[1])
        self.window_height = min(tile_shape[0], height)
        self.window_width = min(tile_shape[1], width)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def window(self, grid_row: int, grid_col: int) -> Window:
        return Window(
            self.row_starts[grid_row],
            self.col_starts[grid_col],
            self.window_height,
            self.window_width,
            grid_row,
            grid_col,
        )

    def windows_in_row(self, grid_row: int, col_range: tuple[int, int] | None = None) -> list[Window]:
        """Windows of one grid row, optionally only those intersecting columns ``[c0, c1)``."""
        c0, c1 = col_range if col_range is not None else (0, self.raster_shape[1])
        return [
            self.window(grid_row, j)
            for j, col in enumerate(self.col_starts)
            if col < c1 and col + self.window_width > c0
        ]

    def __iter__(self) -> Iterator[Window]:
        for i in range(len(self.row_starts)):
            yield from self.windows_in_row(i)


def tile_weight_map(kind: str, shape: tuple[int, int]) -> np.ndarray:
    """Importance weight of each pixel of a tile, ``(H, W) float32`` with values in ``(0, 1]``.

    - ``mean``: ``w = 1`` (plain average of overlapping tiles).
    - ``gaussian``: ``w(y, x) = exp(-(y - cy)^2 / (2 sy^2) - (x - cx)^2 / (2 sx^2))`` with the centre
      ``c = (n - 1) / 2`` and ``s = n / 8`` per axis, floored at ``1e-6`` so every pixel keeps a weight > 0.
    - ``pyramid``: ``w = min(dy, dx)`` with ``d = min(i + 1, n - i) / ceil(n / 2)``: 1 at the centre, falling
      linearly to ``1 / ceil(n / 2)`` at the border.

    Centre pixels get the most weight, so tile borders (where a CNN sees padding) contribute least.
    """
    height, width = shape
    if kind == "mean":
        return np.ones((height, width), dtype=np.float32)
    if kind == "gaussian":
        axes = []
        for n in (height, width):
            centre = (n - 1) / 2.0
            sigma = max(n / 8.0, 1e-3)
            axes.append(np.exp(-((np.arange(n) - centre) ** 2) / (2.0 * sigma**2)))
        weights = np.outer(axes[0], axes[1])
        return np.maximum(weights, 1e-6).astype(np.float32)
    if kind == "pyramid":
        axes = []
        for n in (height, width):
            i = np.arange(n)
            axes.append(np.minimum(i + 1, n - i) / float(np.ceil(n / 2.0)))
        return np.minimum.outer(axes[0], axes[1]).astype(np.float32)
    raise ParameterError("TILE_WEIGHT", kind, "be one of gaussian, pyramid, mean")

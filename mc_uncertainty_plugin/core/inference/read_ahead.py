"""Reading ahead: the next batch of windows is read and normalised in a worker thread while the model runs."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.raster_io import RasterReader
from ..models.loading import Normalization
from .plan import Batch
from .tiling import Window

__all__ = ["LoadedBatch", "ReadAhead"]


@dataclass
class LoadedBatch:
    """A batch as read: the windows that hold valid pixels, their normalised tiles and validity masks."""

    batch: Batch
    windows: list[Window]
    tiles: np.ndarray  # (n, bands, tile_h, tile_w) float32, 0 on padding and nodata
    valids: list[np.ndarray]  # n x (tile_h, tile_w) bool

    @property
    def skipped(self) -> int:
        """Windows of the batch left out because every pixel is nodata."""
        return len(self.batch.windows) - len(self.windows)


class ReadAhead:
    """Reads ``batches`` in order, one ahead: :meth:`next` returns batch i and starts reading batch i + 1.

    The reader is used only from the worker thread; read errors surface in :meth:`next`. Starting a new grid row
    drops GDAL's cached input blocks of the rows above (memory stays flat on big rasters). Use as a context
    manager: leaving it waits for a read in flight (the file must not close under it).
    """

    def __init__(
        self, reader: RasterReader, batches: Sequence[Batch], normalization: Normalization, tile_shape: tuple[int, int]
    ) -> None:
        self.reader = reader
        self.batches = list(batches)
        self.normalization = normalization
        self.tile_shape = tile_shape
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mc_uncertainty_read")
        self._next = 0
        self._pending: Future[LoadedBatch] | None = self._pool.submit(self._load, 0) if self.batches else None

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def next(self) -> LoadedBatch:
        """The next batch (waits for its read); raises ``StopIteration`` after the last one."""
        if self._pending is None:
            raise StopIteration
        loaded = self._pending.result()
        self._next += 1
        self._pending = self._pool.submit(self._load, self._next) if self._next < len(self.batches) else None
        return loaded

    def _load(self, index: int) -> LoadedBatch:
        batch = self.batches[index]
        if index > 0 and (self.batches[index - 1].panel, self.batches[index - 1].grid_row) != (
            batch.panel,
            batch.grid_row,
        ):
            self.reader.release_cache()
        windows, tiles, valids = [], [], []
        for window in batch.windows:
            data, valid = self.reader.read(window, self.tile_shape)
            if not valid.any():  # entirely nodata: nothing to predict
                continue
            windows.append(window)
            tiles.append(np.where(valid, self.normalization.apply(data), 0.0).astype(np.float32))
            valids.append(valid)
        bands = len(self.reader.bands)
        stacked = np.stack(tiles) if tiles else np.zeros((0, bands) + tuple(self.tile_shape), np.float32)
        return LoadedBatch(batch, windows, stacked, valids)

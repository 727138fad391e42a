"""Crash-safe GeoTIFF output, written in row pieces with its overviews streamed.

Every GDAL call works whether GDAL's Python exceptions are on or off (QGIS or another plugin may switch them
on for the whole process): failures are caught both as ``None``/error codes and as ``RuntimeError``.

Outputs are written under a hidden temporary name in the destination folder (:mod:`.output_files`) and renamed
onto the final name only after the last byte and the overviews are written (all outputs of a run together), so a
crash or a cancel never leaves a file at the destination that looks complete.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from osgeo import gdal

from ..errors import RasterIOError
from .output_files import publish_together, temporary_path
from .overviews import OverviewPyramid

__all__ = ["GeoTiffWriter"]

_COMPRESSION_THREADS = 2  # GDAL worker threads compressing output blocks and computing overviews

_GDAL_TYPES = {np.dtype(np.uint8): gdal.GDT_Byte, np.dtype(np.float32): gdal.GDT_Float32}


class _BlockRows:
    """Collects row pieces of one column panel until whole block rows (or the last rows) can be written."""

    def __init__(self, height: int, block: int) -> None:
        self.height, self.block = height, block
        self.pieces: list[np.ndarray] = []
        self.row = self.col = 0

    def add(self, row: int, col: int, piece: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """Buffer ``piece``; returns what is ready: ``[(row, col, rows)]`` (a new panel flushes the old one)."""
        ready = []
        buffered = sum(p.shape[0] for p in self.pieces)
        if self.pieces and (col != self.col or row != self.row + buffered or piece.shape[1] != self.pieces[0].shape[1]):
            ready += self.flush()
            buffered = 0
        if not self.pieces:
            self.row, self.col = row, col
        self.pieces.append(piece)
        end = self.row + buffered + piece.shape[0]
        aligned_end = end if end >= self.height else (end // self.block) * self.block
        if aligned_end > self.row:
            rows = np.concatenate(self.pieces, axis=0)
            count = aligned_end - self.row
            ready.append((self.row, self.col, rows[:count]))
            rest = rows[count:]
            self.pieces = [rest] if rest.shape[0] else []
            self.row = aligned_end
        return ready

    def flush(self) -> list[tuple[int, int, np.ndarray]]:
        if not self.pieces:
            return []
        ready = [(self.row, self.col, np.concatenate(self.pieces, axis=0))]
        self.pieces = []
        return ready


def _describe_dataset(
    dataset: gdal.Dataset,
    geotransform: Sequence[float] | None,
    projection: str,
    gcps: Sequence[gdal.GCP],
    gcp_projection: str,
    metadata: dict[str, str] | None,
) -> None:
    """Georeferencing (a geotransform, else the input's ground control points) and the dataset's metadata."""
    if geotransform is not None:
        dataset.SetGeoTransform(list(geotransform))
    if projection:
        dataset.SetProjection(projection)
    if gcps and geotransform is None:  # georeferenced by ground control points only: carry them over
        dataset.SetGCPs(list(gcps), gcp_projection)
    if metadata:
        dataset.SetMetadata({str(k): str(v) for k, v in metadata.items()})


def _describe_bands(
    dataset: gdal.Dataset,
    description: str,
    band_descriptions: Sequence[str] | None,
    color_table: Sequence[tuple[int, int, int, int]] | None,
) -> None:
    """Band descriptions (one per band, else ``description`` on the first) and the first band's palette."""
    band = dataset.GetRasterBand(1)
    if band_descriptions:
        for number, text in enumerate(band_descriptions[: dataset.RasterCount], start=1):
            dataset.GetRasterBand(number).SetDescription(str(text))
    elif description:
        band.SetDescription(description)
    if color_table:
        table = gdal.ColorTable()
        for index, rgba in enumerate(color_table):
            table.SetColorEntry(index, tuple(int(v) for v in rgba))
        band.SetColorTable(table)
        band.SetColorInterpretation(gdal.GCI_PaletteIndex)


def _empty_overviews(dataset: gdal.Dataset, levels: list[int]) -> bool:
    """Create empty overview bands at ``levels`` (False when GDAL cannot)."""
    try:
        return dataset.BuildOverviews("NONE", levels) == 0
    except RuntimeError:
        return False


class GeoTiffWriter:
    """A tiled, compressed GeoTIFF of one or more bands, written under a temporary name.

    Rows may arrive in any row-contiguous pieces per column panel; they are buffered into whole block rows
    so that every compressed block is written once. Overviews are computed from the rows as they are written,
    band by band (:mod:`.overviews`; GDAL's ``BuildOverviews`` at the end only if a panel is not aligned to the
    coarsest level). Several bands are stored band-interleaved (``INTERLEAVE=BAND``): each band's blocks are
    compressed and written on their own, never read back to add another band. :meth:`finish` closes the temporary file; :meth:`moves` lists the renames that publish it (a run
    publishes all its outputs in one :func:`~.output_files.publish_together`); :meth:`commit` finishes and
    publishes this file alone; :meth:`abort` deletes the temporary file. All are safe to call twice.
    """

    BLOCK = 256

    def __init__(
        self,
        path: str,
        width: int,
        height: int,
        dtype: np.dtype,
        nodata: float,
        geotransform: Sequence[float] | None,
        projection: str,
        description: str = "",
        metadata: dict[str, str] | None = None,
        color_table: Sequence[tuple[int, int, int, int]] | None = None,
        category_names: Sequence[str] | None = None,
        overview_resampling: str = "NEAREST",
        gcps: Sequence[gdal.GCP] = (),
        gcp_projection: str = "",
        bands: int = 1,
        band_descriptions: Sequence[str] | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.temp_path = temporary_path(self.path)
        self.dtype = np.dtype(dtype)
        self.width, self.height = width, height
        self.bands = int(bands)
        self._resampling = overview_resampling
        self._category_names = list(category_names) if category_names else None
        dataset = self._create(nodata)
        _describe_dataset(dataset, geotransform, projection, gcps, gcp_projection, metadata)
        _describe_bands(dataset, description, band_descriptions, color_table)
        self._dataset = dataset
        self._rows = [_BlockRows(height, self.BLOCK) for _ in range(self.bands)]
        levels = self.overview_levels()
        self._pyramids: list[OverviewPyramid] = []  # one per band; empty: BuildOverviews at the end
        self._overview_rows: list[list[_BlockRows]] = []  # [band][level]
        if levels and _empty_overviews(dataset, levels):  # filled while writing
            average = overview_resampling == "AVERAGE"
            self._pyramids = [
                OverviewPyramid(width, height, len(levels), average, float(nodata), self.dtype)
                for _ in range(self.bands)
            ]
            sizes = self._pyramids[0].sizes[1:]
            self._overview_rows = [[_BlockRows(h, self.BLOCK) for _, h in sizes] for _ in range(self.bands)]
        self.done = False

    def _create(self, nodata: float) -> gdal.Dataset:
        """The temporary file: tiled, DEFLATE (compressed by GDAL worker threads, beside the model), band-interleaved
        when several bands, every band's nodata set."""
        options = [
            "TILED=YES",
            f"BLOCKXSIZE={self.BLOCK}",
            f"BLOCKYSIZE={self.BLOCK}",
            "COMPRESS=DEFLATE",
            f"PREDICTOR={3 if self.dtype.kind == 'f' else 2}",
            "BIGTIFF=IF_SAFER",
            f"NUM_THREADS={_COMPRESSION_THREADS}",
            "ZLEVEL=1",
        ] + (["INTERLEAVE=BAND"] if self.bands > 1 else [])
        driver = gdal.GetDriverByName("GTiff")
        try:
            dataset = driver.Create(
                self.temp_path, self.width, self.height, self.bands, _GDAL_TYPES[self.dtype], options
            )
        except RuntimeError:
            dataset = None
        if dataset is None:
            raise RasterIOError(f"cannot create '{self.path}': {gdal.GetLastErrorMsg() or 'GDAL error'}.")
        for number in range(1, self.bands + 1):
            dataset.GetRasterBand(number).SetNoDataValue(float(nodata))
        return dataset

    # -- writing -------------------------------------------------------------------------------------------
    def write(self, row: int, col: int, block: np.ndarray) -> None:
        """Write ``block`` at ``(row, col)``: ``(h, w)`` for one band, ``(bands, h, w)`` for several; rows of one
        panel must arrive top to bottom."""
        block = np.asarray(block, dtype=self.dtype)
        planes = [block] if block.ndim == 2 else list(block)
        if len(planes) != self.bands:
            raise ValueError(f"'{self.path}' has {self.bands} band(s), got a block of {len(planes)}.")
        for index, plane in enumerate(planes):
            for ready in self._rows[index].add(row, col, plane):
                self._write_now(index, *ready)

    def flush(self) -> None:
        """Write buffered rows (end of a column panel)."""
        for index in range(self.bands):
            for ready in self._rows[index].flush():
                self._write_now(index, *ready)
            for level, buffer in enumerate(self._overview_rows[index] if self._overview_rows else ()):
                for ready in buffer.flush():
                    self._write_band(index, level, *ready)

    def _write_now(self, index: int, row: int, col: int, rows: np.ndarray) -> None:
        self._write_band(index, None, row, col, rows)
        if not self._pyramids:
            return
        pyramid = self._pyramids[index]
        if not OverviewPyramid.aligned(col, pyramid.levels):
            self._pyramids, self._overview_rows = [], []  # BuildOverviews at the end instead
            return
        for level, ov_row, ov_col, pixels in pyramid.add(row, col, rows):
            for ready in self._overview_rows[index][level].add(ov_row, ov_col, pixels):
                self._write_band(index, level, *ready)

    def _write_band(self, index: int, level: int | None, row: int, col: int, rows: np.ndarray) -> None:
        """Write rows to band ``index`` (0-based; ``level`` None) or to one of its overviews, and drop them from
        GDAL's cache."""
        band = self._dataset.GetRasterBand(index + 1)
        if level is not None:
            band = band.GetOverview(level)
        try:
            err = band.WriteArray(rows, col, row)
            if err == 0:
                # write the finished blocks now and drop them from GDAL's block cache, which would otherwise grow
                # with the raster (up to GDAL_CACHEMAX, 5 % of RAM by default)
                gdal.ErrorReset()
                band.FlushCache()
                err = 1 if gdal.GetLastErrorType() >= gdal.CE_Failure else 0
        except RuntimeError:
            err = 1
        if err != 0:
            raise RasterIOError(
                f"writing '{self.path}' failed: {gdal.GetLastErrorMsg() or 'GDAL error'} (is the disk full?)."
            )

    # -- completion ----------------------------------------------------------------------------------------
    def overview_levels(self) -> list[int]:
        """Factors 2, 4, 8, ... while the overview keeps at least 32 pixels along the longer side."""
        levels, factor = [], 2
        while math.ceil(max(self.width, self.height) / factor) >= 32:
            levels.append(factor)
            factor *= 2
        return levels

    @property
    def overviews_streamed(self) -> bool:
        """Whether every overview of every band was computed from the rows as written (no ``BuildOverviews``)."""
        return bool(self._pyramids) and all(pyramid.complete for pyramid in self._pyramids)

    def commit(self) -> str:
        """Finish and publish in one step. Returns the final path."""
        self.finish()
        return self.publish()

    def finish(self) -> None:
        """Flush, build overviews and close the temporary file (still under its temporary name)."""
        if self.done or self._dataset is None:
            return
        self.flush()
        dataset = self._dataset
        levels = [] if self.overviews_streamed else self.overview_levels()
        previous = gdal.GetThreadLocalConfigOption("GDAL_NUM_THREADS", None)
        gdal.SetThreadLocalConfigOption("GDAL_NUM_THREADS", str(_COMPRESSION_THREADS))  # overviews in threads
        try:
            failed = bool(levels) and dataset.BuildOverviews(self._resampling, levels) != 0
        except RuntimeError:
            failed = True
        finally:
            gdal.SetThreadLocalConfigOption("GDAL_NUM_THREADS", previous)
        if failed:
            raise RasterIOError(f"building overviews of '{self.path}' failed: {gdal.GetLastErrorMsg()}.")
        if self._category_names:
            dataset.GetRasterBand(1).SetCategoryNames(self._category_names)
        dataset.FlushCache()
        self._dataset = None
        dataset = None

    def moves(self) -> list[tuple[str | None, str]]:
        """The renames that publish the finished file: the raster, and its ``.aux.xml`` sidecar (or, when it
        has none, the removal of an earlier run's sidecar, which would describe the wrong file)."""
        aux = self.temp_path + ".aux.xml"
        return [(self.temp_path, self.path), (aux if os.path.exists(aux) else None, self.path + ".aux.xml")]

    def publish(self) -> str:
        """Rename the finished temporary file (and its sidecar) onto the final path; returns it."""
        if self.done:
            return self.path
        self.finish()
        publish_together(self.moves())
        self.done = True
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file; the final path is left untouched."""
        if self.done:
            return
        self._dataset = None
        for leftover in (self.temp_path, self.temp_path + ".aux.xml"):
            try:
                os.remove(leftover)
            except FileNotFoundError:
                pass
        self.done = True

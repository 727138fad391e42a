"""GDAL raster input (windows, validity masks) and crash-safe GeoTIFF output.

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
from typing import TYPE_CHECKING

import numpy as np
from osgeo import gdal

from ..errors import ParameterError, RasterIOError
from .output_files import publish_together, temporary_path
from .overviews import OverviewPyramid

if TYPE_CHECKING:  # a window of the tile grid: any object with row, col, height and width
    from ..inference.tiling import Window

__all__ = ["open_raster", "RasterReader", "GeoTiffWriter"]

_COMPRESSION_THREADS = 2  # GDAL worker threads compressing output blocks and computing overviews

_GDAL_TYPES = {np.dtype(np.uint8): gdal.GDT_Byte, np.dtype(np.float32): gdal.GDT_Float32}


def open_raster(parameter: str, path: str) -> gdal.Dataset:
    """Open ``path`` read-only as a raster (any GDAL source: a file, a VRT, ``/vsizip/…``, ``/vsicurl/…``).

    Raises:
        ParameterError: naming ``parameter``: the file does not exist, GDAL cannot read it, or it has no band.
    """
    if not os.path.exists(path) and not path.startswith("/vsi"):
        raise ParameterError(parameter, path, "be an existing raster file")
    try:
        dataset = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
    except RuntimeError:
        dataset = None
    if dataset is None:
        raise ParameterError(parameter, path, "be a raster GDAL can read")
    if dataset.RasterCount < 1:
        raise ParameterError(parameter, path, "have at least one raster band")
    return dataset


class RasterReader:
    """Reads windows of selected bands as float32 together with a validity mask.

    Which pixels are nodata (the rule of GDAL's dataset mask and rasterio's ``dataset_mask``):

    - a per-dataset mask (an internal or external ``.msk`` mask, an alpha band, ``NODATA_VALUES`` metadata)
      decides where there is one: nodata where it is 0;
    - otherwise a pixel is nodata only when *every* selected band is nodata there (equals its nodata value, or is
      0 in its own mask band). A band without nodata value or mask is never nodata, so one band without one
      keeps every pixel. A 0 in one band beside valid values in the others is data (e.g. a dark pixel of one
      Landsat band whose nodata value is 0), fed to the model as read;
    - a pixel where any selected band is not finite (NaN, ±inf) is nodata, whatever the rule above says: the
      model cannot take NaN (one would spread through every convolution over it), and any value put in its
      place would be data the raster does not hold.

    Args:
        path: any GDAL-readable raster.
        bands: 1-based band numbers in model order.
    """

    def __init__(self, path: str, bands: Sequence[int] | None = None) -> None:
        self.path = str(path)
        dataset = open_raster("INPUT", self.path)
        self._dataset = dataset
        self.width = dataset.RasterXSize
        self.height = dataset.RasterYSize
        self.band_count = dataset.RasterCount
        self.geotransform = dataset.GetGeoTransform(can_return_null=True)
        self.projection = dataset.GetProjection() or ""
        self.gcps = tuple(dataset.GetGCPs() or ()) if self.geotransform is None else ()
        self.gcp_projection = (dataset.GetGCPProjection() or "") if self.gcps else ""
        self.select_bands(bands or range(1, self.band_count + 1))

    @staticmethod
    def _plan_mask(band: gdal.Band) -> tuple[str, float | None]:
        """How a band says where it is nodata: ``none``, ``dataset`` (its mask band is the dataset's: a
        per-dataset mask, an alpha band), ``nodata`` (a value) or ``band`` (a mask band of its own)."""
        flags = band.GetMaskFlags()
        if flags & gdal.GMF_ALL_VALID:
            return "none", None
        if flags & gdal.GMF_PER_DATASET:
            return "dataset", None
        if flags & gdal.GMF_NODATA:
            return "nodata", band.GetNoDataValue()
        return "band", None

    @property
    def has_crs(self) -> bool:
        """Whether the raster says where it lies: a CRS, or ground control points with one."""
        return bool(self.projection or self.gcp_projection)

    def data_bands(self) -> tuple[int, ...]:
        """Band numbers that hold data: every band but an alpha band (which is the dataset's mask, not data)."""
        return tuple(
            number
            for number in range(1, self.band_count + 1)
            if self._dataset.GetRasterBand(number).GetColorInterpretation() != gdal.GCI_AlphaBand
        )

    def approximate_range(self) -> tuple[float, float] | None:
        """Approximate (min, max) of the finite, valid values of the selected bands; None if unknown.

        GDAL's sampled statistics (they skip nodata); where they are not finite (±inf pixels in float imagery),
        a decimated read of the band with non-finite values left out."""
        lows, highs = [], []
        for band_number in self.bands:
            band = self._dataset.GetRasterBand(band_number)
            try:
                values = band.ComputeRasterMinMax(True)
            except RuntimeError:
                values = None
            if values is not None and not all(math.isfinite(v) for v in values):
                values = self._finite_range(band)
            if values is None:
                continue
            lows.append(values[0])
            highs.append(values[1])
        return (min(lows), max(highs)) if lows else None

    def _finite_range(self, band: gdal.Band, samples: int = 512) -> tuple[float, float] | None:
        """(min, max) of the finite, non-nodata values of a read of at most ``samples`` x ``samples`` pixels."""
        scale = max(1.0, max(self.width, self.height) / samples)
        try:
            values = band.ReadAsArray(
                buf_xsize=max(1, int(self.width / scale)), buf_ysize=max(1, int(self.height / scale))
            )
        except RuntimeError:
            values = None
        if values is None:
            return None
        keep = np.isfinite(values)
        nodata = band.GetNoDataValue()
        if nodata is not None and not math.isnan(nodata):
            keep &= values != np.asarray(nodata).astype(values.dtype)
        return (float(values[keep].min()), float(values[keep].max())) if keep.any() else None

    def select_bands(self, bands: Sequence[int]) -> RasterReader:
        """Read only ``bands`` (1-based, in this order) from now on; the dataset stays open. Returns ``self``."""
        selected = tuple(bands)
        for band in selected:
            if not 1 <= band <= self.band_count:
                raise ParameterError("BANDS", list(selected), f"list bands in 1..{self.band_count} of INPUT")
        self.bands = selected
        self._mask_plan = [self._plan_mask(self._dataset.GetRasterBand(b)) for b in selected]
        return self

    def read(self, window: Window, tile_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Read a window, padded to the tile size.

        Returns:
            ``data`` ``(B, tile_h, tile_w) float32`` (padding and invalid pixels hold 0) and ``valid``
            ``(tile_h, tile_w) bool`` (False on padding and nodata).
        """
        ds = self._dataset
        try:
            raw = ds.ReadAsArray(window.col, window.row, window.width, window.height, band_list=list(self.bands))
        except RuntimeError:
            raw = None
        if raw is None:
            raise RasterIOError(
                f"INPUT: reading pixels {window.col},{window.row} of '{self.path}' failed: "
                f"{gdal.GetLastErrorMsg() or 'unknown GDAL error'}."
            )
        raw = raw.reshape(len(self.bands), window.height, window.width)
        valid = self._valid(raw, window)
        data = raw.astype(np.float32, copy=False)
        if np.issubdtype(raw.dtype, np.floating):
            valid &= np.isfinite(data).all(axis=0)
        tile_h, tile_w = tile_shape
        out = np.zeros((len(self.bands), tile_h, tile_w), dtype=np.float32)
        out_valid = np.zeros((tile_h, tile_w), dtype=bool)
        out[:, : window.height, : window.width] = np.where(valid, data, 0.0)
        out_valid[: window.height, : window.width] = valid
        return out, out_valid

    def _valid(self, raw: np.ndarray, window: Window) -> np.ndarray:
        """``(h, w) bool``: False where the selected bands are nodata (the class docstring's rule; finiteness is
        checked by the caller)."""
        shape = (window.height, window.width)
        for index, (kind, _) in enumerate(self._mask_plan):
            if kind == "dataset":  # the dataset's mask decides
                return self._read_mask(index, window) > 0
        all_nodata: np.ndarray | None = None
        for index, (kind, nodata) in enumerate(self._mask_plan):
            if kind == "none" or (kind == "nodata" and nodata is None):
                return np.ones(shape, dtype=bool)  # this band is valid everywhere: so is every pixel
            if kind == "nodata":
                if isinstance(nodata, float) and math.isnan(nodata):
                    band_nodata = np.isnan(raw[index])
                else:
                    band_nodata = raw[index] == np.asarray(nodata).astype(raw.dtype)
            else:
                band_nodata = self._read_mask(index, window) == 0
            all_nodata = band_nodata if all_nodata is None else all_nodata & band_nodata
        return np.ones(shape, dtype=bool) if all_nodata is None else ~all_nodata

    def _read_mask(self, index: int, window: Window) -> np.ndarray:
        """The mask band of selected band ``index`` over ``window`` (0 = nodata)."""
        try:
            mask = (
                self._dataset.GetRasterBand(self.bands[index])
                .GetMaskBand()
                .ReadAsArray(window.col, window.row, window.width, window.height)
            )
        except RuntimeError:
            mask = None
        if mask is None:
            raise RasterIOError(f"INPUT: reading the mask of '{self.path}' failed: {gdal.GetLastErrorMsg()}.")
        return mask

    def release_cache(self) -> None:
        """Drop cached input blocks (called after each row of windows; keeps memory flat on big rasters)."""
        if self._dataset is not None:
            self._dataset.FlushCache()

    def close(self) -> None:
        self._dataset = None


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
        driver = gdal.GetDriverByName("GTiff")
        options = [
            "TILED=YES",
            f"BLOCKXSIZE={self.BLOCK}",
            f"BLOCKYSIZE={self.BLOCK}",
            "COMPRESS=DEFLATE",
            f"PREDICTOR={3 if self.dtype.kind == 'f' else 2}",
            "BIGTIFF=IF_SAFER",
            f"NUM_THREADS={_COMPRESSION_THREADS}",  # blocks are compressed by GDAL worker threads, beside the model
            "ZLEVEL=1",
        ] + (["INTERLEAVE=BAND"] if self.bands > 1 else [])
        try:
            dataset = driver.Create(self.temp_path, width, height, self.bands, _GDAL_TYPES[self.dtype], options)
        except RuntimeError:
            dataset = None
        if dataset is None:
            raise RasterIOError(f"cannot create '{self.path}': {gdal.GetLastErrorMsg() or 'GDAL error'}.")
        if geotransform is not None:
            dataset.SetGeoTransform(list(geotransform))
        if projection:
            dataset.SetProjection(projection)
        if gcps and geotransform is None:  # georeferenced by ground control points only: carry them over
            dataset.SetGCPs(list(gcps), gcp_projection)
        for number in range(1, self.bands + 1):
            dataset.GetRasterBand(number).SetNoDataValue(float(nodata))
        band = dataset.GetRasterBand(1)
        if band_descriptions:
            for number, text in enumerate(band_descriptions[: self.bands], start=1):
                dataset.GetRasterBand(number).SetDescription(str(text))
        elif description:
            band.SetDescription(description)
        if metadata:
            dataset.SetMetadata({str(k): str(v) for k, v in metadata.items()})
        if color_table:
            table = gdal.ColorTable()
            for index, rgba in enumerate(color_table):
                table.SetColorEntry(index, tuple(int(v) for v in rgba))
            band.SetColorTable(table)
            band.SetColorInterpretation(gdal.GCI_PaletteIndex)
        self._dataset = dataset
        self._rows = [_BlockRows(height, self.BLOCK) for _ in range(self.bands)]
        levels = self.overview_levels()
        self._pyramids: list[OverviewPyramid] = []  # one per band; empty: BuildOverviews at the end
        self._overview_rows: list[list[_BlockRows]] = []  # [band][level]
        try:  # empty overview bands, filled while writing
            empty_overviews = bool(levels) and dataset.BuildOverviews("NONE", levels) == 0
        except RuntimeError:
            empty_overviews = False
        if empty_overviews:
            average = overview_resampling == "AVERAGE"
            self._pyramids = [
                OverviewPyramid(width, height, len(levels), average, float(nodata), self.dtype)
                for _ in range(self.bands)
            ]
            sizes = self._pyramids[0].sizes[1:]
            self._overview_rows = [[_BlockRows(h, self.BLOCK) for _, h in sizes] for _ in range(self.bands)]
        self.done = False

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

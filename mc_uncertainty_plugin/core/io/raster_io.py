"""GDAL raster input (windows, validity masks); the crash-safe GeoTIFF output is :mod:`.geotiff_writer`'s.

Every GDAL call works whether GDAL's Python exceptions are on or off (QGIS or another plugin may switch them
on for the whole process): failures are caught both as ``None``/error codes and as ``RuntimeError``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from osgeo import gdal

from ..errors import ParameterError, RasterIOError
from .geotiff_writer import GeoTiffWriter

if TYPE_CHECKING:  # a window of the tile grid: any object with row, col, height and width
    from ..inference.tiling import Window

__all__ = ["open_raster", "RasterReader", "GeoTiffWriter"]


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

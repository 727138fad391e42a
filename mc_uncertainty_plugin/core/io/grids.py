"""Whether two rasters lie on one pixel grid, and how to describe a grid in a message."""

from __future__ import annotations

import numpy as np
from osgeo import gdal, osr

__all__ = ["same_crs", "same_grid", "describe_grid"]


def same_crs(a: str, b: str) -> bool:
    """Two WKT CRS are the same; a raster without a CRS is taken to share the other's."""
    if not a or not b:
        return True
    srs_a, srs_b = osr.SpatialReference(), osr.SpatialReference()
    srs_a.ImportFromWkt(a)
    srs_b.ImportFromWkt(b)
    return bool(srs_a.IsSame(srs_b))


def same_grid(base: gdal.Dataset, other: gdal.Dataset) -> bool:
    """Same size and, when both are georeferenced, the same geotransform (to 1e-6 pixel) and CRS."""
    if (base.RasterXSize, base.RasterYSize) != (other.RasterXSize, other.RasterYSize):
        return False
    gt_a, gt_b = base.GetGeoTransform(can_return_null=True), other.GetGeoTransform(can_return_null=True)
    if gt_a is None or gt_b is None:
        return True
    tolerance = 1e-6 * max(abs(gt_a[1]), abs(gt_a[5]), 1e-12)
    if not np.allclose(gt_a, gt_b, rtol=0.0, atol=tolerance):
        return False
    return same_crs(base.GetProjection() or "", other.GetProjection() or "")


def describe_grid(dataset: gdal.Dataset) -> str:
    """``"W x H px, origin (x, y), pixel dx x dy"`` (or ``no georeferencing``), for messages."""
    gt = dataset.GetGeoTransform(can_return_null=True)
    where = "no georeferencing" if gt is None else f"origin ({gt[0]:g}, {gt[3]:g}), pixel {gt[1]:g} x {gt[5]:g}"
    return f"{dataset.RasterXSize} x {dataset.RasterYSize} px, {where}"

"""Helpers for the pure-core tests: synthetic GeoTIFFs in tmp_path and tiny models defined here.

Nothing in tests/core imports qgis; these tests run with plain pytest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from osgeo import gdal, osr
from torch import nn

GEOTRANSFORM = (500000.0, 0.5, 0.0, 4100000.0, 0.0, -0.5)


def write_geotiff(
    path: Path,
    array: np.ndarray,
    *,
    nodata: float | None = None,
    epsg: int | None = 32633,
    geotransform: Sequence[float] | None = GEOTRANSFORM,
) -> str:
    """Write ``(bands, H, W)`` ``array`` as a GeoTIFF (dtype from the array)."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    gdal_type = {
        np.dtype(np.uint8): gdal.GDT_Byte,
        np.dtype(np.uint16): gdal.GDT_UInt16,
        np.dtype(np.float32): gdal.GDT_Float32,
    }[array.dtype]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[2], array.shape[1], array.shape[0], gdal_type)
    if geotransform is not None:
        ds.SetGeoTransform(list(geotransform))
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for index, band in enumerate(array, start=1):
        ds.GetRasterBand(index).WriteArray(band)
        if nodata is not None:
            ds.GetRasterBand(index).SetNoDataValue(nodata)
    ds = None
    return str(path)


def read_raster(path: str) -> np.ndarray:
    ds = gdal.Open(path)
    assert ds is not None, path
    return ds.GetRasterBand(1).ReadAsArray()


def random_image(shape: tuple[int, int], bands: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (bands,) + tuple(shape)).astype(np.uint8)


class ConstantLogits(nn.Module):
    """Ignores its input: the same logits at every pixel."""

    def __init__(self, logits: Sequence[float], in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, len(logits), 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PerPixelDropoutNet(nn.Module):
    """1x1 conv -> ReLU -> Dropout2d -> 1x1 conv: every pixel is independent; masks are per channel."""

    def __init__(self, in_channels: int = 2, hidden: int = 3, classes: int = 3, p: float = 0.3, seed: int = 1):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.dropout = nn.Dropout2d(p)
        self.conv2 = nn.Conv2d(hidden, classes, 1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 1.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.dropout(torch.relu(self.conv1(x))))


class SmallConvNet(nn.Module):
    """3x3 convs (a receptive field of 5 px, so tiling matters) with optional Dropout2d."""

    def __init__(self, in_channels: int = 3, classes: int = 4, p: float = 0.0, seed: int = 2) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout2d(p),
            nn.Conv2d(8, classes, 3, padding=1),
        )
        with torch.no_grad():
            self.body[1].running_mean.uniform_(-0.2, 0.2)
            self.body[1].running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

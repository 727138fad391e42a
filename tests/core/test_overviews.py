"""Overviews computed from the rows as they are written equal their definition (and GDAL's AVERAGE)."""

import numpy as np
import pytest
from osgeo import gdal

from mc_uncertainty_plugin.core.io.raster_io import GeoTiffWriter


def block_means(data: np.ndarray, factor: int, nodata: float) -> np.ndarray:
    """Mean of the valid pixels of every factor x factor block (edge blocks partial); nodata where none.

    The raster is padded with nodata to whole blocks, and each block's valid pixels summed and counted."""
    h, w = data.shape
    bh, bw = (h + factor - 1) // factor, (w + factor - 1) // factor
    padded = np.full((bh * factor, bw * factor), nodata, dtype=np.float64)
    padded[:h, :w] = data
    blocks = padded.reshape(bh, factor, bw, factor)
    valid = blocks != nodata
    counts = valid.sum(axis=(1, 3))
    sums = np.where(valid, blocks, 0.0).sum(axis=(1, 3))
    return np.where(counts > 0, sums / np.maximum(counts, 1), nodata)


def write(path, data, pieces, panels, dtype, nodata, resampling):
    """Write ``data`` through GeoTiffWriter in column panels and row pieces of the given heights."""
    writer = GeoTiffWriter(
        str(path),
        width=data.shape[1],
        height=data.shape[0],
        dtype=dtype,
        nodata=nodata,
        geotransform=None,
        projection="",
        overview_resampling=resampling,
    )
    for c0, c1 in panels:
        row = 0
        for height in pieces:
            if row >= data.shape[0]:
                break
            writer.write(row, c0, data[row : row + height, c0:c1])
            row += height
        assert row >= data.shape[0]
        writer.flush()
    streamed = writer.overviews_streamed
    writer.commit()
    return streamed


@pytest.mark.parametrize("panels", [[(0, 1100)], [(0, 512), (512, 1100)]], ids=["one panel", "two panels"])
def test_streamed_average_overviews_are_means_of_valid_pixels(tmp_path, panels):
    rng = np.random.default_rng(0)
    data = rng.random((700, 1100)).astype(np.float32)
    data[rng.random(data.shape) < 0.3] = -1.0  # scattered nodata
    data[:64, :64] = -1.0  # a block with no valid pixel at every level
    pieces = [100, 37, 256, 1, 306]  # odd heights, not aligned to blocks
    assert write(tmp_path / "u.tif", data, pieces, panels, np.float32, -1.0, "AVERAGE")
    dataset = gdal.Open(str(tmp_path / "u.tif"))  # kept: a band outlives no dataset
    band = dataset.GetRasterBand(1)
    assert band.GetOverviewCount() == 5  # 2 .. 32: the coarsest keeps >= 32 px
    np.testing.assert_array_equal(band.ReadAsArray(), data)
    for level in range(band.GetOverviewCount()):
        factor = 2 ** (level + 1)
        got = band.GetOverview(level).ReadAsArray()
        np.testing.assert_allclose(got, block_means(data, factor, -1.0), rtol=1e-5, atol=1e-6)
    assert band.GetOverview(4).ReadAsArray()[0, 0] == -1.0


def test_streamed_average_equals_gdal_without_nodata(tmp_path):
    """On sizes divisible by the factors (for odd sizes GDAL stretches its blocks over the whole width)."""
    data = np.random.default_rng(1).random((304, 328)).astype(np.float32)
    assert write(tmp_path / "ours.tif", data, [128, 176], [(0, 328)], np.float32, -1.0, "AVERAGE")
    gdal_copy = gdal.GetDriverByName("GTiff").Create(str(tmp_path / "gdal.tif"), 328, 304, 1, gdal.GDT_Float32)
    gdal_copy.GetRasterBand(1).WriteArray(data)
    gdal_copy.BuildOverviews("AVERAGE", [2, 4, 8])
    dataset = gdal.Open(str(tmp_path / "ours.tif"))  # kept: a band outlives no dataset
    ours = dataset.GetRasterBand(1)
    for level in range(3):
        np.testing.assert_allclose(
            ours.GetOverview(level).ReadAsArray(),
            gdal_copy.GetRasterBand(1).GetOverview(level).ReadAsArray(),
            rtol=1e-5,
        )


def test_streamed_nearest_overviews_take_the_top_left_pixel(tmp_path):
    data = np.random.default_rng(2).integers(0, 6, (513, 700)).astype(np.uint8)
    assert write(tmp_path / "c.tif", data, [255, 3, 255], [(0, 256), (256, 700)], np.uint8, 255, "NEAREST")
    dataset = gdal.Open(str(tmp_path / "c.tif"))  # kept: a band outlives no dataset
    band = dataset.GetRasterBand(1)
    for level in range(band.GetOverviewCount()):
        factor = 2 ** (level + 1)
        np.testing.assert_array_equal(band.GetOverview(level).ReadAsArray(), data[::factor, ::factor])


def test_a_panel_off_the_overview_grid_falls_back_to_gdal(tmp_path):
    data = np.random.default_rng(3).random((200, 300)).astype(np.float32)
    assert not write(tmp_path / "f.tif", data, [200], [(0, 100), (100, 300)], np.float32, -1.0, "AVERAGE")
    dataset = gdal.Open(str(tmp_path / "f.tif"))  # kept: a band outlives no dataset
    band = dataset.GetRasterBand(1)
    assert band.GetOverviewCount() == 3
    np.testing.assert_allclose(band.GetOverview(0).ReadAsArray(), block_means(data, 2, -1.0), rtol=1e-5)


def test_several_bands_each_get_their_own_streamed_overviews(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(0, 255, (3, 300, 520)).astype(np.uint8)  # 255 = nodata
    data[1, :40, :40] = 255
    writer = GeoTiffWriter(
        str(tmp_path / "m.tif"),
        520,
        300,
        np.uint8,
        255,
        None,
        "",
        overview_resampling="AVERAGE",
        bands=3,
        band_descriptions=("a", "b", "c"),
    )
    for c0, c1 in ((0, 256), (256, 520)):
        for r0, r1 in ((0, 100), (100, 257), (257, 300)):
            writer.write(r0, c0, data[:, r0:r1, c0:c1])
        writer.flush()
    assert writer.overviews_streamed
    with pytest.raises(ValueError, match="3 band"):
        writer.write(0, 0, data[0])
    writer.commit()
    dataset = gdal.Open(str(tmp_path / "m.tif"))  # kept: a band outlives no dataset
    assert dataset.GetMetadata("IMAGE_STRUCTURE")["INTERLEAVE"] == "BAND"
    np.testing.assert_array_equal(dataset.ReadAsArray(), data)
    for index in range(3):
        band = dataset.GetRasterBand(index + 1)
        assert band.GetDescription() == "abc"[index] and band.GetNoDataValue() == 255
        assert band.GetOverviewCount() == 4
        for level in range(4):
            means = block_means(data[index].astype(np.float64), 2 ** (level + 1), 255)
            expected = np.where(means == 255, 255, np.floor(means + 0.5))  # integer means round half up
            np.testing.assert_array_equal(band.GetOverview(level).ReadAsArray(), expected)

"""Which input pixels are nodata: all selected bands nodata (GDAL's dataset mask), unless a mask or alpha band
says otherwise; NaN in any band always."""

import numpy as np
import pytest
import torch
from core_fixtures import read_raster, write_geotiff
from osgeo import gdal

from mc_uncertainty_plugin.core import LoadedModel, MultiClassInferenceProcessor, Normalization
from mc_uncertainty_plugin.core.inference.plan import Region
from mc_uncertainty_plugin.core.io.conventions import CLASS_NODATA
from mc_uncertainty_plugin.core.io.raster_io import RasterReader

SHAPE = (6, 8)
WHOLE = Region(0, 0, *SHAPE)


def two_bands(dtype=np.uint16) -> np.ndarray:
    """Band 1 is 0 at (1, 1) and (2, 2), band 2 at (2, 2) and (3, 3); both are 7 elsewhere."""
    data = np.full((2,) + SHAPE, 7, dtype=dtype)
    data[0, 1, 1] = data[0, 2, 2] = 0
    data[1, 2, 2] = data[1, 3, 3] = 0
    return data


def validity(path: str, bands=(1, 2)) -> tuple[np.ndarray, np.ndarray]:
    reader = RasterReader(path, bands)
    try:
        return reader.read(WHOLE, SHAPE)
    finally:
        reader.close()


def only_invalid(*pixels: tuple[int, int]) -> np.ndarray:
    expected = np.ones(SHAPE, bool)
    for pixel in pixels:
        expected[pixel] = False
    return expected


def test_a_pixel_is_nodata_only_where_every_band_is(tmp_path):
    path = write_geotiff(tmp_path / "in.tif", two_bands(), nodata=0)
    data, valid = validity(path)
    np.testing.assert_array_equal(valid, only_invalid((2, 2)))
    assert data[0, 1, 1] == 0 and data[1, 1, 1] == 7  # a 0 beside a valid band is data, fed as read
    assert np.all(data[:, 2, 2] == 0)  # nodata pixels hold 0 for the model (their weight is 0)


def per_band_nodata(tmp_path, data: np.ndarray, nodata: tuple) -> str:
    """A VRT over ``data`` with one nodata value per band (None: the band has none); a GeoTIFF holds one."""
    source = write_geotiff(tmp_path / "source.tif", data)
    path = str(tmp_path / "in.vrt")
    dataset = gdal.Translate(path, source, format="VRT")
    for number, value in enumerate(nodata, start=1):
        if value is not None:
            dataset.GetRasterBand(number).SetNoDataValue(value)
    dataset = None
    return path


def test_each_band_is_compared_with_its_own_nodata_value(tmp_path):
    data = two_bands()
    data[1][data[1] == 0] = 65535
    path = per_band_nodata(tmp_path, data, (0, 65535))
    np.testing.assert_array_equal(validity(path)[1], only_invalid((2, 2)))
    np.testing.assert_array_equal(validity(path, (1,))[1], only_invalid((1, 1), (2, 2)))  # one band: its own rule


def test_a_band_without_nodata_keeps_every_pixel(tmp_path):
    path = per_band_nodata(tmp_path, two_bands(), (0, None))  # band 2 is never nodata, so no pixel is
    assert validity(path)[1].all()
    np.testing.assert_array_equal(validity(path, (1,))[1], only_invalid((1, 1), (2, 2)))


def test_a_per_dataset_mask_decides_over_nodata_values(tmp_path):
    path = str(tmp_path / "masked.tif")
    gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", "YES")
    try:
        dataset = gdal.GetDriverByName("GTiff").Create(path, SHAPE[1], SHAPE[0], 2, gdal.GDT_UInt16)
        dataset.WriteArray(two_bands())
        for number in (1, 2):
            dataset.GetRasterBand(number).SetNoDataValue(0)
        dataset.CreateMaskBand(gdal.GMF_PER_DATASET)
        mask = np.full(SHAPE, 255, np.uint8)
        mask[0, :] = 0
        dataset.GetRasterBand(1).GetMaskBand().WriteArray(mask)
        dataset = None
    finally:
        gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", None)
    expected = np.ones(SHAPE, bool)
    expected[0, :] = False  # the mask's row; (2, 2), where both bands are 0, is valid by the mask
    np.testing.assert_array_equal(validity(path)[1], expected)


def test_nodata_values_metadata_is_the_dataset_mask(tmp_path):
    path = write_geotiff(tmp_path / "in.tif", two_bands())
    dataset = gdal.Open(path, gdal.GA_Update)
    dataset.SetMetadataItem("NODATA_VALUES", "0 0")
    dataset = None
    np.testing.assert_array_equal(validity(path)[1], only_invalid((2, 2)))


@pytest.mark.parametrize("nodata", [None, float("nan")])
def test_nan_in_any_band_is_nodata(tmp_path, nodata):
    data = two_bands(np.float32)
    data[0, 4, 5] = np.nan  # band 2 is finite there
    data[1, 5, 6] = np.inf
    path = write_geotiff(tmp_path / "in.tif", data, nodata=nodata)
    data, valid = validity(path)
    np.testing.assert_array_equal(valid, only_invalid((4, 5), (5, 6)))
    assert np.isfinite(data).all()


def test_one_zero_band_does_not_make_a_hole_in_the_outputs(tmp_path):
    """As on a Landsat scene with nodata 0 in every band: a dark pixel of one band stays predicted."""
    rng = np.random.default_rng(3)
    data = rng.integers(1, 200, (2, 40, 40)).astype(np.uint16)
    data[0, 10:13, 20:25] = 0  # interior zeros of one band only
    data[:, 30:, :] = 0  # the scene's real nodata border: every band 0
    path = write_geotiff(tmp_path / "scene.tif", data, nodata=0)
    model = LoadedModel(torch.nn.Conv2d(2, 3, 1), normalization=Normalization((0.0,), (100.0,), 1.0), in_channels=2)
    classes = read_raster(
        MultiClassInferenceProcessor(model, tta_mode="none", model_input_shape=32, step_shape=16).process(
            path, output_path=str(tmp_path / "c.tif")
        )["segmentation"]
    )
    assert np.all(classes[:30] != CLASS_NODATA)
    assert np.all(classes[30:] == CLASS_NODATA)

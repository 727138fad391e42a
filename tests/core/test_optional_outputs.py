"""The optional outputs: per-class probabilities (float32 or uint8) and the confident classes; out_dir creation."""

import math
import os

import numpy as np
import pytest
from core_fixtures import ConstantLogits, SmallConvNet, random_image, read_raster, write_geotiff
from osgeo import gdal

from mc_uncertainty_plugin.core import LoadedModel, MCDropoutInferenceProcessor, MultiClassInferenceProcessor
from mc_uncertainty_plugin.core.errors import ParameterError
from mc_uncertainty_plugin.core.inference.uncertainty import entropy

NAMES = ("background", "building", "water")
FAST = dict(model_input_shape=32, step_shape=16)


def holed_image(tmp_path, shape=(70, 90), seed=4) -> str:
    """A 3-band uint8 raster with nodata 0 in every band over rows 5..15, columns 10..40."""
    data = np.maximum(random_image(shape, seed=seed), 1)
    data[:, 5:15, 10:40] = 0
    return write_geotiff(tmp_path / "in.tif", data, nodata=0)


def nodata_mask(shape=(70, 90)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[5:15, 10:40] = True
    return mask


def test_constant_logits_give_their_softmax_in_every_band(tmp_path):
    logits = np.array([2.0, 0.5, -1.0])
    model = LoadedModel(ConstantLogits(logits), in_channels=3, class_names=NAMES)
    paths = MultiClassInferenceProcessor(model, tta_mode="none", **FAST).process(
        holed_image(tmp_path), output_path=str(tmp_path / "c.tif"), probabilities_path=str(tmp_path / "p.tif")
    )
    assert paths["probabilities"] == str(tmp_path / "p.tif")
    dataset = gdal.Open(paths["probabilities"])
    assert (dataset.RasterCount, dataset.RasterXSize, dataset.RasterYSize) == (3, 90, 70)
    assert [dataset.GetRasterBand(b).GetDescription() for b in (1, 2, 3)] == list(NAMES)
    assert dataset.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert dataset.GetMetadata("IMAGE_STRUCTURE").get("INTERLEAVE") == "BAND"
    softmax = np.exp(logits) / np.exp(logits).sum()
    values = dataset.ReadAsArray()
    holes = nodata_mask()
    for band in range(3):
        assert dataset.GetRasterBand(band + 1).GetNoDataValue() == -1.0
        np.testing.assert_allclose(values[band][~holes], softmax[band], rtol=1e-6)
        assert np.all(values[band][holes] == -1.0)


def test_probabilities_agree_with_the_classes_the_confidence_and_the_entropy(tmp_path):
    image = holed_image(tmp_path)
    paths = MCDropoutInferenceProcessor(SmallConvNet(p=0.3), n_samples=3, seed=1, **FAST).process(
        image,
        output_path=str(tmp_path / "c.tif"),
        confidence_path=str(tmp_path / "conf.tif"),
        probabilities_path=str(tmp_path / "p.tif"),
    )
    probs = gdal.Open(paths["probabilities"]).ReadAsArray()
    valid = ~nodata_mask()
    assert probs.shape == (4, 70, 90)
    np.testing.assert_allclose(probs.sum(axis=0)[valid], 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=0)[valid], read_raster(paths["segmentation"])[valid])
    np.testing.assert_array_equal(probs.max(axis=0)[valid], read_raster(paths["confidence"])[valid])
    np.testing.assert_allclose(entropy(probs[:, valid]), read_raster(paths["uncertainty"])[valid], atol=1e-6)


def test_overviews_of_every_probability_band_are_block_means(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((130, 150), seed=2))
    paths = MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", **FAST).process(
        image, output_path=str(tmp_path / "c.tif"), probabilities_path=str(tmp_path / "p.tif")
    )
    dataset = gdal.Open(paths["probabilities"])
    for number in range(1, 5):
        band = dataset.GetRasterBand(number)
        assert band.GetOverviewCount() == 2  # factors 2 and 4 (75 and 38 px >= 32)
        data = band.ReadAsArray().astype(np.float64)
        halves = data.reshape(65, 2, 75, 2).mean(axis=(1, 3))
        np.testing.assert_allclose(band.GetOverview(0).ReadAsArray(), halves, rtol=1e-5)


def test_uint8_probabilities_are_round_254_p_and_255_is_nodata(tmp_path):
    image = holed_image(tmp_path)
    runs = {}
    for dtype in ("float32", "uint8"):
        paths = MultiClassInferenceProcessor(SmallConvNet(), tta_mode="flip", **FAST).process(
            image,
            output_path=str(tmp_path / f"{dtype}.tif"),
            probabilities_path=str(tmp_path / f"{dtype}_p.tif"),
            probabilities_dtype=dtype,
        )
        runs[dtype] = gdal.Open(paths["probabilities"])
    floats, scaled = runs["float32"].ReadAsArray(), runs["uint8"].ReadAsArray()
    assert scaled.dtype == np.uint8
    holes = nodata_mask()
    expected = np.floor(floats * np.float32(254) + np.float32(0.5)).astype(np.uint8)
    np.testing.assert_array_equal(scaled[:, ~holes], expected[:, ~holes])
    assert np.all(scaled[:, holes] == 255) and scaled[:, ~holes].max() <= 254
    assert runs["uint8"].GetRasterBand(2).GetNoDataValue() == 255
    assert "round(254 * p)" in runs["uint8"].GetMetadataItem("MC_PROBABILITY_ENCODING")


def test_a_sure_pixel_reads_254_not_nodata(tmp_path):
    model = LoadedModel(ConstantLogits([30.0, 0.0]), in_channels=3)
    paths = MultiClassInferenceProcessor(model, tta_mode="none", **FAST).process(
        holed_image(tmp_path),
        output_path=str(tmp_path / "c.tif"),
        probabilities_path=str(tmp_path / "p.tif"),
        probabilities_dtype="uint8",
    )
    values = gdal.Open(paths["probabilities"]).ReadAsArray()
    assert np.all(values[0][~nodata_mask()] == 254) and np.all(values[1][~nodata_mask()] == 0)


@pytest.mark.parametrize("mode", ["entropy", "normalized_entropy", "variation_ratio", "margin"])
def test_confident_classes_drop_the_pixels_past_the_threshold(tmp_path, mode):
    image = holed_image(tmp_path)
    kwargs = dict(n_samples=4, seed=2, uncertainty_mode=mode, **FAST)
    first = MCDropoutInferenceProcessor(SmallConvNet(p=0.4), **kwargs).process(
        image, output_path=str(tmp_path / "a.tif")
    )
    uncertainty = read_raster(first["uncertainty"])
    valid = ~nodata_mask()
    threshold = float(np.median(uncertainty[valid]))
    second = MCDropoutInferenceProcessor(SmallConvNet(p=0.4), **kwargs).process(
        image,
        output_path=str(tmp_path / "b.tif"),
        confident_path=str(tmp_path / "k.tif"),
        confident_threshold=threshold,
    )
    np.testing.assert_array_equal(read_raster(second["uncertainty"]), uncertainty)
    classes, confident = read_raster(second["segmentation"]), read_raster(second["confident"])
    # margin: low = unsure; the others: high = unsure (compared in float32, as the uncertainty raster holds it)
    unsure = uncertainty < np.float32(threshold) if mode == "margin" else uncertainty > np.float32(threshold)
    np.testing.assert_array_equal(confident, np.where(unsure | ~valid, 255, classes))
    assert 0.2 < unsure[valid].mean() < 0.8  # the threshold cuts the valid pixels
    dataset = gdal.Open(second["confident"])
    assert dataset.GetRasterBand(1).GetNoDataValue() == 255
    assert float(dataset.GetMetadataItem("MC_CONFIDENT_THRESHOLD")) == threshold
    assert dataset.GetMetadataItem("MC_UNCERTAINTY_MODE") == mode


def test_confident_classes_without_the_uncertainty_raster(tmp_path):
    image = holed_image(tmp_path)
    kwargs = dict(n_samples=3, seed=2, uncertainty_mode="normalized_entropy", **FAST)
    written = MCDropoutInferenceProcessor(SmallConvNet(p=0.4), **kwargs).process(
        image, output_path=str(tmp_path / "a.tif"), confident_path=str(tmp_path / "ka.tif"), confident_threshold=0.95
    )
    out = tmp_path / "off"
    out.mkdir()
    alone = MCDropoutInferenceProcessor(SmallConvNet(p=0.4), export_uncertainty_map=False, **kwargs).process(
        image, output_path=str(out / "b.tif"), confident_path=str(out / "kb.tif"), confident_threshold=0.95
    )
    assert alone["uncertainty"] is None and sorted(os.listdir(out)) == ["b.tif", "kb.tif"]
    np.testing.assert_array_equal(read_raster(alone["confident"]), read_raster(written["confident"]))
    assert (read_raster(alone["confident"]) == 255).sum() > (read_raster(alone["segmentation"]) == 255).sum()


@pytest.mark.parametrize(
    "mode,threshold,expected",
    [
        ("entropy", 1.5, "0..1.38629"),  # above ln 4
        ("margin", -0.1, "0..1"),
        ("normalized_entropy", 1.01, "0..1"),
        ("variation_ratio", 0.8, "0..0.75"),  # 1 - 1/4
    ],
)
def test_a_threshold_outside_the_modes_range_names_confident_threshold(tmp_path, mode, threshold, expected):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ParameterError) as caught:
        MCDropoutInferenceProcessor(SmallConvNet(p=0.3), n_samples=2, uncertainty_mode=mode, **FAST).process(
            holed_image(tmp_path),
            output_path=str(out / "c.tif"),
            confident_path=str(out / "k.tif"),
            confident_threshold=threshold,
        )
    message = str(caught.value)
    assert message.startswith("CONFIDENT_THRESHOLD must") and mode in message and expected in message
    assert repr(threshold) in message or str(threshold) in message
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    "arguments,key",
    [
        ({"confident_threshold": "abc"}, "CONFIDENT_THRESHOLD"),
        ({"confident_threshold": math.nan}, "CONFIDENT_THRESHOLD"),
        ({"probabilities_dtype": "int16"}, "PROBABILITIES_DATA_TYPE"),
    ],
)
def test_bad_output_options_name_their_parameter(tmp_path, arguments, key):
    with pytest.raises(ParameterError, match=f"^{key} must"):
        MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", **FAST).process(
            holed_image(tmp_path),
            output_path=str(tmp_path / "c.tif"),
            confident_path=str(tmp_path / "k.tif"),
            **arguments,
        )


def test_process_creates_the_output_folder_with_its_parents(tmp_path, rgb_raster):
    out = tmp_path / "new" / "deeper" / "out"
    paths = MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", **FAST).process(rgb_raster, str(out))
    assert paths["segmentation"] == str(out / "scene.tif")
    assert sorted(os.listdir(out)) == ["scene.tif", "scene_uncertainty.tif"]


def test_an_output_folder_blocked_by_a_file_names_output(tmp_path, rgb_raster):
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(ParameterError, match="^OUTPUT must"):
        MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", **FAST).process(
            rgb_raster, str(tmp_path / "taken" / "out")
        )

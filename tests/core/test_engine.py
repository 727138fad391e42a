"""End-to-end behaviour of the engine on synthetic GeoTIFFs: blending, streaming, nodata, reproducibility."""

import math
import os

import numpy as np
import pytest
import torch
from core_fixtures import GEOTRANSFORM, ConstantLogits, SmallConvNet, random_image, read_raster, write_geotiff
from osgeo import gdal

from mc_uncertainty_plugin.core import (
    InferenceCancelled,
    LoadedModel,
    MCDropoutInferenceProcessor,
    MultiClassInferenceProcessor,
    ParameterError,
)
from mc_uncertainty_plugin.core.inference.tiling import TileGrid, tile_weight_map


def softmax(logits, axis=0):
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def entropy(p, axis=0):
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=axis)


def run(model, image, out, cls=MultiClassInferenceProcessor, **kwargs):
    if cls is MultiClassInferenceProcessor:
        kwargs.setdefault("tta_mode", "none")  # one deterministic pass
    paths = cls(model, **kwargs).process(image, out.parent, output_path=str(out))
    return read_raster(paths["segmentation"]), (read_raster(paths["uncertainty"]) if paths["uncertainty"] else None)


@pytest.mark.parametrize(
    "raster,tile,step,weight",
    [
        ((90, 110), (32, 32), (16, 16), "gaussian"),
        ((90, 110), (32, 48), (20, 7), "pyramid"),
        ((33, 200), (64, 64), (64, 64), "mean"),
        ((20, 15), (64, 64), (32, 32), "gaussian"),  # raster smaller than a tile
    ],
)
def test_constant_predictor_gives_a_constant_map_for_any_tiling(tmp_path, raster, tile, step, weight):
    logits = [0.2, 1.5, -0.3, 1.1]
    image = write_geotiff(tmp_path / "in.tif", random_image(raster))
    classes, uncertainty = run(
        ConstantLogits(logits), image, tmp_path / "out.tif", model_input_shape=tile, step_shape=step, tile_weight=weight
    )
    expected = entropy(softmax(np.array(logits)))
    assert classes.shape == raster
    assert np.all(classes == 1)
    np.testing.assert_allclose(uncertainty, expected, rtol=1e-5)


def test_raster_that_fits_one_tile_equals_untiled_inference(tmp_path):
    data = random_image((64, 64), seed=4)
    image = write_geotiff(tmp_path / "in.tif", data)
    net = SmallConvNet().eval()
    classes, uncertainty = run(net, image, tmp_path / "out.tif", model_input_shape=64, step_shape=32)
    x = (data.astype(np.float32) / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]) / np.array(
        [0.229, 0.224, 0.225], np.float32
    )[:, None, None]
    with torch.no_grad():
        logits = net(torch.from_numpy(x[None]))[0].double().numpy()
    probs = softmax(logits)
    np.testing.assert_array_equal(classes, probs.argmax(axis=0))
    np.testing.assert_allclose(uncertainty, entropy(probs), atol=1e-5)


def blend_in_memory(net, data, tile, step, kind):
    """Reference: the whole raster in memory, every window's softmax weighted and normalised (no streaming)."""
    bands, height, width = data.shape
    x = (data.astype(np.float32) / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]) / np.array(
        [0.229, 0.224, 0.225], np.float32
    )[:, None, None]
    grid = TileGrid((height, width), tile, step)
    w = tile_weight_map(kind, tile).astype(np.float64)
    acc = None
    acc_w = np.zeros((height, width))
    for window in grid:
        crop = x[:, window.row : window.row + tile[0], window.col : window.col + tile[1]]
        with torch.no_grad():
            probs = softmax(net(torch.from_numpy(crop[None].copy()))[0].double().numpy())
        if acc is None:
            acc = np.zeros((probs.shape[0], height, width))
        acc[:, window.row : window.row + tile[0], window.col : window.col + tile[1]] += probs * w
        acc_w[window.row : window.row + tile[0], window.col : window.col + tile[1]] += w
    return acc / acc_w


@pytest.mark.parametrize("panel_width", [256, 8192])
def test_streamed_output_equals_in_memory_blend(tmp_path, panel_width):
    data = random_image((150, 600), seed=5)
    image = write_geotiff(tmp_path / "in.tif", data)
    net = SmallConvNet().eval()
    classes, uncertainty = run(
        net,
        image,
        tmp_path / "out.tif",
        model_input_shape=(64, 64),
        step_shape=(48, 40),
        tile_weight="gaussian",
        panel_width=panel_width,
    )
    probs = blend_in_memory(net, data, (64, 64), (48, 40), "gaussian")
    top2 = np.sort(probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-5  # ignore exact ties
    np.testing.assert_array_equal(classes[clear], probs.argmax(axis=0)[clear])
    np.testing.assert_allclose(uncertainty, entropy(probs), atol=2e-5)


def test_panel_width_does_not_change_mc_results(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((70, 700), seed=6))
    net = SmallConvNet(p=0.3).eval()
    kwargs = dict(
        cls=MCDropoutInferenceProcessor,
        n_samples=3,
        model_input_shape=64,
        step_shape=48,
        uncertainty_mode="mutual_information",
    )
    a = run(net, image, tmp_path / "a.tif", panel_width=256, **kwargs)
    b = run(net, image, tmp_path / "b.tif", panel_width=1024, **kwargs)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_same_seed_same_output_other_seed_other_output(tmp_path, rgb_raster):
    net = SmallConvNet(p=0.4).eval()
    kwargs = dict(
        cls=MCDropoutInferenceProcessor,
        n_samples=4,
        model_input_shape=32,
        step_shape=16,
        uncertainty_mode="mutual_information",
    )
    a = run(net, rgb_raster, tmp_path / "a.tif", seed=1, **kwargs)
    torch.manual_seed(12345)  # global RNG state must not matter
    b = run(net, rgb_raster, tmp_path / "b.tif", seed=1, **kwargs)
    c = run(net, rgb_raster, tmp_path / "c.tif", seed=2, **kwargs)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[1].max() > 0
    assert not np.array_equal(a[1], c[1])


def test_batch_size_does_not_change_results(tmp_path, rgb_raster):
    net = SmallConvNet(p=0.4).eval()
    kwargs = dict(
        cls=MCDropoutInferenceProcessor,
        n_samples=3,
        model_input_shape=32,
        step_shape=16,
        uncertainty_mode="mutual_information",
        seed=9,
    )
    one = run(net, rgb_raster, tmp_path / "one.tif", batch_size=1, **kwargs)
    seven = run(net, rgb_raster, tmp_path / "seven.tif", batch_size=7, **kwargs)
    np.testing.assert_array_equal(one[0], seven[0])
    np.testing.assert_allclose(one[1], seven[1], atol=1e-6)


def test_outputs_keep_size_geotransform_crs_and_are_tiled_with_overviews(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((300, 280)))
    out = tmp_path / "out"
    out.mkdir()
    paths = MCDropoutInferenceProcessor(
        SmallConvNet(p=0.2),
        n_samples=2,
        model_input_shape=64,
        step_shape=64,
        uncertainty_mode="mutual_information",
        seed=5,
    ).process(image, out)
    for path, dtype in ((paths["segmentation"], gdal.GDT_Byte), (paths["uncertainty"], gdal.GDT_Float32)):
        ds = gdal.Open(path)
        band = ds.GetRasterBand(1)
        assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (280, 300, 1)
        assert ds.GetGeoTransform() == pytest.approx(GEOTRANSFORM)
        assert 'AUTHORITY["EPSG","32633"]' in ds.GetProjection()
        assert band.DataType == dtype
        assert band.GetBlockSize() == [256, 256]
        assert band.GetOverviewCount() >= 2
        assert ds.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    unc = gdal.Open(paths["uncertainty"])
    assert unc.GetRasterBand(1).GetDescription().startswith("mutual information")
    meta = unc.GetMetadata()
    assert (meta["MC_UNCERTAINTY_MODE"], meta["MC_N_SAMPLES"], meta["MC_TTA_MODE"], meta["MC_SEED"]) == (
        "mutual_information",
        "2",
        "none",
        "5",
    )


def test_the_default_uncertainty_name_and_directory(tmp_path, rgb_raster):
    out_dir = tmp_path / "out"
    unc_dir = tmp_path / "unc"
    out_dir.mkdir()
    unc_dir.mkdir()
    proc = MCDropoutInferenceProcessor(
        SmallConvNet(p=0.2), n_samples=2, model_input_shape=32, step_shape=32, output_uncertainty_dir=str(unc_dir)
    )
    paths = proc.process(rgb_raster, str(out_dir))
    assert paths == {
        "segmentation": str(out_dir / "scene.tif"),
        "uncertainty": str(unc_dir / "scene_mc_uncertainty.tif"),
    }
    tta = MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", model_input_shape=32, step_shape=32)
    assert tta.process(rgb_raster, str(out_dir))["uncertainty"] == str(out_dir / "scene_uncertainty.tif")


def test_no_uncertainty_file_when_not_exported(tmp_path, rgb_raster):
    proc = MCDropoutInferenceProcessor(
        SmallConvNet(p=0.2), n_samples=2, export_uncertainty_map=False, model_input_shape=32, step_shape=32
    )
    out = tmp_path / "out"
    out.mkdir()
    paths = proc.process(rgb_raster, str(out))
    assert paths["uncertainty"] is None
    assert sorted(os.listdir(out)) == ["scene.tif"]


def test_nodata_pixels_are_nodata_in_both_outputs_and_do_not_touch_valid_ones(tmp_path):
    data = random_image((80, 90), seed=8).astype(np.float32)
    holes = data.copy()
    holes[:, 10:30, 20:50] = np.nan  # NaN holes, no nodata value
    holes[:, 60:, 70:] = -9999.0  # nodata value
    per_pixel = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1))  # per-pixel: valid outputs cannot depend on holes
    clean = write_geotiff(tmp_path / "clean.tif", data)
    holed = write_geotiff(tmp_path / "holes.tif", holes, nodata=-9999.0)
    kwargs = dict(model_input_shape=32, step_shape=16)
    a = run(per_pixel, clean, tmp_path / "a.tif", **kwargs)
    b = run(per_pixel, holed, tmp_path / "b.tif", **kwargs)
    invalid = np.zeros((80, 90), bool)
    invalid[10:30, 20:50] = True
    invalid[60:, 70:] = True
    assert np.all(b[0][invalid] == 255)
    assert np.all(b[1][invalid] == -1.0)
    np.testing.assert_array_equal(b[0][~invalid], a[0][~invalid])
    np.testing.assert_allclose(b[1][~invalid], a[1][~invalid], atol=1e-6)
    assert np.all(np.isfinite(b[1]))
    for name, nodata in (("b_uncertainty.tif", -1.0), ("b.tif", 255)):
        ds = gdal.Open(str(tmp_path / name))
        assert ds.GetRasterBand(1).GetNoDataValue() == nodata


class CountingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.tiles = 0

    def forward(self, x):
        self.tiles += x.shape[0]
        return self.conv(x)


def test_windows_entirely_nodata_are_skipped(tmp_path):
    data = np.maximum(random_image((64, 128), seed=2), 1)  # 0 is nodata: only the left half has it
    data[:, :, :64] = 0
    image = write_geotiff(tmp_path / "in.tif", data, nodata=0)
    net = CountingNet()
    classes, _ = run(net, image, tmp_path / "out.tif", model_input_shape=32, step_shape=32)
    assert net.tiles == 1 + 4  # one probe + the 4 windows of the right half (the 4 left ones are all nodata)
    assert np.all(classes[:, :64] == 255)
    assert np.all(classes[:, 64:] != 255)


def test_cancel_leaves_no_file(tmp_path, rgb_raster):
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 5

    proc = MCDropoutInferenceProcessor(SmallConvNet(p=0.2), n_samples=3, model_input_shape=32, step_shape=16)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InferenceCancelled):
        proc.process(rgb_raster, str(out), is_cancelled=cancelled)
    assert os.listdir(out) == []


def test_an_earlier_complete_output_survives_a_failed_run(tmp_path, rgb_raster):
    out = tmp_path / "classes.tif"
    proc = MCDropoutInferenceProcessor(SmallConvNet(p=0.2), n_samples=2, model_input_shape=32, step_shape=32)
    proc.process(rgb_raster, output_path=str(out))
    before = out.read_bytes()
    with pytest.raises(InferenceCancelled):
        proc.process(rgb_raster, output_path=str(out), is_cancelled=lambda: True)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "classes_mc_uncertainty.tif", "input"]


def test_progress_is_monotonic_and_ends_at_100(tmp_path, rgb_raster):
    seen = []
    MCDropoutInferenceProcessor(SmallConvNet(p=0.2), n_samples=2, model_input_shape=32, step_shape=16).process(
        rgb_raster, str(tmp_path), progress=seen.append
    )
    assert seen == sorted(seen) and seen[-1] == 100.0 and len(seen) > 10
    assert seen[-2] >= 98  # every window's every pass is counted, not one per batch


def test_class_names_and_colours_are_written(tmp_path, rgb_raster):
    model = LoadedModel(
        ConstantLogits([0.0, 1.0, 0.0]),
        class_names=("soil", "roof", "water"),
        class_colors=("#000000", "#e41a1c", "#377eb8"),
        in_channels=3,
    )
    paths = MultiClassInferenceProcessor(model, tta_mode="none", model_input_shape=32, step_shape=32).process(
        rgb_raster, str(tmp_path)
    )
    # (GDAL 3.6's Python GetCategoryNames misses names kept in the .aux.xml; gdal.Info reads them)
    assert gdal.Info(paths["segmentation"], format="json")["bands"][0]["categories"][:3] == ["soil", "roof", "water"]
    ds = gdal.Open(paths["segmentation"])  # keep the dataset alive while its band is used
    band = ds.GetRasterBand(1)
    assert band.GetColorTable().GetColorEntry(1)[:3] == (0xE4, 0x1A, 0x1C)


@pytest.mark.parametrize(
    "kwargs,parameter",
    [
        (dict(num_classes=5), "NUM_CLASSES"),
        (dict(bands=(1, 2)), "BANDS"),
        (dict(bands=(1, 2, 9)), "BANDS"),
        (dict(model_input_shape=32, step_shape=64), "STEP_SHAPE"),
        (dict(model_input_shape="a,b"), "MODEL_INPUT_SHAPE"),
        (dict(n_samples=0), "N_SAMPLES"),
        (dict(uncertainty_mode="variance"), "UNCERTAINTY_MODE"),
    ],
)
def test_bad_parameters_are_named_and_nothing_is_written(tmp_path, rgb_raster, kwargs, parameter):
    out = tmp_path / "out"
    out.mkdir()
    params = dict(model_input_shape=32, step_shape=32, n_samples=2)
    params.update(kwargs)
    with pytest.raises(ParameterError, match=parameter):
        MCDropoutInferenceProcessor(SmallConvNet(p=0.2), **params).process(rgb_raster, str(out))
    assert os.listdir(out) == []


def test_output_equal_to_input_is_refused(tmp_path, rgb_raster):
    with pytest.raises(ParameterError, match="OUTPUT"):
        MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", model_input_shape=32, step_shape=32).process(
            rgb_raster, output_path=rgb_raster
        )


def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path, rgb_raster):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ParameterError, match="DEVICE"):
        MultiClassInferenceProcessor(
            SmallConvNet(), tta_mode="none", model_input_shape=32, step_shape=32, device="cuda"
        ).process(rgb_raster, str(tmp_path))


def test_uncertainty_stays_in_range(tmp_path, rgb_raster):
    for mode in ("entropy", "mutual_information"):
        _, unc = run(
            SmallConvNet(p=0.5),
            rgb_raster,
            tmp_path / f"{mode}.tif",
            cls=MCDropoutInferenceProcessor,
            n_samples=5,
            model_input_shape=32,
            step_shape=16,
            uncertainty_mode=mode,
        )
        assert unc.min() >= 0 and unc.max() <= math.log(4) + 1e-6

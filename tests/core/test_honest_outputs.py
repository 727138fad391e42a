"""Outputs that never lie: non-finite model outputs, seeds, MI without dropout, GCPs, empty and odd inputs."""

import numpy as np
import pytest
import torch
from core_fixtures import PerPixelDropoutNet, SmallConvNet, random_image, read_raster, write_geotiff
from osgeo import gdal, osr
from torch import nn

from mc_uncertainty_plugin.core import (
    InferenceError,
    LoadedModel,
    MCDropoutInferenceProcessor,
    MultiClassInferenceProcessor,
    Normalization,
    ParameterError,
)
from mc_uncertainty_plugin.core.inference.merger import CLASS_NODATA, UNCERTAINTY_NODATA
from mc_uncertainty_plugin.core.inference.sampler import EnsembleSampler
from mc_uncertainty_plugin.core.inference.tiling import TileGrid, tile_weight_map
from mc_uncertainty_plugin.core.inference.transforms import transforms_for
from mc_uncertainty_plugin.core.models.dropout import find_dropout_layers


class NanWhereBright(nn.Module):
    """A 1x1 network whose logits are NaN (or +inf) where band 1 of the normalised input exceeds 1."""

    def __init__(self, poison: float = float("nan")) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.drop = nn.Dropout2d(0.3)
        self.poison = poison

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conv(self.drop(x))
        return torch.where(x[:, :1] > 1.0, torch.full_like(logits, self.poison), logits)


def _outputs(paths: dict) -> list[np.ndarray]:
    return [read_raster(p) for p in paths.values() if p]


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_pixels_with_non_finite_probabilities_are_nodata_in_every_output(tmp_path, poison):
    image = random_image((50, 60))
    path = write_geotiff(tmp_path / "in.tif", image)
    normalised = Normalization().apply(image.astype(np.float32))
    bad = normalised[0] > 1.0
    assert 0 < bad.sum() < bad.size
    warnings_seen = []
    paths = MCDropoutInferenceProcessor(
        NanWhereBright(poison), n_samples=2, uncertainty_mode="mutual_information", model_input_shape=32, step_shape=16
    ).process(
        path, output_path=str(tmp_path / "c.tif"), confidence_path=str(tmp_path / "conf.tif"), warn=warnings_seen.append
    )
    classes, uncertainty, confidence = _outputs(paths)
    # a pixel is broken when any window covering it saw a non-finite value: with 1x1 convolutions exactly the
    # bright pixels; 3x3 neighbourhoods do not matter here
    assert np.array_equal(classes == CLASS_NODATA, bad)
    assert np.array_equal(uncertainty == UNCERTAINTY_NODATA, bad)
    assert np.array_equal(confidence == UNCERTAINTY_NODATA, bad)
    assert np.isfinite(uncertainty).all() and np.isfinite(confidence).all()
    assert [w for w in warnings_seen if f"non-finite probabilities (NaN or inf) at {bad.sum():,} pixel(s)" in w]


class NanOnBrightTiles(nn.Module):
    """NaN logits for a whole tile when its mean brightness is high, finite logits otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.drop = nn.Dropout2d(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conv(self.drop(x))
        bright = x.mean(dim=(1, 2, 3), keepdim=True) > 0.0
        return torch.where(bright, torch.full_like(logits, float("nan")), logits)


def test_a_pixel_is_nodata_when_any_window_over_it_was_non_finite(tmp_path):
    image = np.zeros((3, 48, 64), np.uint8)
    image[:, :, :24] = 250  # bright left part: windows reaching into it are NaN
    image[:, :, 24:] = 20
    path = write_geotiff(tmp_path / "in.tif", image)
    paths = MCDropoutInferenceProcessor(
        NanOnBrightTiles(), n_samples=2, model_input_shape=32, step_shape=16, tile_weight="mean"
    ).process(path, output_path=str(tmp_path / "c.tif"))
    normalised = Normalization().apply(image.astype(np.float32))
    expected = np.zeros(image.shape[1:], bool)
    for window in TileGrid(image.shape[1:], (32, 32), (16, 16)):
        rows, cols = slice(window.row, window.row + 32), slice(window.col, window.col + 32)
        if normalised[:, rows, cols].mean() > 0.0:
            expected[rows, cols] = True
    assert 0 < expected.sum() < expected.size
    classes = read_raster(paths["segmentation"])
    assert np.array_equal(classes == CLASS_NODATA, expected)


def test_a_model_that_is_non_finite_everywhere_is_an_error_naming_model(tmp_path):
    path = write_geotiff(tmp_path / "in.tif", random_image((40, 40)))
    broken = LoadedModel(
        SmallConvNet(p=0.2), normalization=Normalization((float("nan"),) * 3, (1.0,) * 3, 255.0), in_channels=3
    )
    with pytest.raises(InferenceError, match=r"MODEL gave non-finite probabilities .* at every valid pixel"):
        MCDropoutInferenceProcessor(broken, n_samples=2, model_input_shape=32, step_shape=32).process(
            path, output_path=str(tmp_path / "c.tif")
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


@pytest.mark.parametrize("seed", [2**31, 2**63 + 5, 2**64 - 1, str(2**40)])
def test_seeds_use_the_full_64_bit_range(tmp_path, seed):
    path = write_geotiff(tmp_path / "in.tif", random_image((32, 32)))

    def uncertainty(value):
        out = tmp_path / f"c_{value}.tif"
        paths = MCDropoutInferenceProcessor(
            SmallConvNet(p=0.3), n_samples=3, seed=value, model_input_shape=32, step_shape=32
        ).process(path, output_path=str(out))
        dataset = gdal.Open(paths["uncertainty"])
        return dataset.GetMetadataItem("MC_SEED"), dataset.GetRasterBand(1).ReadAsArray()

    recorded, values = uncertainty(seed)
    assert recorded == str(int(seed))
    _, low = uncertainty(int(seed) % 2**31)  # what a 32-bit wrap would have run
    _, zero = uncertainty(0)
    assert not np.array_equal(values, low) and not np.array_equal(values, zero)


@pytest.mark.parametrize("seed", [2**64, -1, 1.5, "seven"])
def test_seeds_outside_the_range_are_refused_naming_seed(seed):
    with pytest.raises(ParameterError, match=r"SEED must be an integer in 0\.\.18446744073709551615"):
        MCDropoutInferenceProcessor(SmallConvNet(p=0.3), seed=seed)


def test_mutual_information_is_exactly_zero_without_active_dropout(tmp_path):
    """Overlapping windows see different context and disagree, but that is not model uncertainty."""
    path = write_geotiff(tmp_path / "in.tif", random_image((70, 90)))
    with pytest.warns(UserWarning, match="no active dropout"):
        processor = MCDropoutInferenceProcessor(
            SmallConvNet(p=0.0),
            n_samples=5,
            uncertainty_mode="mutual_information",
            model_input_shape=32,
            step_shape=12,
            tta_mode="none",
        )
    paths = processor.process(path, output_path=str(tmp_path / "c.tif"))
    information = read_raster(paths["uncertainty"])
    assert (information == 0.0).all()
    entropy = read_raster(
        MultiClassInferenceProcessor(SmallConvNet(p=0.0), tta_mode="none", model_input_shape=32, step_shape=12).process(
            path, output_path=str(tmp_path / "e.tif")
        )["uncertainty"]
    )
    assert entropy.max() > 0.1  # the windows do disagree: the old blend turned that into MI > 0


def test_mutual_information_blends_each_windows_own_information(tmp_path):
    """Known answer: run the sampler on each window alone, compute I_k = H[p̄_k] - E_k in float64 and blend
    them with the tile weights by hand."""
    image = random_image((20, 28), bands=2)
    path = write_geotiff(tmp_path / "in.tif", image)
    net = PerPixelDropoutNet().eval()
    tile, step = (16, 16), (4, 6)
    model = LoadedModel(net, normalization=Normalization((0.5, 0.5), (0.25, 0.25), 255.0), in_channels=2)
    paths = MCDropoutInferenceProcessor(
        model,
        n_samples=4,
        uncertainty_mode="mutual_information",
        model_input_shape=tile,
        step_shape=step,
        tile_weight="pyramid",
        seed=11,
        batch_size=1,
    ).process(path, output_path=str(tmp_path / "c.tif"))
    got = read_raster(paths["uncertainty"])

    normalised = model.normalization.apply(image.astype(np.float32))
    sampler = EnsembleSampler(
        net,
        torch.device("cpu"),
        n_samples=4,
        mc_dropout=True,
        transforms=transforms_for("none"),
        dropout_layers=find_dropout_layers(net),
        seed=11,
        need_expected_entropy=True,
    )
    weights = tile_weight_map("pyramid", tile).astype(np.float64)
    total = np.zeros(image.shape[1:])
    blend = np.zeros(image.shape[1:])
    for window in TileGrid(image.shape[1:], tile, step):
        x = normalised[None, :, window.row : window.row + tile[0], window.col : window.col + tile[1]]
        reduced = sampler(np.ascontiguousarray(x), [window.key])
        p = reduced.mean_probs[0].astype(np.float64)
        information = -(p * np.log(np.maximum(p, 1e-30))).sum(axis=0) - reduced.expected_entropy[0]
        rows, cols = slice(window.row, window.row + tile[0]), slice(window.col, window.col + tile[1])
        blend[rows, cols] += weights * np.maximum(information, 0.0)
        total[rows, cols] += weights
    np.testing.assert_allclose(got, blend / total, atol=2e-6)
    assert got.max() > 0.01


def test_inputs_georeferenced_by_gcps_keep_them(tmp_path):
    path = str(tmp_path / "gcps.tif")
    dataset = gdal.GetDriverByName("GTiff").Create(path, 40, 30, 3, gdal.GDT_Byte)
    dataset.WriteArray(random_image((30, 40)))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    gcps = [gdal.GCP(10.0 + i, 45.0 - j, 0.0, 20.0 * i, 15.0 * j) for i in range(3) for j in range(3)]
    dataset.SetGCPs(gcps, srs.ExportToWkt())
    dataset = None
    warnings_seen = []
    paths = MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", model_input_shape=32, step_shape=32).process(
        path, output_path=str(tmp_path / "c.tif"), warn=warnings_seen.append
    )
    assert not [w for w in warnings_seen if "CRS" in w]
    for output in paths.values():
        written = gdal.Open(output)
        assert written.GetGCPCount() == len(gcps)
        assert [(g.GCPPixel, g.GCPLine, g.GCPX, g.GCPY) for g in written.GetGCPs()] == [
            (g.GCPPixel, g.GCPLine, g.GCPX, g.GCPY) for g in gcps
        ]
        assert osr.SpatialReference(wkt=written.GetGCPProjection()).GetAuthorityCode(None) == "4326"


def test_an_input_with_no_valid_pixel_warns(tmp_path):
    path = write_geotiff(tmp_path / "nan.tif", np.full((3, 40, 40), np.nan, np.float32))
    warnings_seen = []
    paths = MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", model_input_shape=32, step_shape=32).process(
        path, output_path=str(tmp_path / "c.tif"), warn=warnings_seen.append
    )
    assert [w for w in warnings_seen if "No pixel of INPUT was valid" in w]
    assert (read_raster(paths["segmentation"]) == CLASS_NODATA).all()


def test_the_range_warning_ignores_infinite_values(tmp_path):
    data = random_image((40, 40)).astype(np.float32)
    data[:, :3, :3] = np.inf
    data[0, 5, 5] = -np.inf
    seen = []
    MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", model_input_shape=32, step_shape=32).process(
        write_geotiff(tmp_path / "inf.tif", data), output_path=str(tmp_path / "c.tif"), warn=seen.append
    )
    assert not [w for w in seen if "values span" in w]
    data *= 40  # 16-bit-like values with infinities: the warning gives the finite range
    seen.clear()
    MultiClassInferenceProcessor(SmallConvNet(), tta_mode="none", model_input_shape=32, step_shape=32).process(
        write_geotiff(tmp_path / "inf40.tif", data), output_path=str(tmp_path / "d.tif"), warn=seen.append
    )
    finite = data[np.isfinite(data)]
    assert [w for w in seen if f"values span about {finite.min():g}..{finite.max():g}" in w], seen


class ChannelCounter(nn.Module):
    """Accepts any number of bands and records how many it was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(int(x.shape[1]))
        return torch.stack([x.mean(dim=1), -x.mean(dim=1)], dim=1)


def test_an_alpha_band_is_the_mask_not_data(tmp_path):
    rgba = random_image((40, 40), bands=4)
    rgba[3] = 255
    path = str(tmp_path / "rgba.tif")
    write_geotiff(tmp_path / "rgba.tif", rgba)
    dataset = gdal.Open(path, gdal.GA_Update)
    dataset.GetRasterBand(4).SetColorInterpretation(gdal.GCI_AlphaBand)
    dataset = None
    counter = ChannelCounter()
    MultiClassInferenceProcessor(
        LoadedModel(counter, in_channels=None), tta_mode="none", model_input_shape=32, step_shape=32
    ).process(path, output_path=str(tmp_path / "c.tif"))
    assert counter.seen == {3}
    with pytest.raises(ParameterError, match=r"INPUT must have at least 4 data bands .*3 data band\(s\) and an alpha"):
        MultiClassInferenceProcessor(
            LoadedModel(SmallConvNet(in_channels=4), in_channels=4),
            tta_mode="none",
            model_input_shape=32,
            step_shape=32,
        ).process(path, output_path=str(tmp_path / "d.tif"))

"""Test-time augmentation: exact inverses, invariance of per-pixel models, MC x TTA."""

import itertools
import math

import numpy as np
import pytest
import torch
from core_fixtures import PerPixelDropoutNet, SmallConvNet, random_image, read_raster, write_geotiff
from osgeo import gdal

from mc_uncertainty_plugin.core import (
    InferenceConfig,
    LoadedModel,
    MCDropoutInferenceProcessor,
    MultiClassInferenceProcessor,
    Normalization,
)
from mc_uncertainty_plugin.core.errors import ParameterError
from mc_uncertainty_plugin.core.inference.sampler import EnsembleSampler
from mc_uncertainty_plugin.core.inference.transforms import transforms_for
from mc_uncertainty_plugin.core.models.dropout import find_dropout_layers

IDENTITY = Normalization(mean=(0.0,), std=(1.0,), max_pixel_value=1.0)


@pytest.mark.parametrize("mode,count", [("none", 1), ("flip", 4), ("d4", 8)])
def test_transform_counts_and_distinct_images(mode, count):
    transforms = transforms_for(mode)
    assert len(transforms) == count
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    images = {tuple(t.apply(x).flatten().tolist()) + tuple(t.apply(x).shape) for t in transforms}
    assert len(images) == count  # all group elements differ


@pytest.mark.parametrize("transform", transforms_for("d4"), ids=lambda t: t.name)
def test_every_transform_round_trips_on_non_square_arrays(transform):
    x = torch.randn(2, 3, 6, 10)
    y = transform.apply(x)
    assert y.shape[-2:] in ((6, 10), (10, 6))
    torch.testing.assert_close(transform.invert(y), x, rtol=0, atol=0)


def test_flip_transforms_keep_the_tile_shape():
    x = torch.randn(1, 1, 4, 9)
    assert all(t.apply(x).shape == x.shape for t in transforms_for("flip"))


def test_d4_matches_the_dihedral_group_written_with_numpy():
    a = np.arange(12).reshape(3, 4)
    expected = {a.tobytes() + bytes(a.shape)}
    for k, flip in itertools.product(range(4), (False, True)):
        b = np.rot90(a[:, ::-1] if flip else a, k)
        expected.add(np.ascontiguousarray(b).tobytes() + bytes(b.shape))
    got = {
        np.ascontiguousarray(t.apply(torch.from_numpy(a)[None, None])[0, 0].numpy()).tobytes()
        + bytes(t.apply(torch.from_numpy(a)[None, None]).shape[-2:])
        for t in transforms_for("d4")
    }
    assert got == expected


def test_per_pixel_model_is_invariant_under_tta(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((40, 56)))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    out = {}
    for mode in ("none", "d4"):
        for unc in ("entropy", "mutual_information"):
            paths = MultiClassInferenceProcessor(
                net, tta_mode=mode, uncertainty_mode=unc, model_input_shape=(32, 48), step_shape=(16, 24)
            ).process(image, output_path=str(tmp_path / f"{mode}_{unc}.tif"))
            out[mode, unc] = (read_raster(paths["segmentation"]), read_raster(paths["uncertainty"]))
    np.testing.assert_array_equal(out["d4", "entropy"][0], out["none", "entropy"][0])
    np.testing.assert_allclose(out["d4", "entropy"][1], out["none", "entropy"][1], atol=1e-5)
    np.testing.assert_allclose(out["d4", "mutual_information"][1], 0.0, atol=1e-5)
    assert out["none", "entropy"][1].max() > 0.1  # the deterministic entropy itself is not trivial


def test_asymmetric_model_disagrees_across_transforms(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((48, 48), seed=3))
    net = SmallConvNet(classes=3).eval()  # 3x3 kernels are not symmetric
    mi = {}
    for mode in ("flip", "d4"):
        paths = MultiClassInferenceProcessor(
            net, tta_mode=mode, uncertainty_mode="mutual_information", model_input_shape=32, step_shape=16
        ).process(image, output_path=str(tmp_path / f"{mode}.tif"))
        mi[mode] = read_raster(paths["uncertainty"])
    assert mi["flip"].mean() > 1e-4 and mi["d4"].mean() > 1e-4
    assert not np.allclose(mi["flip"], mi["d4"])
    assert mi["d4"].max() <= math.log(3)


def test_mc_times_tta_matches_the_exact_enumeration(tmp_path):
    """For a per-pixel model every transform gives the same distribution, so T x K samples estimate the same
    exact expectation over dropout masks (enumerated here independently)."""
    net = PerPixelDropoutNet(p=0.4, seed=5).eval()
    pixels = np.array([[0.5, -1.0], [1.5, 0.2], [-0.7, 2.0], [1.0, 1.0]], dtype=np.float32)
    tile = pixels.T.reshape(2, 2, 2)  # (bands, 2, 2)
    w1, b1 = net.conv1.weight[:, :, 0, 0].double().detach().numpy(), net.conv1.bias.double().detach().numpy()
    w2, b2 = net.conv2.weight[:, :, 0, 0].double().detach().numpy(), net.conv2.bias.double().detach().numpy()
    hidden = np.maximum(tile.reshape(2, -1).T.astype(np.float64) @ w1.T + b1, 0)
    exact_mean = 0.0
    for mask in itertools.product([0, 1], repeat=3):
        m = np.array(mask, float)
        logits = (hidden * m / 0.6) @ w2.T + b2
        soft = np.exp(logits - logits.max(1, keepdims=True))
        soft /= soft.sum(1, keepdims=True)
        exact_mean = exact_mean + np.prod(np.where(m == 1, 0.6, 0.4)) * soft
    exact_entropy = -(exact_mean * np.log(exact_mean)).sum(1).reshape(2, 2)
    image = write_geotiff(tmp_path / "in.tif", tile)
    model = LoadedModel(net, normalization=IDENTITY, in_channels=2)
    paths = MCDropoutInferenceProcessor(
        model, n_samples=150, tta_mode="d4", model_input_shape=2, step_shape=2, seed=1
    ).process(image, output_path=str(tmp_path / "out.tif"))
    entropy = read_raster(paths["uncertainty"])
    np.testing.assert_allclose(entropy, exact_entropy, atol=0.03)  # 1200 samples: MC error well below 0.03
    np.testing.assert_array_equal(read_raster(paths["segmentation"]), exact_mean.argmax(1).reshape(2, 2))


def test_each_augmentation_gets_its_own_dropout_masks(tmp_path):
    """A per-pixel model is invariant under flips, so with T = 1 the K = 4 passes differ only if each
    augmentation draws its own dropout masks: mutual information > 0 proves they do."""
    image = write_geotiff(tmp_path / "in.tif", random_image((16, 16), bands=2))
    model = LoadedModel(PerPixelDropoutNet(p=0.5).eval(), normalization=IDENTITY, in_channels=2)
    kwargs = dict(n_samples=1, model_input_shape=16, step_shape=16, uncertainty_mode="mutual_information", seed=4)
    a = MCDropoutInferenceProcessor(model, tta_mode="flip", **kwargs).process(
        image, output_path=str(tmp_path / "a.tif")
    )
    none = MCDropoutInferenceProcessor(model, tta_mode="none", **kwargs).process(
        image, output_path=str(tmp_path / "n.tif")
    )
    assert read_raster(a["uncertainty"]).max() > 0.01
    np.testing.assert_allclose(read_raster(none["uncertainty"]), 0.0, atol=1e-6)  # T = 1, K = 1: MI is 0
    b = MCDropoutInferenceProcessor(model, tta_mode="flip", **kwargs).process(
        image, output_path=str(tmp_path / "b.tif")
    )
    np.testing.assert_array_equal(read_raster(a["uncertainty"]), read_raster(b["uncertainty"]))


def test_multiclass_processor_defaults_to_d4_and_config_can_change_it(tmp_path):
    net = torch.nn.Conv2d(3, 2, 1)
    assert MultiClassInferenceProcessor(net).config.tta_mode == "d4"
    model = LoadedModel(net, in_channels=3, inference_defaults={"tta_mode": "flip"})
    assert MultiClassInferenceProcessor(model).config.tta_mode == "flip"
    assert MultiClassInferenceProcessor(model, tta_mode="none").config.tta_mode == "none"
    assert MCDropoutInferenceProcessor(torch.nn.Sequential(net, torch.nn.Dropout2d(0.1))).config.tta_mode == "none"


@pytest.mark.parametrize(
    "given,normalized",
    [
        ("rot90, identity", "identity,rot90"),
        ("HFLIP,identity,transpose", "identity,hflip,transpose"),
        (["rot270", "vflip"], "vflip,rot270"),
        ("identity", "none"),  # a subset equal to a named set is that name
        ("rot180,vflip,hflip,identity", "flip"),
        ("antitranspose,transpose,rot270,rot90,rot180,vflip,hflip,identity", "d4"),
        (" d4 ", "d4"),
    ],
)
def test_tta_mode_takes_any_subset_in_one_spelling(given, normalized):
    from mc_uncertainty_plugin.core.config import normalize_tta_mode

    assert normalize_tta_mode(given) == normalized
    assert InferenceConfig(tta_mode=given).tta_mode == normalized
    names = [t.name for t in transforms_for(given)]
    assert names == [t.name for t in transforms_for("d4") if t.name in names]  # the canonical order


@pytest.mark.parametrize(
    "given,detail",
    [("identity,identity", "repeated: identity"), ("hflip,mirror", "'mirror'"), ("", "none, flip, d4"), (",", "''")],
)
def test_bad_tta_subsets_are_errors_naming_tta_mode(given, detail):
    with pytest.raises(ParameterError) as caught:
        InferenceConfig(tta_mode=given)
    assert str(caught.value).startswith("TTA_MODE must")
    assert detail in str(caught.value)


def test_a_subset_in_another_order_gives_the_same_bits(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((40, 40), seed=6))
    kwargs = dict(n_samples=2, model_input_shape=32, step_shape=16, seed=3)
    outputs = []
    for name, mode in (("a", "rot90,hflip,identity"), ("b", "identity, hflip ,rot90")):
        paths = MCDropoutInferenceProcessor(SmallConvNet(p=0.3), tta_mode=mode, **kwargs).process(
            image, output_path=str(tmp_path / f"{name}.tif")
        )
        outputs.append([read_raster(paths[k]) for k in ("segmentation", "uncertainty")])
        assert gdal.Open(paths["uncertainty"]).GetMetadataItem("MC_TTA_MODE") == "identity,hflip,rot90"
    for first, second in zip(*outputs):
        np.testing.assert_array_equal(first, second)


def test_a_transform_samples_the_same_masks_in_every_set():
    """A transform's dropout masks are keyed by its place among the eight, not in the chosen set: the mean of a
    two-transform run is the mean of the two one-transform runs (with keys by position in the set, ``hflip``
    alone would reuse the masks of ``identity``)."""
    net = SmallConvNet(p=0.5).eval()
    layers = find_dropout_layers(net)
    tiles = np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32)

    def mean_probs(mode: str) -> np.ndarray:
        sampler = EnsembleSampler(
            net,
            torch.device("cpu"),
            n_samples=3,
            mc_dropout=True,
            transforms=transforms_for(mode),
            dropout_layers=layers,
            seed=9,
            need_expected_entropy=False,
            cache_prefix=False,
        )
        return sampler(tiles, [(0, 0), (0, 16)]).mean_probs

    pair = mean_probs("hflip,rot270")
    np.testing.assert_allclose(pair, (mean_probs("hflip") + mean_probs("rot270")) / 2, atol=1e-6)
    assert not np.allclose(mean_probs("hflip"), mean_probs("identity"), atol=1e-3)


def test_transform_names_transforms_and_dropout_keys_share_one_order():
    from mc_uncertainty_plugin.core.inference import transforms

    assert tuple(transforms._BY_NAME) == transforms.TTA_TRANSFORMS
    assert [t.name for t in transforms.transforms_for("d4")] == list(transforms.TTA_TRANSFORMS)

"""The deterministic prefix runs once per tile batch, with results equal to full passes."""

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from core_fixtures import random_image, read_raster, write_geotiff
from torch import nn

from mc_uncertainty_plugin.core import MCDropoutInferenceProcessor
from mc_uncertainty_plugin.core.inference.sampler import EnsembleSampler
from mc_uncertainty_plugin.core.inference.transforms import transforms_for
from mc_uncertainty_plugin.core.models.dropout import find_dropout_layers
from mc_uncertainty_plugin.core.models.loading import _inject_decoder_dropout


def fpn():
    return smp.FPN("resnet18", encoder_weights=None, encoder_depth=3, classes=3, decoder_dropout=0.3, upsampling=2)


def unet_injected():
    net = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(32, 16, 8), classes=3)
    _inject_decoder_dropout(net, 0.3)
    return net


def deeplab():
    return smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=3)


def segformer_injected():
    """A transformer encoder (MiT): Segformer is among the models torch.fx cannot trace."""
    net = smp.Segformer("mit_b0", encoder_weights=None, classes=3)
    _inject_decoder_dropout(net, 0.3)
    return net


class InPlaceAfterDropout(nn.Module):
    """The suffix adds into a deterministic activation in place: a cache without checks would corrupt it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.drop = nn.Dropout2d(0.5)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        features = self.stem(x)
        skip = self.branch(features)
        skip += self.drop(features)  # in place on a cached output
        return self.head(skip)


def sampler(net, cache_prefix, n=4, tta="none"):
    net = net.eval()
    torch.manual_seed(0)
    return EnsembleSampler(
        net,
        torch.device("cpu"),
        n_samples=n,
        mc_dropout=True,
        transforms=transforms_for(tta),
        dropout_layers=find_dropout_layers(net),
        seed=3,
        need_expected_entropy=True,
        cache_prefix=cache_prefix,
    )


@pytest.mark.parametrize(
    "build",
    [fpn, unet_injected, deeplab, segformer_injected],
    ids=["FPN", "Unet+injected", "DeepLabV3+", "Segformer+injected"],
)
def test_cached_prefix_equals_full_passes(build):
    torch.manual_seed(1)
    net = build().eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    keys = [(0, 0), (0, 64)]
    cached = sampler(net, True)
    full = sampler(net, False)
    p_cached, e_cached = cached(x, keys)[:2]
    p_full, e_full = full(x, keys)[:2]
    assert cached.cache_status == "on", cached.execution_path
    assert "replayed" in cached.execution_path
    np.testing.assert_allclose(p_cached, p_full, atol=1e-5)
    np.testing.assert_allclose(e_cached, e_full, atol=1e-5)
    p_again = cached(x, keys).mean_probs  # the cache is per batch: a second batch recomputes the prefix
    np.testing.assert_allclose(p_again, p_full, atol=1e-5)


def test_in_place_change_of_a_cached_activation_falls_back_to_full_passes():
    torch.manual_seed(2)
    net = InPlaceAfterDropout().eval()
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    cached = sampler(net, True)
    p_cached, e_cached = cached(x, [(0, 0)])[:2]
    p_full, e_full = sampler(net, False)(x, [(0, 0)])[:2]
    assert cached.cache_status == "off"
    assert "modified in place" in cached.execution_path
    np.testing.assert_allclose(p_cached, p_full, atol=1e-6)
    np.testing.assert_allclose(e_cached, e_full, atol=1e-6)
    assert e_full.max() > 0  # the uncertainty did not silently vanish


def test_cache_works_with_tta_and_counts_the_prefix_once(tmp_path):
    calls = {"stem": 0}
    net = fpn().eval()
    # the encoder's first conv runs only when the encoder really computes (a replayed call skips its children)
    net.encoder.conv1.register_forward_hook(lambda *a: calls.__setitem__("stem", calls["stem"] + 1))
    x = np.random.default_rng(2).normal(size=(1, 3, 64, 64)).astype(np.float32)
    s = sampler(net, True, n=5, tta="flip")
    p_cached = s(x, [(0, 0)]).mean_probs
    # 4 transforms x 1 recording pass, plus 1 full pass verifying the cache on the first batch; not 4 x 5
    assert calls["stem"] == 4 + 1
    p_full = sampler(net, False, n=5, tta="flip")(x, [(0, 0)]).mean_probs
    np.testing.assert_allclose(p_cached, p_full, atol=1e-5)


def test_engine_logs_the_execution_path(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((64, 64)))
    lines = []
    MCDropoutInferenceProcessor(fpn(), n_samples=3, model_input_shape=64, step_shape=64).process(
        image, output_path=str(tmp_path / "o.tif"), log=lines.append
    )
    assert any(line.startswith("Execution: deterministic prefix once per tile batch") for line in lines)
    assert read_raster(str(tmp_path / "o_mc_uncertainty.tif")).max() > 0


class CountsItsCalls(nn.Module):
    """Upstream of the dropout, but not deterministic: its output changes with every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + self.calls


class CounterBeforeDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.counter = CountsItsCalls()
        self.conv = nn.Conv2d(3, 16, 1)
        self.drop = nn.Dropout2d(0.5)  # 16 channels: some are kept in every pass
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.conv(self.counter(x))))


def test_a_prefix_module_that_is_not_deterministic_is_refused():
    """Replaying the counter's first output would hide that every full pass sees another value: the first
    batch's check of a replayed pass against a full pass catches it, and the run falls back to full passes."""
    torch.manual_seed(3)
    net = CounterBeforeDropout().eval()
    x = np.random.default_rng(5).normal(size=(1, 3, 8, 8)).astype(np.float32)
    cached = sampler(net, True)
    cached(x, [(0, 0)])
    assert cached.cache_status == "off"
    assert "prefix cache refused: replayed pass differs from a full pass" in cached.execution_path
    calls = net.counter.calls
    cached(x, [(0, 0)])
    assert net.counter.calls - calls == 4  # T full passes from then on: the counter runs every time

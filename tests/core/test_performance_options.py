"""Speed options (memory layout, opt-in mixed precision), the fast merge kernels and the run's time accounting."""

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from core_fixtures import SmallConvNet, random_image, read_raster, write_geotiff
from osgeo import gdal
from torch import nn

from mc_uncertainty_plugin.core import LoadedModel, MCDropoutInferenceProcessor, MultiClassInferenceProcessor
from mc_uncertainty_plugin.core.errors import ParameterError
from mc_uncertainty_plugin.core.inference import sampler as sampler_module
from mc_uncertainty_plugin.core.inference.device import batch_for_memory, resolve_memory_format
from mc_uncertainty_plugin.core.inference.sampler import softmax_terms
from mc_uncertainty_plugin.core.inference.uncertainty import argmax_and_max, entropy


class PixelMLP(nn.Module):
    """No convolution at all: a per-pixel linear layer over the band axis."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def small_fpn() -> nn.Module:
    torch.manual_seed(4)
    return smp.FPN("resnet18", encoder_weights=None, encoder_depth=3, classes=3, decoder_dropout=0.3, upsampling=2)


def test_memory_format_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    conv = SmallConvNet()
    assert resolve_memory_format("auto", cpu, conv) == torch.channels_last
    assert resolve_memory_format("auto", cpu, torch.jit.script(conv)) == torch.channels_last
    assert resolve_memory_format("auto", cpu, PixelMLP()) == torch.contiguous_format
    assert resolve_memory_format("auto", cuda, conv) == torch.contiguous_format  # float32 on GPU: no gain
    assert resolve_memory_format("contiguous", cpu, conv) == torch.contiguous_format
    assert resolve_memory_format("channels_last", cpu, PixelMLP()) == torch.channels_last


def _run(net, image, out, **options):
    lines = []
    proc = MCDropoutInferenceProcessor(net, n_samples=4, model_input_shape=64, step_shape=32, seed=5, **options)
    proc.process(image, output_path=str(out), log=lines.append)
    classes = read_raster(str(out))
    uncertainty = read_raster(str(out).replace(".tif", "_mc_uncertainty.tif"))
    return classes, uncertainty, lines, proc.last_result


@pytest.mark.parametrize("build", [lambda: SmallConvNet(p=0.3), small_fpn], ids=["full passes", "prefix cache"])
def test_channels_last_gives_the_results_of_contiguous(tmp_path, build):
    image = write_geotiff(tmp_path / "in.tif", random_image((80, 96)))
    net = build().eval()
    c_auto, u_auto, log_auto, _ = _run(net, image, tmp_path / "auto.tif")
    c_cont, u_cont, log_cont, _ = _run(net, image, tmp_path / "cont.tif", memory_format="contiguous")
    assert any("channels_last" in line for line in log_auto if line.startswith("Device:"))
    assert not any("channels_last" in line for line in log_cont if line.startswith("Device:"))
    np.testing.assert_array_equal(c_auto, c_cont)
    np.testing.assert_allclose(u_auto, u_cont, atol=1e-5)
    assert u_auto.max() > 0  # the dropout really sampled
    # the weights are back in their own layout after the run
    assert all(p.is_contiguous() for p in net.parameters())


@pytest.mark.slow
def test_autocast_is_opt_in_recorded_and_close_to_float32(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((80, 96)))
    net = small_fpn().eval()
    c32, u32, _, _ = _run(net, image, tmp_path / "f32.tif")
    c16, u16, lines, _ = _run(net, image, tmp_path / "bf16.tif", autocast="bfloat16")
    assert any("autocast bfloat16" in line for line in lines if line.startswith("Device:"))
    assert gdal.Open(str(tmp_path / "f32.tif")).GetMetadata()["MC_PRECISION"] == "float32"
    assert gdal.Open(str(tmp_path / "bf16.tif")).GetMetadata()["MC_PRECISION"] == "autocast bfloat16"
    assert np.abs(u16 - u32).max() > 0  # mixed precision really ran
    assert np.abs(u16 - u32).mean() < 0.02
    assert (c16 == c32).mean() > 0.95
    assert u16.min() >= 0 and u16.max() <= np.log(3) + 1e-6


def test_bad_speed_options_name_the_key_and_value():
    with pytest.raises(ParameterError, match="memory_format.*'sideways'"):
        MCDropoutInferenceProcessor(SmallConvNet(p=0.2), memory_format="sideways")
    with pytest.raises(ParameterError, match="autocast.*'int8'"):
        MultiClassInferenceProcessor(SmallConvNet(), autocast="int8")


def test_config_section_sets_the_speed_options():
    model = LoadedModel(SmallConvNet(p=0.2), inference_defaults={"memory_format": "contiguous", "autocast": "bfloat16"})
    config = MCDropoutInferenceProcessor(model).config
    assert (config.memory_format, config.autocast) == ("contiguous", "bfloat16")
    assert MCDropoutInferenceProcessor(model, autocast="off").config.autocast == "off"  # an argument wins


@pytest.mark.parametrize("classes", [2, 5, 17])
def test_fast_argmax_and_entropy_match_the_definitions(classes):
    rng = np.random.default_rng(classes)
    logits = rng.normal(size=(classes, 40, 30)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    probs[:, :3] = 1.0 / classes  # exact ties: the first class wins, like np.argmax
    probs[:, 3] = 0.0
    probs[classes - 1, 3] = 1.0  # zeros: 0 ln 0 = 0
    probs = probs.astype(np.float32)
    index, top = argmax_and_max(probs)
    np.testing.assert_array_equal(index, np.argmax(probs, axis=0))
    np.testing.assert_array_equal(top, probs.max(axis=0))
    assert index.dtype == np.uint8
    p64 = probs.astype(np.float64)
    expected = -np.sum(np.where(p64 > 0, p64 * np.log(np.where(p64 > 0, p64, 1.0)), 0.0), axis=0)
    np.testing.assert_allclose(entropy(probs), np.clip(expected, 0, np.log(classes)), atol=2e-6)
    np.testing.assert_allclose(entropy(np.moveaxis(probs, 0, 2), axis=2), entropy(probs), atol=1e-7)
    assert entropy(probs)[3].max() == 0.0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "interpolated"])
@pytest.mark.parametrize("classes", [1, 2, 5])
def test_written_out_softmax_matches_the_definition_and_leaves_the_logits_alone(layout, classes):
    rng = np.random.default_rng(classes)
    z = rng.normal(size=(2, classes, 12, 9)) * 4
    z[0, :, 0, 0] = 80.0  # large logits: exp overflows without the shift
    z[0, 0, 0, 1] = 500.0
    if classes > 1:
        z[1, 0, 2, 2] = -np.inf  # a class switched off: p = 0 and 0 ln 0 = 0, not nan
    logits = torch.from_numpy(z.astype(np.float32))
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    elif layout == "interpolated":
        logits = logits[:, :, ::2, :]  # a strided view: not contiguous in either layout
    before = logits.clone()
    exp, total, h = softmax_terms(logits, with_entropy=True)
    probs = exp / total
    exp, total, none = softmax_terms(logits, with_entropy=False)
    only_probs = exp / total

    z64 = before.double().numpy()
    if classes == 1:
        s = 1.0 / (1.0 + np.exp(-z64[:, 0]))
        expected = np.stack([1.0 - s, s], axis=1)
    else:
        shifted = z64 - z64.max(axis=1, keepdims=True)
        expected = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    logs = np.log(np.where(expected > 0, expected, 1.0))
    expected_h = -np.sum(np.where(expected > 0, expected * logs, 0.0), axis=1)
    np.testing.assert_allclose(probs.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(only_probs.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(h.numpy(), expected_h, atol=2e-6)
    assert none is None and np.isfinite(h.numpy()).all()
    torch.testing.assert_close(logits, before, rtol=0, atol=0)  # the model's output is never changed in place


def test_run_accounts_for_its_time_and_removes_its_hooks(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((80, 96)))
    net = small_fpn().eval()
    _, _, lines, result = _run(net, image, tmp_path / "o.tif", batch_size=1)
    assert set(result.stage_seconds) == {"setup", "read", "sampler", "merge", "write", "finish"}
    assert all(v >= 0 for v in result.stage_seconds.values())
    assert sum(result.stage_seconds.values()) <= result.seconds + 1e-3
    assert result.pass_seconds["probe"][0] == 1
    windows, samples = result.windows, result.passes_per_window
    recorded, _ = result.pass_seconds["full"]
    replayed, _ = result.pass_seconds["replay"]
    # batch 1: a recording pass per window (+ 1 full pass verifying the cache), the other samples replayed
    assert (recorded, replayed) == (windows + 1, windows * (samples - 1))
    model_seconds = sum(total for _, total in result.pass_seconds.values())
    assert model_seconds <= result.stage_seconds["sampler"] + result.stage_seconds["setup"]
    assert any(line.startswith("Time: model passes") for line in lines)
    for module in net.modules():  # hooks and cache wrappers lived for the run only
        assert not module._forward_hooks
        assert "forward" not in module.__dict__


def test_gpu_batches_fit_a_memory_budget():
    gib, mib = 2**30, 2**20
    assert batch_for_memory(8 * gib, 300 * mib) == 13  # floor(4 GiB / 300 MiB)
    assert batch_for_memory(100 * gib, 300 * mib) == 32  # capped
    assert batch_for_memory(200 * mib, 300 * mib) == 1  # never below one tile
    assert batch_for_memory(8 * gib, 300 * mib, fraction=0.25) == 6
    assert batch_for_memory(8 * gib, 0) == 32  # nothing measured (no allocation in the probe)


@pytest.mark.parametrize("slab_elements", [1 << 17, 700])
def test_softmax_in_slabs_matches_the_definition_and_does_not_depend_on_the_batch(monkeypatch, slab_elements):
    """Slabs of rows (several per image, the last one shorter, or one row each) give the softmax and entropy of
    the definition, and an image alone gets the same bits as inside a batch."""
    monkeypatch.setattr(sampler_module, "_SLAB_ELEMENTS", slab_elements)
    z = torch.from_numpy((np.random.default_rng(3).normal(size=(3, 4, 37, 29)) * 5).astype(np.float32))
    before = z.clone()
    exp, total, h = softmax_terms(z, with_entropy=True)
    z64 = z.double().numpy()
    expected = np.exp(z64 - z64.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose((exp / total).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(h.numpy(), -(expected * np.log(expected)).sum(axis=1), atol=2e-6)
    for b in range(3):
        alone = softmax_terms(z[b : b + 1], with_entropy=True)
        assert all(torch.equal(whole[b : b + 1], part) for whole, part in zip((exp, total, h), alone))
    torch.testing.assert_close(z, before, rtol=0, atol=0)

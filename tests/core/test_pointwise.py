"""1x1 convolutions computed in their input's layout: same numbers as a float64 reference, no layout change, and
the adapters are installed only while a channels_last CPU run holds the model."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from mc_uncertainty_plugin.core.inference import pointwise
from mc_uncertainty_plugin.core.inference.device import ModelOnDevice
from mc_uncertainty_plugin.core.inference.pointwise import PointwiseInInputLayout, is_pointwise
from mc_uncertainty_plugin.core.models.loading import as_loaded_model


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Σ_c w[o, c] x[b, c, h, w] + bias[o] in float64, written out."""
    w = conv.weight.detach().double()[:, :, 0, 0]
    out = torch.einsum("oc,bchw->bohw", w, x.double())
    return out if conv.bias is None else out + conv.bias.detach().double().view(1, -1, 1, 1)


def _spy_linear(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = pointwise.F.linear

    def linear(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pointwise.F, "linear", linear)
    return calls


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("batch", [3, 16])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_convolution_matches_the_sum_over_channels_in_the_input_layout(
    monkeypatch, threads, layout, batch, bias
):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 5, 1, bias=bias).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 12, 9, 7)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()
    linear_calls = _spy_linear(monkeypatch)
    with _threads(threads), torch.inference_mode(), PointwiseInInputLayout(conv):
        out = conv(x)
    torch.testing.assert_close(out.double(), _reference(conv, x), rtol=1e-5, atol=1e-5)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    if threads == 1 and batch < 16:  # no transposition to the weight's layout (else PyTorch decides)
        assert out.is_contiguous(memory_format=memory_format)
    # the matrix product over the NHWC view replaces PyTorch's plain kernel (one thread, < 16 images) only
    assert bool(linear_calls) == (layout == "channels_last" and threads == 1 and batch < 16)


def test_only_plain_1x1_convolutions_are_adapted_and_only_inside_the_context():
    class Subclass(nn.Conv2d):
        pass

    model = nn.Sequential(
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 1, stride=2),
        nn.Conv2d(4, 4, 1, groups=2),
        nn.Conv2d(4, 4, 1, dilation=2),
        nn.Conv2d(4, 4, 1, padding=1),
        Subclass(4, 4, 1),
        nn.Conv2d(4, 4, 1, padding="same"),
    )
    assert [is_pointwise(m) for m in model] == [True, False, False, False, False, False, False, True]
    with PointwiseInInputLayout(model):
        assert ["_conv_forward" in m.__dict__ for m in model] == [is_pointwise(m) for m in model]
    assert not any("_conv_forward" in m.__dict__ for m in model)


def test_a_channels_last_cpu_run_adapts_the_model_until_its_last_user_leaves():
    model = as_loaded_model(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)))
    cpu = torch.device("cpu")
    first, second = model.module[0], model.module[2]
    with ModelOnDevice(model, cpu, torch.contiguous_format):
        assert "_conv_forward" not in first.__dict__
    with ModelOnDevice(model, cpu, torch.channels_last):
        with ModelOnDevice(model, cpu, torch.channels_last):
            assert "_conv_forward" in first.__dict__ and "_conv_forward" in second.__dict__
        assert "_conv_forward" in first.__dict__  # another run still holds the model
        x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
        with _threads(1), torch.inference_mode():
            out = model.module(x)
    assert "_conv_forward" not in first.__dict__ and "_conv_forward" not in second.__dict__
    with torch.inference_mode():
        torch.testing.assert_close(out, model.module(x.contiguous()), rtol=1e-5, atol=1e-6)

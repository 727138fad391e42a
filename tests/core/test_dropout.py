"""MC dropout mechanics, checked against an exact enumeration of the dropout masks of a tiny per-pixel model."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from core_fixtures import PerPixelDropoutNet, read_raster, write_geotiff
from torch import nn

from mc_uncertainty_plugin.core import LoadedModel, MCDropoutInferenceProcessor, Normalization
from mc_uncertainty_plugin.core.inference.sampler import EnsembleSampler
from mc_uncertainty_plugin.core.inference.transforms import transforms_for
from mc_uncertainty_plugin.core.models.dropout import MCDropoutHooks, find_dropout_layers, seeded_dropout

IDENTITY = Normalization(mean=(0.0,), std=(1.0,), max_pixel_value=1.0)
PIXELS = np.array([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5], [-2.0, 1.5]], dtype=np.float32)  # 4 pixels x 2 bands


def enumerate_masks(net: PerPixelDropoutNet, pixels: np.ndarray):
    """Every channel mask m in {0,1}^hidden with P(m) = prod (1-p)^m p^(1-m), and the softmax it gives.

    Written from the definition of Dropout2d (keep a channel with prob. 1-p, scale kept ones by 1/(1-p)),
    independently of the plugin's code.
    """
    p = net.dropout.p
    w1, b1 = net.conv1.weight[:, :, 0, 0].detach().double().numpy(), net.conv1.bias.detach().double().numpy()
    w2, b2 = net.conv2.weight[:, :, 0, 0].detach().double().numpy(), net.conv2.bias.detach().double().numpy()
    hidden = np.maximum(pixels.astype(np.float64) @ w1.T + b1, 0.0)  # (P, hidden)
    outcomes = []
    for mask in itertools.product([0, 1], repeat=w1.shape[0]):
        m = np.array(mask, dtype=np.float64)
        prob = np.prod(np.where(m == 1, 1 - p, p))
        logits = (hidden * m / (1 - p)) @ w2.T + b2
        softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
        softmax /= softmax.sum(axis=1, keepdims=True)
        outcomes.append((prob, softmax))  # softmax: (P, C)
    return outcomes


def entropy_np(p, axis=-1):
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=axis)


def as_tile(pixels: np.ndarray) -> np.ndarray:
    """(P, bands) -> (1, bands, 1, P) tile."""
    return pixels.T[None, :, None, :].copy()


def test_every_sample_is_one_enumerated_mask_and_masks_occur_with_their_probability():
    net = PerPixelDropoutNet().eval()
    outcomes = enumerate_masks(net, PIXELS)
    layers = find_dropout_layers(net)
    sampler = EnsembleSampler(
        net,
        torch.device("cpu"),
        n_samples=1,
        mc_dropout=True,
        transforms=transforms_for("none"),
        dropout_layers=layers,
        seed=7,
        need_expected_entropy=False,
    )
    counts = np.zeros(len(outcomes))
    draws = 1500
    for key in range(draws):
        probs = sampler(as_tile(PIXELS), [(key, 0)]).mean_probs
        sample = probs[0, :, 0, :].T  # (P, C)
        distances = [np.abs(sample - softmax).max() for _, softmax in outcomes]
        best = int(np.argmin(distances))
        assert distances[best] < 1e-5, "a sample is not the output of any dropout mask"
        counts[best] += 1
    expected = np.array([prob for prob, _ in outcomes]) * draws
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 24.3  # chi-square, 7 degrees of freedom, p = 0.001


def test_mc_estimate_converges_to_the_exact_expectation(tmp_path):
    net = PerPixelDropoutNet().eval()
    outcomes = enumerate_masks(net, PIXELS)
    exact_mean = sum(prob * s for prob, s in outcomes)  # (P, C)
    exact_expected_entropy = sum(prob * entropy_np(s) for prob, s in outcomes)
    exact_sd = np.sqrt(sum(prob * (s - exact_mean) ** 2 for prob, s in outcomes))

    image = write_geotiff(tmp_path / "pixels.tif", as_tile(PIXELS)[0])
    model = LoadedModel(net, normalization=IDENTITY, in_channels=2)
    n = 1000
    results = {}
    for mode in ("entropy", "mutual_information"):
        proc = MCDropoutInferenceProcessor(
            model, n_samples=n, uncertainty_mode=mode, model_input_shape=(1, 4), step_shape=(1, 4), seed=3, batch_size=1
        )
        paths = proc.process(image, tmp_path, output_path=str(tmp_path / f"classes_{mode}.tif"))
        results[mode] = read_raster(paths["uncertainty"])[0]
        classes = read_raster(paths["segmentation"])[0]
    # class map = argmax of the MC mean; the exact mean has clear winners here
    np.testing.assert_array_equal(classes, exact_mean.argmax(axis=1))
    # H[p̄] and MI = H[p̄] - E[H[p]] against the exact values, within the Monte Carlo error (5 standard errors,
    # propagated through |dH/dp| <= |ln p| + 1)
    exact_entropy = entropy_np(exact_mean)
    slack = 5 * (exact_sd * (np.abs(np.log(exact_mean)) + 1)).sum(axis=1) / math.sqrt(n)
    assert np.all(np.abs(results["entropy"] - exact_entropy) < slack)
    assert np.all(
        np.abs(results["mutual_information"] - (exact_entropy - exact_expected_entropy))
        < slack + 5 * 0.6 / math.sqrt(n)
    )
    assert np.all(results["mutual_information"] > 0)


def test_masks_depend_on_seed_tile_and_sample_not_on_batch():
    x = torch.ones(3, 16, 4, 4)
    a = seeded_dropout(x, "channel", 0.5, [11, 12, 13])
    b = torch.cat([seeded_dropout(x[i : i + 1], "channel", 0.5, [s]) for i, s in enumerate([11, 12, 13])])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a[0], a[1])
    kept = a[0, :, 0, 0]
    assert set(kept.unique().tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize(
    "module,kind", [(nn.AlphaDropout(0.3), "alpha"), (nn.FeatureAlphaDropout(0.3), "feature_alpha")]
)
def test_alpha_dropout_keeps_selu_statistics_like_pytorch(module, kind):
    x = torch.randn(4, 64, 32, 32)
    ours = seeded_dropout(x, kind, 0.3, [1, 2, 3, 4])
    module.train()
    torch.manual_seed(0)
    theirs = module(x)
    # same affine map: dropped units go to the same constant, kept ones to the same line
    for result in (ours, theirs):
        assert abs(result.mean().item() - x.mean().item()) < 0.05
        assert abs(result.std().item() - x.std().item()) < 0.05
    dropped_ours = ours[ours.isclose(ours.min())]
    dropped_theirs = theirs[theirs.isclose(theirs.min())]
    assert dropped_ours.numel() > 0 and dropped_theirs.numel() > 0


def test_hooks_leave_model_flags_and_input_untouched():
    net = PerPixelDropoutNet()
    net.eval()
    flags = {name: m.training for name, m in net.named_modules()}
    x = torch.ones(2, 3, 2, 2)
    before = x.clone()
    layer_input = torch.ones(2, 3, 2, 2)
    with MCDropoutHooks(find_dropout_layers(net), seed=0) as hooks:
        hooks.set_keys([(0, 0, 0, 0), (0, 0, 0, 1)])
        out = net.dropout(layer_input)
    assert torch.equal(layer_input, before)  # never in place
    assert not torch.equal(out, layer_input)
    assert flags == {name: m.training for name, m in net.named_modules()}
    assert torch.equal(net.dropout(x), x)  # hooks removed: eval dropout is the identity again


def test_layers_with_p_zero_are_inactive_and_warn():
    net = PerPixelDropoutNet(p=0.0)
    assert find_dropout_layers(net) == []
    with pytest.warns(UserWarning, match="no active dropout"):
        MCDropoutInferenceProcessor(net, n_samples=3)


def test_a_model_with_dropout_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MCDropoutInferenceProcessor(PerPixelDropoutNet(), n_samples=3)


def test_torchscript_dropout_is_found_and_sampled(tmp_path):
    net = PerPixelDropoutNet().eval()
    scripted = torch.jit.script(net)
    layers = find_dropout_layers(scripted)
    assert [(layer.kind, layer.p, layer.scripted) for layer in layers] == [("channel", 0.3, True)]
    outcomes = enumerate_masks(net, PIXELS)
    sampler = EnsembleSampler(
        scripted,
        torch.device("cpu"),
        n_samples=1,
        mc_dropout=True,
        transforms=transforms_for("none"),
        dropout_layers=layers,
        seed=1,
        need_expected_entropy=False,
    )
    seen = set()
    for key in range(40):
        probs = sampler(as_tile(PIXELS), [(key, 0)]).mean_probs
        sample = probs[0, :, 0, :].T
        distances = [np.abs(sample - s).max() for _, s in outcomes]
        assert min(distances) < 1e-5
        seen.add(int(np.argmin(distances)))
    assert len(seen) > 3
    assert not scripted.dropout.training  # flags restored
    again = sampler(as_tile(PIXELS), [(5, 0)]).mean_probs
    first = sampler(as_tile(PIXELS), [(5, 0)]).mean_probs
    np.testing.assert_array_equal(again, first)


@pytest.mark.slow
def test_variation_ratio_expected_entropy_and_confidence_against_the_enumeration(tmp_path):
    net = PerPixelDropoutNet(p=0.5, seed=3).eval()
    outcomes = enumerate_masks(net, PIXELS)
    classes = outcomes[0][1].shape[1]
    exact_mean = sum(prob * s for prob, s in outcomes)
    vote_share = sum(prob * np.eye(classes)[s.argmax(axis=1)] for prob, s in outcomes)  # (P, C)
    exact_vr = 1 - vote_share.max(axis=1)
    exact_expected_entropy = sum(prob * entropy_np(s) for prob, s in outcomes)
    image = write_geotiff(tmp_path / "pixels.tif", as_tile(PIXELS)[0])
    model = LoadedModel(net, normalization=IDENTITY, in_channels=2)
    n = 1000
    got = {}
    for mode in ("variation_ratio", "expected_entropy"):
        paths = MCDropoutInferenceProcessor(
            model, n_samples=n, uncertainty_mode=mode, model_input_shape=(1, 4), step_shape=(1, 4), seed=11
        ).process(image, output_path=str(tmp_path / f"{mode}.tif"), confidence_path=str(tmp_path / f"{mode}_conf.tif"))
        got[mode] = read_raster(paths["uncertainty"])[0]
        confidence = read_raster(paths["confidence"])[0]
    # binomial / bounded-variable standard errors, 5 sigma
    assert np.all(np.abs(got["variation_ratio"] - exact_vr) < 5 * 0.5 / math.sqrt(n))
    assert np.all(np.abs(got["expected_entropy"] - exact_expected_entropy) < 5 * math.log(classes) / math.sqrt(n))
    assert np.all(np.abs(confidence - exact_mean.max(axis=1)) < 5 * 0.5 / math.sqrt(n))
    assert exact_vr.max() > 0.1  # the check is not vacuous


class TwinDropouts(nn.Module):
    """Two dropout layers of the same shape on the same input: only the layer index tells their masks apart."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Dropout2d(0.5)
        self.second = nn.Dropout2d(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first(x), self.second(x)], dim=1)


def test_two_dropout_layers_of_the_same_shape_draw_different_masks():
    net = TwinDropouts().eval()
    x = torch.ones(2, 64, 3, 3)
    with torch.no_grad(), MCDropoutHooks(find_dropout_layers(net), seed=4) as hooks:
        hooks.set_keys([(0, 0, 0, 0), (0, 32, 0, 0)])
        out = net(x)
    first, second = out[:, :64], out[:, 64:]
    assert not torch.equal(first, second)  # a key without the layer index would give the same 64-channel mask
    assert not torch.equal(first[0], first[1])  # and another window another mask
    kept = (first[0, :, 0, 0] > 0).float().mean().item()
    assert 0.25 < kept < 0.75  # Dropout2d(0.5): about half the channels kept

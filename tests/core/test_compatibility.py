"""Every model a user brings: SMP architectures with decoder_dropout, the compatibility table, output shapes,
trainer configs with interpolations, the allowlist."""

import textwrap
import warnings

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from core_fixtures import random_image, read_raster, write_geotiff
from torch import nn

from mc_uncertainty_plugin.core import (
    MCDropoutInferenceProcessor,
    ModelLoadError,
    MultiClassInferenceProcessor,
    load_model,
)
from mc_uncertainty_plugin.core.inference.processors import MCCompatibilityWarning, NoActiveDropoutWarning
from mc_uncertainty_plugin.core.models.compatibility import check_mc_compatibility
from mc_uncertainty_plugin.core.models.dropout import MCDropoutHooks, find_dropout_layers
from mc_uncertainty_plugin.core.models.loading import resolve_interpolations

# (architecture, extra kwargs, input size, native decoder_dropout?, built-in dropout layers without decoder_dropout)
ARCHITECTURES = [
    ("FPN", {}, 64, True, 0),
    ("Unet", {}, 64, False, 0),
    ("UnetPlusPlus", {}, 64, False, 0),
    ("Linknet", {}, 64, False, 0),
    ("MAnet", {}, 64, False, 0),
    ("PAN", {}, 128, False, 0),
    ("DeepLabV3", {}, 64, False, 1),
    ("DeepLabV3Plus", {}, 64, False, 1),
    ("UPerNet", {}, 64, False, 0),
    ("Segformer", {}, 64, False, 0),
    ("PSPNet", {}, 64, False, 1),
    ("DPT", {"encoder_name": "tu-vit_tiny_patch16_224", "dynamic_img_size": True}, 224, False, 1),
]


@pytest.mark.parametrize("arch,extra,size,native,builtin", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_decoder_dropout_works_for_every_smp_architecture(tmp_path, arch, extra, size, native, builtin):
    kwargs = {"encoder_name": "resnet18", "classes": 3, **extra}
    torch.manual_seed(0)
    plain = getattr(smp, arch)(encoder_weights=None, **kwargs).eval()
    torch.save(plain.state_dict(), tmp_path / "w.pth")
    lines = "\n".join(f"  {k}: {v}" for k, v in kwargs.items())
    (tmp_path / "m.yaml").write_text(
        f"model:\n  _target_: segmentation_models_pytorch.{arch}\n  encoder_weights: imagenet\n{lines}\n"
        "  decoder_dropout: 0.25\ncheckpoint_path: w.pth\n"
    )
    model = load_model(str(tmp_path / "m.yaml"))
    assert set(model.module.state_dict()) == set(plain.state_dict())  # keys unchanged, strict load passed
    layers = find_dropout_layers(model.module)
    assert len(layers) == builtin + 1
    names = [layer.name for layer in layers]
    assert ("decoder.dropout" in names) if native else ("mc_decoder_dropout" in names)
    assert any(("passed to" if native else "inserted Dropout2d") in note for note in model.notes)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        deterministic = model.module(x)
        torch.testing.assert_close(deterministic, plain(x))  # eval: the inserted dropout is the identity
        with MCDropoutHooks(layers, seed=0) as hooks:
            hooks.set_keys([(0, 0, 0, 0), (0, 0, 0, 1)])
            sampled = model.module(x)
    assert not torch.allclose(sampled, deterministic)  # the decoder dropout really samples


def test_smp_model_without_dropout_is_degenerate():
    net = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4), classes=2)
    assert [n.kind for n in check_mc_compatibility(net)] == ["degenerate"]
    with pytest.warns(NoActiveDropoutWarning, match="degenerate"):
        MCDropoutInferenceProcessor(net)


class CustomUNet(nn.Module):
    def __init__(self, dropout_2d=0.3):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout2d(dropout_2d)
        self.dec = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.dec(self.drop(F.relu(self.enc(x))))


def test_custom_unet_with_dropout2d_works_without_warnings(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((32, 32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proc = MCDropoutInferenceProcessor(
            CustomUNet(), n_samples=4, model_input_shape=32, step_shape=32, uncertainty_mode="mutual_information"
        )
    assert read_raster(proc.process(image, output_path=str(tmp_path / "o.tif"))["uncertainty"]).max() > 0


class EvidentialHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = CustomUNet()

    def forward(self, x):
        return F.softplus(self.net(x)) + 1


class MoERouter(nn.Module):
    def forward(self, x):
        return x


class DropPath(nn.Module):  # the shape of timm's
    def __init__(self, drop_prob=0.1):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return x


class FunctionalDropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.drop(F.dropout(self.conv(x), 0.2, self.training))


@pytest.mark.parametrize(
    "model,kind,words",
    [
        (EvidentialHead(), "evidential", "EDL"),
        (nn.Sequential(CustomUNet(), MoERouter()), "mixture_of_experts", "router noise"),
        (nn.Sequential(CustomUNet(), DropPath()), "drop_path", "DropPath"),
        (FunctionalDropoutNet(), "functional_dropout", "F.dropout"),
    ],
)
def test_risky_models_warn_naming_the_risk(model, kind, words):
    assert [n.kind for n in check_mc_compatibility(model)] == [kind]
    with pytest.warns(MCCompatibilityWarning, match=words):
        MCDropoutInferenceProcessor(model)


class Heads(nn.Module):
    def __init__(self, output):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.output = output

    def forward(self, x):
        y = self.conv(x)
        if self.output == "two_maps":
            return {"seg": y, "crossfield": y * 2}
        if self.output == "aux":
            return y, y.mean(dim=(2, 3))  # SMP aux_params: (mask, label)
        if self.output == "torchvision":
            return {"out": y, "aux": y * 3}
        return y


def test_multi_head_outputs_are_a_clear_error(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((32, 32)))
    with pytest.raises(ModelLoadError, match="aggregation undefined"):
        MultiClassInferenceProcessor(Heads("two_maps"), model_input_shape=32, step_shape=32).process(
            image, output_path=str(tmp_path / "o.tif")
        )
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("output", ["aux", "torchvision"])
def test_aux_and_torchvision_outputs_use_the_mask(tmp_path, output):
    image = write_geotiff(tmp_path / "in.tif", random_image((32, 32)))
    plain = Heads("plain")
    other = Heads(output)
    other.load_state_dict(plain.state_dict())
    a = MultiClassInferenceProcessor(plain, tta_mode="none", model_input_shape=32, step_shape=32).process(
        image, output_path=str(tmp_path / "a.tif")
    )
    b = MultiClassInferenceProcessor(other, tta_mode="none", model_input_shape=32, step_shape=32).process(
        image, output_path=str(tmp_path / "b.tif")
    )
    np.testing.assert_array_equal(read_raster(a["uncertainty"]), read_raster(b["uncertainty"]))


def test_trainer_config_with_interpolations_and_inference_defaults(tmp_path):
    (tmp_path / "trainer.yaml").write_text(
        textwrap.dedent("""
        hyperparameters:
          classes: 4
          batch_size: 16
          encoder: resnet18
        model:
          _target_: segmentation_models_pytorch.FPN
          encoder_name: ${hyperparameters.encoder}
          encoder_weights: imagenet
          encoder_depth: 3
          classes: ${hyperparameters.classes}
          decoder_dropout: 0.1
        optimizer: {_target_: torch.optim.AdamW, lr: 0.001}
        inference_processor:
          _target_: pytorch_segmentation_models_trainer.tools.inference.mc_dropout_inference_processor.MCDropoutInferenceProcessor
          n_samples: 3
          uncertainty_mode: mutual_information
          num_classes: ${hyperparameters.classes}
          model_input_shape: [64, 64]
          step_shape: [32, 32]
          name: run-${hyperparameters.batch_size}
    """)
    )
    model = load_model(str(tmp_path / "trainer.yaml"))
    assert model.num_classes == 4 and model.inference_defaults["name"] == "run-16"
    proc = MCDropoutInferenceProcessor(model)
    assert (proc.config.n_samples, proc.config.uncertainty_mode, proc.config.num_classes) == (
        3,
        "mutual_information",
        4,
    )
    assert proc.config.model_input_shape == (64, 64) and proc.config.step_shape == (32, 32)
    assert MCDropoutInferenceProcessor(model, n_samples=5).config.n_samples == 5  # explicit arguments win


@pytest.mark.parametrize("value,message", [("${missing.key}", "missing key"), ("${oc.env:HOME}", "not supported")])
def test_bad_interpolations_are_errors(value, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_interpolations({"a": value})


def test_allowlist_can_be_extended_by_the_user(tmp_path, monkeypatch):
    (tmp_path / "m.yaml").write_text("model:\n  _target_: collections.OrderedDict\n")
    with pytest.raises(ModelLoadError, match="not allowed"):
        load_model(str(tmp_path / "m.yaml"))
    monkeypatch.setenv("MC_UNCERTAINTY_ALLOWED_TARGETS", "collections.")
    with pytest.raises(ModelLoadError, match="not a torch.nn.Module"):  # allowed now, but still must be a Module
        load_model(str(tmp_path / "m.yaml"))
    (tmp_path / "t.yaml").write_text(
        "model:\n  _target_: torch.nn.Conv2d\n  in_channels: 3\n  out_channels: 2\n  kernel_size: 1\n"
    )
    assert isinstance(load_model(str(tmp_path / "t.yaml")).module, nn.Conv2d)


def test_checkpoint_under_model_key(tmp_path):
    net = nn.Conv2d(3, 2, 1)
    torch.save({"model": net.state_dict(), "optimizer": {"lr": 0.1}}, tmp_path / "c.pth")
    (tmp_path / "t.yaml").write_text(
        "model:\n  _target_: torch.nn.Conv2d\n  in_channels: 3\n  out_channels: 2\n  kernel_size: 1\n"
    )
    loaded = load_model(str(tmp_path / "t.yaml"), checkpoint=str(tmp_path / "c.pth"))
    torch.testing.assert_close(loaded.module.weight, net.weight)


def test_log_names_the_device_and_threads(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((32, 32)))
    lines = []
    MultiClassInferenceProcessor(nn.Conv2d(3, 2, 1), model_input_shape=32, step_shape=32, device="cpu").process(
        image, output_path=str(tmp_path / "o.tif"), log=lines.append
    )
    assert f"Device: cpu, {torch.get_num_threads()} threads" in lines[0]

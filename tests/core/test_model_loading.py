"""Loading configs, checkpoints and TorchScript without executing code from files."""

import os
import pickle
import re
import subprocess
import sys
import textwrap

import pytest
import segmentation_models_pytorch as smp
import torch

from mc_uncertainty_plugin.core import LoadedModel, ModelLoadError, ParameterError, load_model
from mc_uncertainty_plugin.core.models.dropout import find_dropout_layers

FPN_KWARGS = dict(
    encoder_name="resnet18",
    encoder_depth=3,
    encoder_weights=None,
    in_channels=3,
    classes=4,
    decoder_dropout=0.2,
    upsampling=2,
)


def write_config(folder, body: str, name="model.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return str(path)


FPN_YAML = textwrap.dedent("""
    model:
      _target_: segmentation_models_pytorch.FPN
      encoder_name: resnet18
      encoder_depth: 3
      encoder_weights: imagenet
      in_channels: 3
      classes: 4
      decoder_dropout: 0.2
      upsampling: 2
    normalization: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25], max_pixel_value: 255}
    class_names: [a, b, c, d]
    class_colors: ["#000000", "#ff0000", "#00ff00", "#0000ff"]
    inference_processor:
      n_samples: 7
""")


@pytest.fixture
def fpn():
    torch.manual_seed(0)
    return smp.FPN(**FPN_KWARGS).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_yaml_with_plain_state_dict(tmp_path, fpn):
    torch.save(fpn.state_dict(), tmp_path / "weights.pth")
    config = write_config(tmp_path, FPN_YAML + "checkpoint_path: weights.pth\n")
    model = load_model(config)
    assert isinstance(model, LoadedModel)
    assert same_weights(model.module, fpn)
    assert (model.in_channels, model.num_classes) == (3, 4)
    assert model.class_names == ("a", "b", "c", "d")
    assert model.normalization.mean == (0.5, 0.5, 0.5)
    assert model.inference_defaults == {"n_samples": 7}
    assert [layer.kind for layer in find_dropout_layers(model.module)] == ["channel"]  # FPN's native decoder dropout
    assert not model.module.training


def test_lightning_checkpoint_overrides_config_path(tmp_path, fpn):
    state = {"model." + k: v for k, v in fpn.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 0.1}}, tmp_path / "last.ckpt")
    config = write_config(tmp_path, FPN_YAML + "checkpoint_path: missing.pth\n")
    model = load_model(config, checkpoint=str(tmp_path / "last.ckpt"))
    assert same_weights(model.module, fpn)


def test_safetensors_checkpoint(tmp_path, fpn):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in fpn.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = load_model(write_config(tmp_path, FPN_YAML), checkpoint=str(tmp_path / "w.safetensors"))
    assert same_weights(model.module, fpn)


def test_key_mismatch_names_missing_and_unexpected_keys(tmp_path, fpn):
    state = fpn.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["segmentation_head.0.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        ModelLoadError, match=r"missing keys: segmentation_head\.0\.bias.*unexpected keys: extra\.weight"
    ):
        load_model(write_config(tmp_path, FPN_YAML), checkpoint=str(tmp_path / "bad.pth"))


def test_checkpoint_of_another_shape_is_an_error(tmp_path):
    other = smp.FPN(**{**FPN_KWARGS, "classes": 2})
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="does not match the model"):
        load_model(write_config(tmp_path, FPN_YAML), checkpoint=str(tmp_path / "other.pth"))


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"state_dict": Payload(marker)}, handle)
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(write_config(tmp_path, FPN_YAML), checkpoint=str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_target_outside_the_allowlist_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    config = write_config(
        tmp_path,
        f"""
        model:
          _target_: os.system
          command: touch {marker}
    """,
    )
    with pytest.raises(ModelLoadError, match="not allowed"):
        load_model(config)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path, fpn):
    torch.save(fpn.state_dict(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "w.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="CHECKPOINT"):
        load_model(write_config(tmp_path, FPN_YAML), checkpoint=str(tmp_path / "w.pth"))


@pytest.mark.parametrize(
    "body,message",
    [
        ("model: [1, 2\n", "not valid YAML"),
        ("inference_processor: {n_samples: 3}\n", "no 'model:' section"),
        ("- a\n- b\n", "must hold a YAML mapping"),
    ],
)
def test_malformed_configs(tmp_path, body, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(write_config(tmp_path, body))


def test_missing_model_file_names_the_parameter(tmp_path):
    with pytest.raises(ParameterError, match="MODEL"):
        load_model(str(tmp_path / "nope.yaml"))


def test_decoder_dropout_is_injected_into_unet_without_changing_keys(tmp_path):
    plain = smp.Unet(
        encoder_name="resnet18", encoder_depth=3, encoder_weights=None, decoder_channels=(32, 16, 8), classes=3
    )
    torch.save(plain.state_dict(), tmp_path / "unet.pth")
    config = write_config(
        tmp_path,
        """
        model:
          _target_: segmentation_models_pytorch.Unet
          encoder_name: resnet18
          encoder_depth: 3
          decoder_channels: [32, 16, 8]
          classes: 3
          decoder_dropout: 0.3
        checkpoint_path: unet.pth
    """,
    )
    model = load_model(config)
    assert set(model.module.state_dict()) == set(plain.state_dict())
    layers = find_dropout_layers(model.module)
    assert [(layer.name, layer.p) for layer in layers] == [("mc_decoder_dropout", 0.3)]
    assert any("inserted Dropout2d" in note for note in model.notes)
    # the injected layer really acts: two seeded passes differ, and eval without MC equals the plain model
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), plain.eval()(x))


def test_torchscript_model_with_sidecar_yaml(tmp_path):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 1), torch.nn.ReLU(), torch.nn.Dropout2d(0.25), torch.nn.Conv2d(8, 3, 1)
    )
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.pt"))
    write_config(
        tmp_path,
        """
        normalization: {mean: [0, 0, 0, 0], std: [1, 1, 1, 1], max_pixel_value: 10000}
        class_names: [x, y, z]
    """,
        name="net.yaml",
    )
    model = load_model(str(tmp_path / "net.pt"))
    assert model.is_scripted and model.in_channels == 4
    assert model.class_names == ("x", "y", "z")
    assert model.normalization.max_pixel_value == 10000
    assert [layer.p for layer in find_dropout_layers(model.module)] == [0.25]


def test_a_state_dict_given_as_model_explains_what_to_do(tmp_path, fpn):
    torch.save(fpn.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelLoadError, match="not a TorchScript file.*CHECKPOINT"):
        load_model(str(tmp_path / "weights.pt"))


@pytest.mark.slow
def test_encoder_weights_imagenet_is_never_downloaded(tmp_path, monkeypatch):
    """No checkpoint: random weights, and no network access attempted (any connection or hub download fails)."""
    import socket

    import torch.hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model = load_model(write_config(tmp_path, FPN_YAML))
    assert any("random weights" in note for note in model.notes), model.notes
    assert not (tmp_path / "hub").exists() and not (tmp_path / "hf").exists()


def test_core_imports_no_qgis():
    code = (
        "import sys, mc_uncertainty_plugin.core; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qgis', 'PyQt5', 'PyQt6', 'sip')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    core = os.path.join(root, "mc_uncertainty_plugin", "core")
    pattern = re.compile(r"^\s*(from|import)\s+(qgis|PyQt5|PyQt6)\b", re.MULTILINE)
    checked = 0
    for folder, _, names in os.walk(core):
        for name in names:
            if name.endswith(".py"):
                source = open(os.path.join(folder, name), encoding="utf-8").read()
                assert not pattern.search(source), os.path.join(folder, name)
                checked += 1
    assert checked > 20  # every module of every subpackage


def test_evaluation_and_errors_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; "  # any 'import torch' now fails
        "from mc_uncertainty_plugin.core import evaluate_to_files, ParameterError, entropy; print('ok')"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr

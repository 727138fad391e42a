"""Hostile or broken model files and parameters: one clear error, in seconds, in bounded memory."""

import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from core_fixtures import SmallConvNet, random_image, write_geotiff

from mc_uncertainty_plugin.core import MCDropoutInferenceProcessor, ModelLoadError, ParameterError, load_model
from mc_uncertainty_plugin.core.models import yaml_config
from mc_uncertainty_plugin.core.models.yaml_config import MAX_NODES, Interpolator, read_config

ROOT = Path(__file__).resolve().parents[2]

BILLION_LAUGHS = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    model: {_target_: segmentation_models_pytorch.FPN, classes: *i}
""")


def _in_a_child(code: str, memory_mib: int = 1500, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter limited to ``memory_mib`` of address space (a bomb fails there)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mib * 2**20, memory_mib * 2**20))

    script = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, preexec_fn=limit
    )


def test_billion_laughs_is_refused_quickly_in_bounded_memory(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    assert path.stat().st_size < 1000
    started = time.perf_counter()
    child = _in_a_child(
        f"""
        from mc_uncertainty_plugin.core.models.yaml_config import read_config, Interpolator
        from mc_uncertainty_plugin.core.errors import ModelLoadError
        try:
            Interpolator(read_config({str(path)!r})).get("model")
        except ModelLoadError as error:
            print("REFUSED", error)
    """,
        memory_mib=600,
    )
    assert "REFUSED MODEL:" in child.stdout, child.stderr[-2000:]
    assert f"more than {MAX_NODES:,} values" in child.stdout
    assert time.perf_counter() - started < 30


def test_an_alias_cycle_is_refused(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("a: &a [1, *a]\nmodel: {}\n")
    with pytest.raises(ModelLoadError, match="cycle"):
        read_config(str(path))


def test_doubling_interpolations_are_refused_without_hanging(tmp_path):
    lines = ["a0: 'xxxxxxxxxxxxxxxx'"] + [f"a{i}: '${{a{i - 1}}}${{a{i - 1}}}'" for i in range(1, 60)]
    lines.append("model: {_target_: torch.nn.Identity, name: '${a59}'}")
    path = tmp_path / "doubling.yaml"
    path.write_text("\n".join(lines))
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="grow beyond"):
        load_model(str(path))
    assert time.perf_counter() - started < 5


def test_interpolations_are_resolved_only_where_used_and_once(tmp_path):
    lines = ["unused: '${nowhere.to.be.found}'", "base: {lr: 3}"]
    lines += [f"k{i}: '${{base.lr}}'" for i in range(100)]
    lines.append("inference_processor: {n_samples: '${base.lr}'}")
    path = tmp_path / "lazy.yaml"
    path.write_text("\n".join(lines))
    config = Interpolator(read_config(str(path)))
    assert config.get("inference_processor") == {"n_samples": 3}  # the broken 'unused' is never read
    with pytest.raises(ModelLoadError, match="missing key"):
        config.get("unused")
    self_reference = tmp_path / "self.yaml"
    self_reference.write_text("a: '${b}'\nb: 'x${a}'\n")
    with pytest.raises(ModelLoadError, match="cycle"):
        Interpolator(read_config(str(self_reference))).get("a")


def test_a_config_over_the_size_limit_is_refused_without_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("model: {}\npad: '" + "x" * (5 * 2**20) + "'\n")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="over 4 MiB"):
        load_model(str(path))
    assert time.perf_counter() - started < 2


def test_a_large_plain_config_is_read_with_the_c_loader(tmp_path):
    """A 1 MB config (a long trainer config) is data, not a bomb; PyYAML's C loader reads it (5x faster)."""
    rows = "\n".join(f"  key_{i}: [{i}, {i + 1}, 'text {i}']" for i in range(30000))
    path = tmp_path / "big.yaml"
    path.write_text("model: {_target_: torch.nn.Identity}\nhistory:\n" + rows + "\n")
    assert path.stat().st_size > 10**6
    assert read_config(str(path))["history"]["key_7"] == [7, 8, "text 7"]
    if hasattr(yaml, "CSafeLoader"):
        assert yaml_config._LOADER is yaml.CSafeLoader


def test_a_tile_that_cannot_fit_in_memory_is_a_clear_error_naming_the_parameter(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((40, 40)))
    processor = MCDropoutInferenceProcessor(SmallConvNet(p=0.2), n_samples=2, model_input_shape=100000, step_shape=256)
    with pytest.raises(ParameterError, match=r"MODEL_INPUT_SHAPE must be a tile whose forward pass fits in memory"):
        processor.process(image, output_path=str(tmp_path / "c.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_normalization_with_nan_is_refused(tmp_path):
    config = tmp_path / "m.yaml"
    config.write_text("model: {_target_: torch.nn.Identity}\nnormalization: {mean: [.nan, 0, 0], std: [1, 1, 1]}\n")
    with pytest.raises(ParameterError, match=r"normalization.mean must be finite numbers"):
        load_model(str(config))
    config.write_text("model: {_target_: torch.nn.Identity}\nnormalization: {mean: [0, 0, 0], std: [1, .inf, 1]}\n")
    with pytest.raises(ParameterError, match=r"normalization.std must be positive finite numbers"):
        load_model(str(config))


def test_loading_torchscript_prints_no_deprecation_warning(tmp_path):
    path = tmp_path / "net.pt"
    with pytest.warns(FutureWarning):  # torch itself warns when scripting and saving...
        torch.jit.save(torch.jit.script(SmallConvNet().eval()), str(path))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ...but loading through the plugin is silent
        load_model(str(path))


@pytest.mark.parametrize("value", [2.5, "2.5", "a", True, 0])
def test_non_integer_sample_counts_are_refused_never_rounded(value):
    with pytest.raises(ParameterError, match=r"N_SAMPLES must be an integer >= 1, got"):
        MCDropoutInferenceProcessor(SmallConvNet(p=0.2), n_samples=value)


@pytest.mark.parametrize("bands", [("a", "b", "c"), (1.5, 2, 3), (0, 1, 2)])
def test_bad_bands_are_echoed_as_given(bands):
    with pytest.raises(ParameterError, match=r"BANDS must list band numbers starting at 1, got \["):
        MCDropoutInferenceProcessor(SmallConvNet(p=0.2), bands=bands)

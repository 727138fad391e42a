"""The core API: processors take one InferenceConfig or the same settings as keywords."""

import dataclasses

import numpy as np
import pytest
from core_fixtures import SmallConvNet, random_image, read_raster, write_geotiff

from mc_uncertainty_plugin.core import (
    InferenceConfig,
    LoadedModel,
    MCDropoutInferenceProcessor,
    MultiClassInferenceProcessor,
)


def test_a_config_object_and_keywords_give_the_same_run(tmp_path):
    image = write_geotiff(tmp_path / "in.tif", random_image((40, 48)))
    config = InferenceConfig(
        n_samples=3, uncertainty_mode="mutual_information", model_input_shape=(32, 32), step_shape=(16, 16), seed=9
    )
    net = SmallConvNet(p=0.3)
    by_config = MCDropoutInferenceProcessor(net, config)
    by_keywords = MCDropoutInferenceProcessor(
        net, n_samples=3, uncertainty_mode="mutual_information", model_input_shape=(32, 32), step_shape=(16, 16), seed=9
    )
    assert by_config.config == by_keywords.config
    a = by_config.process(image, output_path=str(tmp_path / "a.tif"))
    b = by_keywords.process(image, output_path=str(tmp_path / "b.tif"))
    np.testing.assert_array_equal(read_raster(a["uncertainty"]), read_raster(b["uncertainty"]))


def test_keywords_override_a_config_and_the_method_is_fixed():
    config = InferenceConfig(n_samples=7, tta_mode="flip", mc_dropout=False)
    mc = MCDropoutInferenceProcessor(SmallConvNet(p=0.3), config, n_samples=4)
    assert (mc.config.n_samples, mc.config.tta_mode, mc.config.mc_dropout) == (4, "flip", True)
    tta = MultiClassInferenceProcessor(SmallConvNet(), config)
    assert (tta.config.n_samples, tta.config.mc_dropout) == (1, False)
    assert (
        MultiClassInferenceProcessor(SmallConvNet(), dataclasses.replace(config, mc_dropout=True)).config == tta.config
    )


def test_settings_left_out_come_from_the_model_config_then_the_defaults():
    model = LoadedModel(SmallConvNet(p=0.3), inference_defaults={"n_samples": 6, "name": "ignored"})
    assert MCDropoutInferenceProcessor(model).config.n_samples == 6
    assert MCDropoutInferenceProcessor(model, n_samples=2).config.n_samples == 2
    assert MultiClassInferenceProcessor(SmallConvNet()).config.tta_mode == "d4"


def test_unknown_settings_and_positional_numbers_are_clear_errors():
    with pytest.raises(
        TypeError, match=r"unknown setting\(s\) n_sample; the settings are the fields of InferenceConfig"
    ):
        MCDropoutInferenceProcessor(SmallConvNet(p=0.3), n_sample=3)
    with pytest.raises(TypeError, match="config must be an InferenceConfig"):
        MCDropoutInferenceProcessor(SmallConvNet(p=0.3), 10)

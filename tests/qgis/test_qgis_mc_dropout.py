"""processing.run("mc_uncertainty:mc_dropout", ...): outputs, defaults, errors, warnings, cancellation, loading."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
)

from mc_uncertainty_plugin.map_layers.styling import style_uncertainty_layer

WIDTH, HEIGHT, EPSG = 100, 80, 32633
GEOTRANSFORM = (500000.0, 10.0, 0.0, 4600000.0, 0.0, -10.0)
LN3 = math.log(3)


def read(path: str) -> tuple[gdal.Dataset, np.ndarray]:
    dataset = gdal.Open(path)
    assert dataset is not None, path
    return dataset, dataset.GetRasterBand(1).ReadAsArray()


def assert_on_input_grid(dataset: gdal.Dataset) -> None:
    assert (dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount) == (WIDTH, HEIGHT, 1)
    assert dataset.GetGeoTransform() == pytest.approx(GEOTRANSFORM)
    srs = osr.SpatialReference(wkt=dataset.GetProjection())
    srs.AutoIdentifyEPSG()
    assert srs.GetAuthorityCode(None) == str(EPSG)


def test_writes_class_and_uncertainty_rasters(run_mc_dropout: Any, tmp_path: Path, feedback: Any) -> None:
    output, uncertainty = str(tmp_path / "classes.tif"), str(tmp_path / "unc" / "entropy.tif")
    (tmp_path / "unc").mkdir()
    results = run_mc_dropout(OUTPUT=output, OUTPUT_UNCERTAINTY=uncertainty, TTA_MODE=1, feedback=feedback)

    assert results == {
        "OUTPUT": output,
        "OUTPUT_UNCERTAINTY": uncertainty,
        "OUTPUT_CONFIDENCE": None,
        "OUTPUT_PROBABILITIES": None,
        "OUTPUT_CONFIDENT": None,
    }
    classes_ds, classes = read(output)
    assert_on_input_grid(classes_ds)
    assert classes_ds.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert set(np.unique(classes)) <= {0, 1, 2}
    unc_ds, unc = read(uncertainty)
    assert_on_input_grid(unc_ds)
    assert unc_ds.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert unc.min() >= 0 and unc.max() <= LN3 + 1e-5
    assert unc.max() > 0, "dropout is active: the samples must disagree somewhere"
    assert unc_ds.GetMetadataItem("MC_N_SAMPLES") == "3"
    assert unc_ds.GetMetadataItem("MC_TTA_MODE") == "flip"  # given by index
    # the feedback was wired: progress to 100, the core's log in the info messages
    assert feedback.progress_values and max(feedback.progress_values) == pytest.approx(100)
    assert any("Device: cpu" in info for info in feedback.infos)


def test_default_uncertainty_path_is_beside_output(run_mc_dropout: Any, tmp_path: Path) -> None:
    results = run_mc_dropout(OUTPUT=str(tmp_path / "scene_classes.tif"))
    expected = str(tmp_path / "scene_classes_mc_uncertainty.tif")
    assert results["OUTPUT_UNCERTAINTY"] == expected
    assert_on_input_grid(read(expected)[0])


def test_no_uncertainty_when_export_is_off(run_mc_dropout: Any, tmp_path: Path) -> None:
    results = run_mc_dropout(
        OUTPUT=str(tmp_path / "classes.tif"), EXPORT_UNCERTAINTY_MAP=False, OUTPUT_UNCERTAINTY=str(tmp_path / "unc.tif")
    )
    assert results["OUTPUT_UNCERTAINTY"] is None
    assert (tmp_path / "classes.tif").is_file()
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == ["classes.tif"]


def test_yaml_model_with_checkpoint_bands_and_enum_indices(
    run_mc_dropout: Any, yaml_model: tuple[str, str], tmp_path: Path
) -> None:
    config, checkpoint = yaml_model
    results = run_mc_dropout(
        MODEL=config,
        CHECKPOINT=checkpoint,
        OUTPUT=str(tmp_path / "fpn.tif"),
        N_SAMPLES=2,
        BANDS=[3, 2, 1],
        STEP_SHAPE="64",
        NUM_CLASSES=3,
        UNCERTAINTY_MODE=1,
        TILE_WEIGHT="pyramid",
        SEED=7,
        DEVICE="cpu",
    )
    dataset, classes = read(results["OUTPUT"])
    assert_on_input_grid(dataset)
    assert classes.max() <= 2
    unc_ds, unc = read(results["OUTPUT_UNCERTAINTY"])
    assert unc_ds.GetMetadataItem("MC_UNCERTAINTY_MODE") == "mutual_information"
    assert unc_ds.GetMetadataItem("MC_TILE_WEIGHT") == "pyramid"
    assert unc_ds.GetMetadataItem("MC_SEED") == "7"
    assert 0 <= unc.min() and unc.max() <= LN3 + 1e-5


def test_step_larger_than_tile_names_step_shape(run_mc_dropout: Any, tmp_path: Path) -> None:
    with pytest.raises(QgsProcessingException, match="STEP_SHAPE") as raised:
        run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"), MODEL_INPUT_SHAPE="64,64", STEP_SHAPE="128,64")
    assert "128" in str(raised.value) and "Traceback" not in str(raised.value)
    assert not list(tmp_path.glob("*.tif"))


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("BANDS", "a,b,c", "BANDS must list band numbers (e.g. 3,2,1), got 'a,b,c'."),
        (
            "SEED",
            "18446744073709551616",
            "SEED must be an integer in 0..18446744073709551615, got '18446744073709551616'.",
        ),
        ("N_SAMPLES", "2.5", "N_SAMPLES must be an integer >= 1, got '2.5'."),
    ],
)
def test_bad_numbers_are_refused_as_given(run_mc_dropout: Any, tmp_path: Path, name: str, value: str, message: str):
    """Values as a command line gives them (text): refused with the value as typed, never rounded or wrapped."""
    with pytest.raises(QgsProcessingException) as raised:
        run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"), **{name: value})
    assert str(raised.value) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_seed_beyond_32_bits_given_as_text_runs_as_given(run_mc_dropout: Any, tmp_path: Path) -> None:
    results = run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"), N_SAMPLES=2, SEED=str(2**40 + 3))
    assert gdal.Open(results["OUTPUT_UNCERTAINTY"]).GetMetadataItem("MC_SEED") == str(2**40 + 3)


def test_num_classes_mismatch_names_num_classes(run_mc_dropout: Any, tmp_path: Path) -> None:
    with pytest.raises(QgsProcessingException, match="NUM_CLASSES"):
        run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"), NUM_CLASSES=5)


def test_model_without_dropout_warns(run_mc_dropout: Any, no_dropout_model: str, tmp_path: Path, feedback: Any) -> None:
    run_mc_dropout(MODEL=no_dropout_model, OUTPUT=str(tmp_path / "classes.tif"), N_SAMPLES=2, feedback=feedback)
    assert any("dropout" in warning for warning in feedback.warnings), feedback.warnings


def test_cancelled_run_leaves_no_output(run_mc_dropout: Any, tmp_path: Path) -> None:
    feedback = QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(QgsProcessingException):
        run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"), feedback=feedback)
    assert not list(tmp_path.glob("*.tif"))


def test_toolbox_loads_and_styles_default_uncertainty(
    mc_plugin: Any, raster_path: str, torchscript_model: str, tmp_path: Path, clean_project: Any
) -> None:
    """As the Toolbox does: outputs loaded on completion; the default-path uncertainty layer comes too, styled."""
    import processing

    project = clean_project
    output = str(tmp_path / "classes.tif")
    context = QgsProcessingContext()
    context.setProject(project)
    processing.runAndLoadResults(
        "mc_uncertainty:mc_dropout",
        {
            "INPUT": raster_path,
            "MODEL": torchscript_model,
            "MODEL_INPUT_SHAPE": "64",
            "STEP_SHAPE": "32",
            "N_SAMPLES": 2,
            "OUTPUT": output,
        },
        context=context,
    )
    layers = {Path(layer.source()).name: layer for layer in project.mapLayers().values()}
    assert set(layers) == {"classes.tif", "classes_mc_uncertainty.tif"}
    uncertainty = layers["classes_mc_uncertainty.tif"]
    renderer = uncertainty.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    assert renderer.classificationMin() == pytest.approx(0)
    assert renderer.classificationMax() == pytest.approx(LN3, abs=1e-5)


def test_style_uncertainty_layer_viridis(tmp_path: Path) -> None:
    path = tmp_path / "u.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 4, 4, 1, gdal.GDT_Float32)
    dataset.GetRasterBand(1).WriteArray(np.linspace(0, 0.5, 16, dtype=np.float32).reshape(4, 4))
    dataset = None
    layer = QgsRasterLayer(str(path), "u")
    style_uncertainty_layer(layer, math.log(4))
    renderer = layer.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert items[0].value == 0 and items[-1].value == pytest.approx(math.log(4))
    assert items[0].color.name() == "#440154" and items[-1].color.name() == "#fde725"  # viridis ends

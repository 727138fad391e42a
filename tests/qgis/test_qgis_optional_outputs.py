"""The optional outputs through Processing: class probabilities, confident classes, the new measures, TTA subsets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    QgsPalettedRasterRenderer,
    QgsProcessingException,
    QgsSingleBandGrayRenderer,
    QgsSingleBandPseudoColorRenderer,
)

FAST_RUN = {"MODEL_INPUT_SHAPE": "64", "STEP_SHAPE": "32", "N_SAMPLES": 2}


def read_all(path: str) -> np.ndarray:
    dataset = gdal.Open(path)
    assert dataset is not None, path
    return dataset.ReadAsArray()


def test_probabilities_and_confident_classes_with_a_tta_subset(run_mc_dropout: Any, tmp_path: Path) -> None:
    results = run_mc_dropout(
        OUTPUT=str(tmp_path / "classes.tif"),
        UNCERTAINTY_MODE="margin",
        TTA_MODE="hflip,identity",
        CONFIDENT_THRESHOLD=0.2,
        PROBABILITIES_DATA_TYPE="uint8",
        OUTPUT_PROBABILITIES=str(tmp_path / "p.tif"),
        OUTPUT_CONFIDENT=str(tmp_path / "k.tif"),
    )
    assert results["OUTPUT_PROBABILITIES"] == str(tmp_path / "p.tif")
    assert results["OUTPUT_CONFIDENT"] == str(tmp_path / "k.tif")
    probabilities = gdal.Open(results["OUTPUT_PROBABILITIES"])
    assert probabilities.RasterCount == 3 and probabilities.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert [probabilities.GetRasterBand(b).GetDescription() for b in (1, 2, 3)] == ["class 0", "class 1", "class 2"]
    scaled = probabilities.ReadAsArray().astype(int)
    classes = read_all(results["OUTPUT"])
    assert np.all(np.abs(scaled.sum(axis=0) - 254) <= 2)  # round(254 p) of each class: p sums to 1
    assert np.mean(scaled.argmax(axis=0) == classes) > 0.99  # argmax of rounded values: ties may differ
    margin = read_all(results["OUTPUT_UNCERTAINTY"])
    expected = np.where(margin < np.float32(0.2), 255, classes)
    np.testing.assert_array_equal(read_all(results["OUTPUT_CONFIDENT"]), expected)
    assert 0 < np.mean(expected == 255) < 1
    uncertainty = gdal.Open(results["OUTPUT_UNCERTAINTY"])
    assert uncertainty.GetMetadataItem("MC_TTA_MODE") == "identity,hflip"
    assert uncertainty.GetMetadataItem("MC_UNCERTAINTY_MAX") == "1.000000"


def test_confident_classes_without_the_uncertainty_raster(run_mc_dropout: Any, tmp_path: Path) -> None:
    results = run_mc_dropout(
        OUTPUT=str(tmp_path / "classes.tif"),
        EXPORT_UNCERTAINTY_MAP=False,
        UNCERTAINTY_MODE="normalized_entropy",
        CONFIDENT_THRESHOLD=0.9,
        OUTPUT_CONFIDENT=str(tmp_path / "k.tif"),
    )
    assert results["OUTPUT_UNCERTAINTY"] is None and results["OUTPUT_CONFIDENT"] == str(tmp_path / "k.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "k.tif"]
    assert gdal.Open(results["OUTPUT_CONFIDENT"]).GetMetadataItem("MC_CONFIDENT_THRESHOLD") == "0.9"


@pytest.mark.parametrize(
    "parameters,key",
    [
        ({"CONFIDENT_THRESHOLD": 2.0, "OUTPUT_CONFIDENT": "k.tif"}, "CONFIDENT_THRESHOLD"),  # above ln 3
        ({"TTA_MODE": "identity,identity"}, "TTA_MODE"),
        ({"TTA_MODE": "identity,mirror"}, "TTA_MODE"),
    ],
)
def test_bad_values_name_their_parameter(run_mc_dropout: Any, tmp_path: Path, parameters: dict, key: str) -> None:
    values = {k: str(tmp_path / v) if k.startswith("OUTPUT") else v for k, v in parameters.items()}
    with pytest.raises(QgsProcessingException, match=f"{key} must"):
        run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"), **values)
    assert list(tmp_path.iterdir()) == []


def test_loaded_layers_of_the_new_outputs_and_the_reversed_margin(
    mc_plugin: Any, raster_path: str, yaml_model: tuple[str, str], tmp_path: Path, clean_project: Any
) -> None:
    import processing

    config, checkpoint = yaml_model  # class_names: [background, building, water]
    processing.runAndLoadResults(
        "mc_uncertainty:mc_dropout",
        {
            "INPUT": raster_path,
            "MODEL": config,
            "CHECKPOINT": checkpoint,
            **FAST_RUN,
            "UNCERTAINTY_MODE": "margin",
            "CONFIDENT_THRESHOLD": 0.25,
            "OUTPUT": str(tmp_path / "classes.tif"),
            "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif"),
            "OUTPUT_CONFIDENT": str(tmp_path / "k.tif"),
        },
    )
    group = clean_project.layerTreeRoot().children()
    assert [node.name() for node in group] == ["scene — MC Dropout (T = 2, margin)"]
    names = sorted(child.name() for child in group[0].children())
    assert names == [
        "scene — MC class probabilities (T = 2)",
        "scene — MC classes (T = 2)",
        "scene — MC confident classes (T = 2, margin ≥ 0.25)",
        "scene — MC uncertainty (margin, low = unsure, T = 2)",
    ]
    by_name = {layer.name(): layer for layer in clean_project.mapLayers().values()}
    margin = by_name["scene — MC uncertainty (margin, low = unsure, T = 2)"].renderer()
    assert isinstance(margin, QgsSingleBandPseudoColorRenderer)
    assert (margin.classificationMin(), margin.classificationMax()) == (0, 1)
    items = margin.shader().rasterShaderFunction().colorRampItemList()
    assert (items[0].color.name(), items[-1].color.name()) == ("#fde725", "#440154")  # viridis reversed
    assert "unsure" in items[0].label and "sure" in items[-1].label
    confident = by_name["scene — MC confident classes (T = 2, margin ≥ 0.25)"].renderer()
    assert isinstance(confident, QgsPalettedRasterRenderer)
    assert [c.label for c in confident.classes()] == ["background", "building", "water"]
    probabilities = by_name["scene — MC class probabilities (T = 2)"]
    assert isinstance(probabilities.renderer(), QgsSingleBandGrayRenderer)
    assert probabilities.renderer().contrastEnhancement().maximumValue() == 1.0
    assert probabilities.bandName(2).endswith("building")


def test_normalized_entropy_is_drawn_from_0_to_1(
    mc_plugin: Any, raster_path: str, torchscript_model: str, tmp_path: Path, clean_project: Any
) -> None:
    import processing

    processing.runAndLoadResults(
        "mc_uncertainty:mc_dropout",
        {
            "INPUT": raster_path,
            "MODEL": torchscript_model,
            **FAST_RUN,
            "UNCERTAINTY_MODE": "normalized_entropy",
            "OUTPUT": str(tmp_path / "n.tif"),
        },
    )
    layer = clean_project.mapLayersByName("scene — MC uncertainty (normalized entropy, T = 2)")[0]
    renderer = layer.renderer()
    assert renderer.classificationMax() == pytest.approx(1.0)  # not ln C
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert (items[0].color.name(), items[-1].color.name()) == ("#440154", "#fde725")
    values = read_all(layer.source())
    assert 0.01 < values.max() <= 1 + 1e-6

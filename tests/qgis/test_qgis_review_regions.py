"""mc_uncertainty:review_regions in QGIS: processing.run, the loaded and styled layer, the Modeler, qgis_process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import EPSG, GEOTRANSFORM
from osgeo import gdal, osr
from qgis.core import (
    QgsGraduatedSymbolRenderer,
    QgsProcessingException,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt

from mc_uncertainty_plugin.core.review.regions import ReviewConfig, find_review_regions
from mc_uncertainty_plugin.map_layers.review_style import style_review_layer

REPO_ROOT = Path(__file__).resolve().parents[2]
QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
ALGORITHM = "mc_uncertainty:review_regions"


def _write(path: Path, array: np.ndarray, gdal_type: int, nodata: float | None = None) -> str:
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[1], array.shape[0], 1, gdal_type)
    dataset.SetGeoTransform(GEOTRANSFORM)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    dataset.SetProjection(srs.ExportToWkt())
    dataset.GetRasterBand(1).WriteArray(array)
    if nodata is not None:
        dataset.GetRasterBand(1).SetNoDataValue(nodata)
    dataset = None
    return str(path)


@pytest.fixture
def rasters(tmp_path: Path) -> tuple[str, str]:
    """An uncertainty raster (120 x 100 px, random with three hot squares, a nodata corner) and its classes."""
    rng = np.random.default_rng(5)
    u = (rng.random((100, 120)) * 0.2).astype(np.float32)
    u[8:24, 80:96] += 1.2
    u[60:76, 16:32] += 0.9
    u[40:56, 56:72] += 0.6
    u[70:, 90:] = -1.0
    classes = (np.arange(120)[None, :] // 40 * np.ones((100, 1))).astype(np.uint8)
    return (
        _write(tmp_path / "scene_uncertainty.tif", u, gdal.GDT_Float32, nodata=-1.0),
        _write(tmp_path / "scene_classes.tif", classes, gdal.GDT_Byte),
    )


def _rows(path: str) -> list[dict]:
    layer = QgsVectorLayer(path, "review", "ogr")
    assert layer.isValid(), path
    return [dict(zip(layer.fields().names(), feature.attributes())) for feature in layer.getFeatures()]


def test_parameters_defaults_and_help(registry: Any) -> None:
    algorithm = registry.createAlgorithmById(ALGORITHM)
    definitions = {d.name(): d for d in algorithm.parameterDefinitions()}
    assert list(definitions) == ["UNCERTAINTY", "CLASSES", "PATCH_SIZE", "COUNT", "OUTPUT"]
    assert definitions["PATCH_SIZE"].defaultValue() == 256 and definitions["COUNT"].defaultValue() == 20
    assert definitions["CLASSES"].flags() & definitions["CLASSES"].FlagOptional
    assert all(d.help() for d in definitions.values()), [k for k, d in definitions.items() if not d.help()]
    assert definitions["OUTPUT"].defaultFileExtension() == "gpkg"
    assert "mutual information" in algorithm.shortHelpString() and "active learning" in algorithm.shortHelpString()
    assert "Mutual information is recommended" in definitions["UNCERTAINTY"].help()


def test_processing_run_writes_the_patches_the_core_finds(
    mc_plugin: Any, rasters: tuple[str, str], tmp_path: Path
) -> None:
    import processing

    uncertainty, classes = rasters
    output = str(tmp_path / "review.gpkg")
    results = processing.run(
        ALGORITHM, {"UNCERTAINTY": uncertainty, "CLASSES": classes, "PATCH_SIZE": 16, "COUNT": 4, "OUTPUT": output}
    )
    assert results == {"OUTPUT": output}
    expected = find_review_regions(ReviewConfig(uncertainty, classes, patch_size=16, count=4))
    rows = _rows(output)
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]
    assert [
        (row["mean_uncertainty"], row["max_uncertainty"], row["valid_fraction"], row["dominant_class"]) for row in rows
    ] == [(p.mean_uncertainty, p.max_uncertainty, p.valid_fraction, p.dominant_class) for p in expected.patches]
    assert [row["dominant_class"] for row in rows[:3]] == [2, 0, 1]
    layer = QgsVectorLayer(output, "review", "ogr")
    assert layer.crs().authid() == f"EPSG:{EPSG}"
    first = next(layer.getFeatures()).geometry().boundingBox()
    x0, dx, _, y0, _, dy = GEOTRANSFORM
    assert (first.xMinimum(), first.yMaximum(), first.width()) == (x0 + 80 * dx, y0 + 8 * dy, 16 * dx)


def test_temporary_output_is_a_geopackage(mc_plugin: Any, rasters: tuple[str, str]) -> None:
    import processing

    results = processing.run(ALGORITHM, {"UNCERTAINTY": rasters[0], "PATCH_SIZE": 32, "OUTPUT": "TEMPORARY_OUTPUT"})
    assert results["OUTPUT"].endswith(".gpkg") and Path(results["OUTPUT"]).is_file()
    rows = _rows(results["OUTPUT"])
    assert rows and "dominant_class" not in rows[0]


def test_errors_name_the_parameter_and_leave_nothing(mc_plugin: Any, rasters: tuple[str, str], tmp_path: Path) -> None:
    import processing

    uncertainty, _ = rasters
    other = _write(tmp_path / "other.tif", np.zeros((10, 10), np.uint8), gdal.GDT_Byte)
    with pytest.raises(QgsProcessingException, match="CLASSES must have the grid of UNCERTAINTY"):
        processing.run(ALGORITHM, {"UNCERTAINTY": uncertainty, "CLASSES": other, "OUTPUT": str(tmp_path / "a.gpkg")})
    with pytest.raises(QgsProcessingException, match="OUTPUT must differ from UNCERTAINTY"):
        processing.run(ALGORITHM, {"UNCERTAINTY": uncertainty, "OUTPUT": uncertainty})
    with pytest.raises(QgsProcessingException, match="CLASSES"):
        processing.run(
            ALGORITHM,
            {"UNCERTAINTY": uncertainty, "CLASSES": str(tmp_path / "none.tif"), "OUTPUT": str(tmp_path / "c.gpkg")},
        )
    with pytest.raises(QgsProcessingException):  # Processing itself refuses a patch size of 0
        processing.run(ALGORITHM, {"UNCERTAINTY": uncertainty, "PATCH_SIZE": 0, "OUTPUT": str(tmp_path / "b.gpkg")})
    assert not list(tmp_path.glob("*.gpkg")) and not list(tmp_path.glob(".mcu-*"))


def test_loaded_layer_is_styled_by_rank_with_labels(
    mc_plugin: Any, rasters: tuple[str, str], tmp_path: Path, clean_project: Any
) -> None:
    import processing

    processing.runAndLoadResults(
        ALGORITHM, {"UNCERTAINTY": rasters[0], "PATCH_SIZE": 16, "COUNT": 12, "OUTPUT": str(tmp_path / "review.gpkg")}
    )
    layers = clean_project.mapLayersByName("scene_uncertainty — regions to review")
    assert len(layers) == 1, [layer.name() for layer in clean_project.mapLayers().values()]
    layer = layers[0]
    renderer = layer.renderer()
    assert isinstance(renderer, QgsGraduatedSymbolRenderer) and renderer.classAttribute() == "rank"
    ranges = renderer.ranges()
    assert [r.label() for r in ranges] == ["rank 1–2", "rank 3–5", "rank 6–7", "rank 8–10", "rank 11–12"]
    for item in ranges:
        halo, outline = (item.symbol().symbolLayer(i) for i in range(item.symbol().symbolLayerCount()))
        assert halo.brushStyle() == outline.brushStyle() == Qt.NoBrush  # outline only: the uncertainty stays visible
        assert halo.strokeColor().name() == "#000000" and halo.strokeWidth() > outline.strokeWidth() > 0
    colors = [item.symbol().symbolLayer(1).strokeColor().name() for item in ranges]
    assert colors[0] == "#ff1f1f" and colors[-1] == "#ffffff" and len(set(colors)) == len(colors)
    assert layer.labelsEnabled() and layer.labeling().settings().fieldName == "rank"
    assert layer.attributeTableConfig().sortExpression() == '"rank"'


def test_style_fits_any_number_of_ranks_and_refuses_other_layers(
    mc_plugin: Any, rasters: tuple[str, str], tmp_path: Path
) -> None:
    import processing

    output = processing.run(
        ALGORITHM, {"UNCERTAINTY": rasters[0], "PATCH_SIZE": 16, "COUNT": 3, "OUTPUT": str(tmp_path / "three.geojson")}
    )["OUTPUT"]
    layer = QgsVectorLayer(output, "three", "ogr")
    style_review_layer(layer)
    assert [(r.lowerValue(), r.upperValue(), r.label()) for r in layer.renderer().ranges()] == [
        (0.5, 1.5, "rank 1"),
        (1.5, 2.5, "rank 2"),
        (2.5, 3.5, "rank 3"),
    ]
    points = QgsVectorLayer("Point?field=id:integer", "points", "memory")
    with pytest.raises(ValueError, match="no 'rank' field"):
        style_review_layer(points)


def test_modeler_chain_from_mc_dropout(
    mc_plugin: Any, raster_path: str, torchscript_model: str, tmp_path: Path
) -> None:
    """image -> mc_dropout (mutual information) -> review_regions on its uncertainty and classes."""
    import processing

    model = QgsProcessingModelAlgorithm("review chain", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("image", "Image"), QgsProcessingModelParameter("image"))
    model.addModelParameter(
        QgsProcessingParameterFile("model_file", "Model"), QgsProcessingModelParameter("model_file")
    )
    mc = QgsProcessingModelChildAlgorithm("mc_uncertainty:mc_dropout")
    mc.setChildId("mc")
    mc.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("image")])
    mc.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromModelParameter("model_file")])
    for key, value in (
        ("MODEL_INPUT_SHAPE", "64"),
        ("STEP_SHAPE", "32"),
        ("N_SAMPLES", 2),
        ("UNCERTAINTY_MODE", "mutual_information"),
    ):
        mc.addParameterSources(key, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    model.addChildAlgorithm(mc)
    review = QgsProcessingModelChildAlgorithm(ALGORITHM)
    review.setChildId("review")
    review.addParameterSources(
        "UNCERTAINTY", [QgsProcessingModelChildParameterSource.fromChildOutput("mc", "OUTPUT_UNCERTAINTY")]
    )
    review.addParameterSources("CLASSES", [QgsProcessingModelChildParameterSource.fromChildOutput("mc", "OUTPUT")])
    review.addParameterSources("PATCH_SIZE", [QgsProcessingModelChildParameterSource.fromStaticValue(32)])
    review.addParameterSources("COUNT", [QgsProcessingModelChildParameterSource.fromStaticValue(3)])
    regions = QgsProcessingModelOutput("regions", "Regions to review")
    regions.setChildId("review")
    regions.setChildOutputName("OUTPUT")
    review.setModelOutputs({"regions": regions})
    model.addChildAlgorithm(review)
    model.updateDestinationParameters()
    assert model.dependsOnChildAlgorithms("review") == {"mc"}

    results = processing.run(
        model, {"image": raster_path, "model_file": torchscript_model, "review:regions": str(tmp_path / "regions.gpkg")}
    )
    assert results["review:regions"] == str(tmp_path / "regions.gpkg")
    rows = _rows(results["review:regions"])
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert all(0.0 <= row["mean_uncertainty"] <= row["max_uncertainty"] <= np.log(3) + 1e-5 for row in rows)
    assert all(row["dominant_class"] in (0, 1, 2) and row["valid_fraction"] == 1.0 for row in rows)


@pytest.mark.slow
@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_runs_the_deployed_algorithm(rasters: tuple[str, str], tmp_path: Path) -> None:
    config_root = tmp_path / "qgis"
    profile = config_root / "profiles" / "default"
    env = {k: v for k, v in os.environ.items() if k not in ("MC_UNCERTAINTY_PYTHON_ENV", "PYTHONPATH")}
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(config_root)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    deploy = [
        sys.executable,
        str(REPO_ROOT / "resources" / "tools" / "deploy.py"),
        "--profile-dir",
        str(profile),
        "--enable",
    ]
    done = subprocess.run(deploy, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr

    uncertainty, classes = rasters
    output = tmp_path / "review.gpkg"
    run = subprocess.run(
        [
            QGIS_PROCESS,
            "--json",
            "run",
            ALGORITHM,
            "--",
            f"UNCERTAINTY={uncertainty}",
            f"CLASSES={classes}",
            "PATCH_SIZE=16",
            "COUNT=5",
            f"OUTPUT={output}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(run.stdout)["results"]["OUTPUT"] == str(output)
    assert [row["rank"] for row in _rows(str(output))] == [1, 2, 3, 4, 5]

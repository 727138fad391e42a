"""processing.run("mc_uncertainty:evaluate", ...): files, report content, results, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import EPSG, GEOTRANSFORM, RecordingFeedback
from osgeo import gdal, osr
from qgis.core import QgsProcessingException

SHAPE = (40, 30)


def write(
    path: Path, array: np.ndarray, geotransform: tuple[float, ...] = GEOTRANSFORM, nodata: float | None = None
) -> str:
    gdal_type = gdal.GDT_Byte if array.dtype == np.uint8 else gdal.GDT_Float32
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[1], array.shape[0], 1, gdal_type)
    dataset.SetGeoTransform(geotransform)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    dataset.SetProjection(srs.ExportToWkt())
    dataset.GetRasterBand(1).WriteArray(array)
    if nodata is not None:
        dataset.GetRasterBand(1).SetNoDataValue(nodata)
    dataset = None
    return str(path)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    """Classes (about 25 % wrong, a nodata corner), an informative uncertainty, a confidence and a reference."""
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 3, SHAPE).astype(np.uint8)
    wrong = rng.random(SHAPE) < 0.25
    classes = np.where(wrong, (reference + 1) % 3, reference).astype(np.uint8)
    classes[:3, :3] = 255
    uncertainty = (rng.integers(0, 48, SHAPE) + 16 * wrong) / 64.0 * np.log(3)
    confidence = 1.0 - uncertainty / np.log(3) * (2 / 3)
    return {
        "CLASSES": write(tmp_path / "classes.tif", classes, nodata=255),
        "UNCERTAINTY": write(tmp_path / "uncertainty.tif", uncertainty.astype(np.float32)),
        "CONFIDENCE": write(tmp_path / "confidence.tif", confidence.astype(np.float32)),
        "REFERENCE": write(tmp_path / "reference.tif", reference),
    }


def run(tmp_path: Path, feedback: Any = None, **parameters: Any) -> dict[str, Any]:
    import processing

    outputs = {
        key: str(tmp_path / f"report.{ext}")
        for key, ext in (("OUTPUT_HTML", "html"), ("OUTPUT_PNG", "png"), ("OUTPUT_JSON", "json"))
    }
    return processing.run("mc_uncertainty:evaluate", {**outputs, **parameters}, feedback=feedback)


def test_evaluate_writes_report_png_and_json_matching_the_core(
    mc_plugin: Any, inputs: dict[str, str], tmp_path: Path
) -> None:
    from mc_uncertainty_plugin.core import EvaluationConfig, evaluate_uncertainty

    results = run(tmp_path, **inputs, CLASS_NAMES="water, forest, urban", PAVPU_PATCH_SIZE=5)
    assert results["OUTPUT_HTML"] == str(tmp_path / "report.html")
    assert Path(results["OUTPUT_PNG"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    core = evaluate_uncertainty(
        EvaluationConfig(
            inputs["CLASSES"],
            inputs["UNCERTAINTY"],
            inputs["REFERENCE"],
            confidence_path=inputs["CONFIDENCE"],
            class_names=("water", "forest", "urban"),
            pavpu_patch_size=5,
        )
    )
    data = json.loads(Path(results["OUTPUT_JSON"]).read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(core.to_json()))
    assert data["patches"]["patch_size"] == 5 and list(data["iou"]) == ["water", "forest", "urban"]
    assert data["n_pixels"] == SHAPE[0] * SHAPE[1] - 9
    for key, value in (
        ("ACCURACY", core.accuracy),
        ("MEAN_IOU", core.mean_iou),
        ("ECE", core.ece),
        ("AUROC", core.auroc),
        ("AUPR", core.aupr),
        ("AURC", core.aurc),
        ("AUSE", core.ause),
    ):
        assert results[key] == pytest.approx(value, abs=1e-12), key
    assert 0.7 < results["AUROC"] < 1.0 and 0.0 < results["ECE"] < 1.0
    text = Path(results["OUTPUT_HTML"]).read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") >= 6
    for number in (
        f"{core.accuracy:.3f}",
        f"{core.mean_iou:.3f}",
        f"{core.ece:.3f}",
        f"{core.auroc:.3f}",
        f"{core.aupr:.3f}",
        f"{core.aurc:.4f}",
        f"{core.ause:.4f}",
    ):
        assert number in text, number
    assert "forest" in text and "PAvPU" in text


def test_without_confidence_ece_is_empty_and_names_come_from_the_class_raster(
    mc_plugin: Any, inputs: dict[str, str], tmp_path: Path
) -> None:
    dataset = gdal.Open(inputs["CLASSES"], gdal.GA_Update)
    dataset.GetRasterBand(1).SetCategoryNames(["background", "building", "water"])
    dataset = None
    feedback = RecordingFeedback()
    results = run(tmp_path, feedback, **{k: v for k, v in inputs.items() if k != "CONFIDENCE"})
    assert results["ECE"] is None
    data = json.loads(Path(results["OUTPUT_JSON"]).read_text(encoding="utf-8"))
    assert data["calibration"] is None and data["class_names"] == ["background", "building", "water"]
    assert any("No CONFIDENCE raster" in info for info in feedback.infos)
    assert math.isfinite(results["AURC"])


def test_reference_on_another_grid_warns(mc_plugin: Any, inputs: dict[str, str], tmp_path: Path) -> None:
    reference = gdal.Open(inputs["REFERENCE"]).ReadAsArray()
    x0, dx, _, y0, _, dy = GEOTRANSFORM
    fine = write(
        tmp_path / "fine.tif",
        np.kron(reference, np.ones((2, 2), dtype=np.uint8)),
        geotransform=(x0, dx / 2, 0, y0, 0, dy / 2),
    )
    feedback = RecordingFeedback()
    resampled = run(tmp_path, feedback, **{**inputs, "REFERENCE": fine})
    assert any("resampled by nearest neighbour" in w for w in feedback.warnings)
    from mc_uncertainty_plugin.core import EvaluationConfig, evaluate_uncertainty

    core = evaluate_uncertainty(
        EvaluationConfig(
            inputs["CLASSES"], inputs["UNCERTAINTY"], inputs["REFERENCE"], confidence_path=inputs["CONFIDENCE"]
        )
    )
    assert resampled["ACCURACY"] == core.accuracy and resampled["AUROC"] == core.auroc


def test_core_errors_become_processing_exceptions(mc_plugin: Any, inputs: dict[str, str], tmp_path: Path) -> None:
    small = write(tmp_path / "small.tif", np.zeros((SHAPE[0] - 1, SHAPE[1]), np.float32))
    with pytest.raises(QgsProcessingException, match=r"UNCERTAINTY must have the grid of CLASSES"):
        run(tmp_path, **{**inputs, "UNCERTAINTY": small})
    assert not (tmp_path / "report.html").exists()


def test_algorithm_metadata(registry: Any) -> None:
    algorithm = registry.createAlgorithmById("mc_uncertainty:evaluate")
    assert algorithm is not None
    definitions = {d.name(): d for d in algorithm.parameterDefinitions()}
    assert set(definitions) == {
        "CLASSES",
        "UNCERTAINTY",
        "CONFIDENCE",
        "REFERENCE",
        "CLASS_NAMES",
        "PAVPU_PATCH_SIZE",
        "OUTPUT_HTML",
        "OUTPUT_PNG",
        "OUTPUT_JSON",
    }
    assert all(d.help() for d in definitions.values())
    assert definitions["PAVPU_PATCH_SIZE"].defaultValue() == 4
    outputs = {o.name() for o in algorithm.outputDefinitions()}
    assert {
        "OUTPUT_HTML",
        "OUTPUT_PNG",
        "OUTPUT_JSON",
        "ACCURACY",
        "MEAN_IOU",
        "ECE",
        "AUROC",
        "AUPR",
        "AURC",
        "AUSE",
    } <= outputs
    help_text = algorithm.shortHelpString()
    for word in ("ECE", "AUROC", "AUPR", "AURC", "AUSE", "PAvPU", "IoU"):
        assert word in help_text

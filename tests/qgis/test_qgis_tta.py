"""processing.run("mc_uncertainty:tta", ...) and TTA_MODE in mc_dropout."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FAST
from osgeo import gdal

LN3 = math.log(3)


def read(path: str) -> np.ndarray:
    dataset = gdal.Open(path)
    assert dataset is not None, path
    return dataset.GetRasterBand(1).ReadAsArray()


def run_tta(raster: str, model: str, **parameters: Any) -> dict[str, Any]:
    import processing

    values = {"INPUT": raster, "MODEL": model, "MODEL_INPUT_SHAPE": "64", "STEP_SHAPE": "32", **parameters}
    return processing.run("mc_uncertainty:tta", values)


def test_tta_writes_default_uncertainty_name(
    mc_plugin: Any, raster_path: str, no_dropout_model: str, tmp_path: Path
) -> None:
    results = run_tta(raster_path, no_dropout_model, OUTPUT=str(tmp_path / "classes.tif"))
    assert results == {
        "OUTPUT": str(tmp_path / "classes.tif"),
        "OUTPUT_UNCERTAINTY": str(tmp_path / "classes_uncertainty.tif"),
        "OUTPUT_CONFIDENCE": None,
        "OUTPUT_PROBABILITIES": None,
        "OUTPUT_CONFIDENT": None,
    }
    unc = read(results["OUTPUT_UNCERTAINTY"])
    assert unc.min() >= 0 and unc.max() <= LN3 + 1e-5
    dataset = gdal.Open(results["OUTPUT_UNCERTAINTY"])
    assert dataset.GetMetadataItem("MC_TTA_MODE") == "d4" and dataset.GetMetadataItem("MC_DROPOUT") == "off"


def test_per_pixel_model_has_zero_tta_mutual_information(
    mc_plugin: Any, raster_path: str, no_dropout_model: str, tmp_path: Path
) -> None:
    """The test model is 1x1 convolutions only, so every transform predicts the same: MI = 0, and the d4 entropy
    equals that of a single deterministic pass (TTA_MODE none)."""
    mi = run_tta(raster_path, no_dropout_model, OUTPUT=str(tmp_path / "mi.tif"), UNCERTAINTY_MODE="mutual_information")
    np.testing.assert_allclose(read(mi["OUTPUT_UNCERTAINTY"]), 0.0, atol=1e-5)
    d4 = run_tta(raster_path, no_dropout_model, OUTPUT=str(tmp_path / "d4.tif"))
    none = run_tta(raster_path, no_dropout_model, OUTPUT=str(tmp_path / "none.tif"), TTA_MODE="none")
    np.testing.assert_allclose(read(d4["OUTPUT_UNCERTAINTY"]), read(none["OUTPUT_UNCERTAINTY"]), atol=1e-5)
    assert read(none["OUTPUT_UNCERTAINTY"]).max() > 0


def test_mc_dropout_with_tta_reports_progress_over_all_passes(
    run_mc_dropout: Any, tmp_path: Path, feedback: Any
) -> None:
    results = run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"), TTA_MODE="flip", feedback=feedback)
    dataset = gdal.Open(results["OUTPUT_UNCERTAINTY"])
    assert dataset.GetMetadataItem("MC_TTA_MODE") == "flip" and dataset.GetMetadataItem("MC_N_SAMPLES") == str(
        FAST["N_SAMPLES"]
    )
    assert any("3 sample(s) x 4 transform(s)" in info for info in feedback.infos)
    # 6 windows in 2 batches x 12 passes (3 samples x 4 transforms): progress moves after every pass
    values = feedback.progress_values
    assert values == sorted(values)
    assert len(set(values)) >= 2 * 12
    assert sorted(set(values))[-2] == pytest.approx(99, abs=1.5)  # the passes account for the whole run


def test_values_left_out_come_from_the_configs_inference_processor(
    mc_plugin: Any, raster_path: str, data_dir: Path, torchscript_model: str, tmp_path: Path
) -> None:
    import shutil

    import processing

    model = tmp_path / "model.pt"
    shutil.copy(torchscript_model, model)
    (tmp_path / "model.yaml").write_text(
        "inference_processor:\n  n_samples: 2\n  uncertainty_mode: mutual_information\n  model_input_shape: [64, 64]\n"
        "  step_shape: 64\n  seed: 7\n",
        encoding="utf-8",
    )
    results = processing.run(
        "mc_uncertainty:mc_dropout", {"INPUT": raster_path, "MODEL": str(model), "OUTPUT": str(tmp_path / "c.tif")}
    )
    dataset = gdal.Open(results["OUTPUT_UNCERTAINTY"])
    meta = dataset.GetMetadata()
    assert (meta["MC_N_SAMPLES"], meta["MC_UNCERTAINTY_MODE"], meta["MC_TILE"], meta["MC_STEP"], meta["MC_SEED"]) == (
        "2",
        "mutual_information",
        "64,64",
        "64,64",
        "7",
    )
    explicit = processing.run(
        "mc_uncertainty:mc_dropout",
        {
            "INPUT": raster_path,
            "MODEL": str(model),
            "N_SAMPLES": 3,
            "MODEL_INPUT_SHAPE": "64",
            "OUTPUT": str(tmp_path / "e.tif"),
        },
    )
    assert gdal.Open(explicit["OUTPUT_UNCERTAINTY"]).GetMetadataItem("MC_N_SAMPLES") == "3"


def test_confidence_raster_when_asked(mc_plugin: Any, raster_path: str, no_dropout_model: str, tmp_path: Path) -> None:
    results = run_tta(
        raster_path, no_dropout_model, OUTPUT=str(tmp_path / "c.tif"), OUTPUT_CONFIDENCE=str(tmp_path / "conf.tif")
    )
    assert results["OUTPUT_CONFIDENCE"] == str(tmp_path / "conf.tif")
    confidence = read(results["OUTPUT_CONFIDENCE"])
    assert confidence.min() >= 1 / 3 - 1e-6 and confidence.max() <= 1 + 1e-6

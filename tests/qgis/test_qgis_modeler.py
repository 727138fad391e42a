"""A Graphical Modeler chain: mc_dropout's OUTPUT_UNCERTAINTY feeds gdal:translate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal
from qgis.core import (
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterLayer,
)


def _static(value: Any) -> list[QgsProcessingModelChildParameterSource]:
    return [QgsProcessingModelChildParameterSource.fromStaticValue(value)]


def build_model() -> QgsProcessingModelAlgorithm:
    """image + model file -> mc_dropout -> (class raster as model output, uncertainty -> gdal:translate)."""
    model = QgsProcessingModelAlgorithm("mc chain", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("image", "Image"), QgsProcessingModelParameter("image"))
    model.addModelParameter(
        QgsProcessingParameterFile("model_file", "Model"), QgsProcessingModelParameter("model_file")
    )

    mc = QgsProcessingModelChildAlgorithm("mc_uncertainty:mc_dropout")
    mc.setChildId("mc")
    mc.setDescription("MC dropout")
    mc.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("image")])
    mc.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromModelParameter("model_file")])
    mc.addParameterSources("MODEL_INPUT_SHAPE", _static("64"))
    mc.addParameterSources("STEP_SHAPE", _static("32"))
    mc.addParameterSources("N_SAMPLES", _static(2))
    mc.addParameterSources("UNCERTAINTY_MODE", _static("mutual_information"))
    classes = QgsProcessingModelOutput("classes", "Classes")
    classes.setChildId("mc")
    classes.setChildOutputName("OUTPUT")
    mc.setModelOutputs({"classes": classes})
    model.addChildAlgorithm(mc)

    translate = QgsProcessingModelChildAlgorithm("gdal:translate")
    translate.setChildId("translate")
    translate.setDescription("Copy the uncertainty")
    translate.addParameterSources(
        "INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("mc", "OUTPUT_UNCERTAINTY")]
    )
    copy = QgsProcessingModelOutput("uncertainty_copy", "Uncertainty copy")
    copy.setChildId("translate")
    copy.setChildOutputName("OUTPUT")
    translate.setModelOutputs({"uncertainty_copy": copy})
    model.addChildAlgorithm(translate)
    model.updateDestinationParameters()
    return model


def test_uncertainty_feeds_the_next_algorithm(
    mc_plugin: Any, raster_path: str, torchscript_model: str, tmp_path: Path
) -> None:
    import processing

    model = build_model()
    assert model.dependsOnChildAlgorithms("translate") == {"mc"}
    results = processing.run(
        model,
        {
            "image": raster_path,
            "model_file": torchscript_model,
            "mc:classes": str(tmp_path / "classes.tif"),
            "translate:uncertainty_copy": str(tmp_path / "uncertainty_copy.tif"),
        },
    )
    assert results["mc:classes"] == str(tmp_path / "classes.tif")
    copied = gdal.Open(results["translate:uncertainty_copy"])
    assert copied is not None
    assert (copied.RasterXSize, copied.RasterYSize) == (100, 80)
    values = copied.GetRasterBand(1).ReadAsArray()
    assert copied.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert np.all(values >= 0) and np.all(values <= np.log(3) + 1e-5)
    assert values.max() > 0
    # the uncertainty was a temporary intermediate: nothing was written beside the class raster
    assert not (tmp_path / "classes_mc_uncertainty.tif").exists()

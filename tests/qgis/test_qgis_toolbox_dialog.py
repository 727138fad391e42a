"""The Toolbox dialog: its widgets take our parameters, and its defaults (temporary OUTPUT, OUTPUT_UNCERTAINTY
left on "Skip output") give a class layer and a styled uncertainty layer, grouped, in the project."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from qgis.core import QgsPalettedRasterRenderer, QgsProcessingContext, QgsSingleBandPseudoColorRenderer


def test_dialog_defaults_load_a_styled_uncertainty_layer(
    registry: Any, qgis_iface: Any, raster_path: str, torchscript_model: str, monkeypatch: pytest.MonkeyPatch,
    clean_project: Any,
) -> None:
    import processing
    import processing.gui.ParametersPanel as parameters_panel
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    monkeypatch.setattr(parameters_panel, "iface", None)  # the stub iface has no browser model
    project = clean_project
    algorithm = registry.createAlgorithmById("mc_uncertainty:mc_dropout")
    dialog = AlgorithmDialog(algorithm, False, qgis_iface.mainWindow())
    try:
        panel = dialog.mainWidget()
        widget_context = QgsProcessingContext()
        for key, value in {"INPUT": raster_path, "MODEL": torchscript_model, "MODEL_INPUT_SHAPE": "64",
                           "STEP_SHAPE": "32", "N_SAMPLES": 2}.items():
            panel.wrappers[key].setParameterValue(value, widget_context)
        assert panel.wrappers["OUTPUT_UNCERTAINTY"].parameterValue() is None  # "Skip output"
        assert panel.wrappers["TILE_WEIGHT"].parameterValue() == "gaussian"
        parameters = panel.createProcessingParameters()
    finally:
        dialog.close()

    # closing the dialog deleted its algorithm instance: run by id
    results = processing.runAndLoadResults("mc_uncertainty:mc_dropout", parameters)
    output = results["OUTPUT"]
    assert results["OUTPUT_UNCERTAINTY"] == output[: -len(".tif")] + "_mc_uncertainty.tif"
    layers = {layer.source(): layer for layer in project.mapLayers().values()}
    assert set(layers) == {output, results["OUTPUT_UNCERTAINTY"]}
    renderer = layers[results["OUTPUT_UNCERTAINTY"]].renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    assert renderer.classificationMax() == pytest.approx(math.log(3), abs=1e-5)
    assert isinstance(layers[output].renderer(), QgsPalettedRasterRenderer)
    assert Path(output).is_file()
    # both in one group named after the input layer ("scene"), the uncertainty on top
    (group,) = project.layerTreeRoot().children()
    assert group.name() == "scene — MC Dropout"
    assert [child.layerId() for child in group.children()] == [
        layers[results["OUTPUT_UNCERTAINTY"]].id(), layers[output].id()]

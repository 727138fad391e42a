"""The Toolbox dialog (the one QGIS opens for our algorithms): its widgets take our parameters, the uncertainty
output says where an empty value writes it, and its defaults (temporary OUTPUT, empty OUTPUT_UNCERTAINTY) give a
class layer and a styled uncertainty layer, grouped, in the project."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from qgis.core import QgsPalettedRasterRenderer, QgsProcessingContext, QgsSingleBandPseudoColorRenderer
from qgis.PyQt.QtWidgets import QLineEdit


@pytest.fixture
def no_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    import processing.gui.ParametersPanel as parameters_panel

    monkeypatch.setattr(parameters_panel, "iface", None)  # the stub iface has no browser model


def uncertainty_field(dialog: Any) -> QLineEdit:
    widget = dialog.mainWidget().wrappers["OUTPUT_UNCERTAINTY"].wrappedWidget()
    return widget.findChild(QLineEdit)


def test_dialog_defaults_load_a_styled_uncertainty_layer(
    registry: Any,
    qgis_iface: Any,
    raster_path: str,
    torchscript_model: str,
    no_browser: None,
    clean_project: Any,
    tmp_path: Path,
) -> None:
    import processing

    project = clean_project
    dialog = processing.createAlgorithmDialog("mc_uncertainty:mc_dropout", {})  # what the Toolbox opens
    try:
        panel = dialog.mainWidget()
        widget_context = QgsProcessingContext()
        for key, value in {
            "INPUT": raster_path,
            "MODEL": torchscript_model,
            "MODEL_INPUT_SHAPE": "64",
            "STEP_SHAPE": "32",
            "N_SAMPLES": 2,
        }.items():
            panel.wrappers[key].setParameterValue(value, widget_context)
        assert panel.wrappers["OUTPUT_UNCERTAINTY"].parameterValue() is None  # empty ...
        field = uncertainty_field(dialog)
        # ... and it says what happens then, not "[Skip output]"; it follows the class raster's name
        assert (
            field.text() == ""
            and field.placeholderText() == "[Beside the class raster, as <its name>_mc_uncertainty.tif]"
        )
        panel.wrappers["OUTPUT"].setParameterValue(str(tmp_path / "classes.tif"), widget_context)
        assert field.placeholderText() == "[Beside the class raster: classes_mc_uncertainty.tif]"
        panel.wrappers["OUTPUT"].setParameterValue("TEMPORARY_OUTPUT", widget_context)
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
    assert group.name() == "scene — MC Dropout (T = 2, entropy)"
    assert [child.layerId() for child in group.children()] == [
        layers[results["OUTPUT_UNCERTAINTY"]].id(),
        layers[output].id(),
    ]


def test_tta_dialog_names_its_own_default(registry: Any, no_browser: None) -> None:
    import processing

    dialog = processing.createAlgorithmDialog("mc_uncertainty:tta", {})
    try:
        assert uncertainty_field(dialog).placeholderText() == "[Beside the class raster, as <its name>_uncertainty.tif]"
    finally:
        dialog.close()


def test_tta_mode_help_fits_each_algorithm(registry: Any) -> None:
    """In MC Dropout, TTA_MODE none still runs T dropout passes; only in TTA is it one deterministic pass."""
    mc_help = registry.algorithmById("mc_uncertainty:mc_dropout").parameterDefinition("TTA_MODE").help()
    tta_help = registry.algorithmById("mc_uncertainty:tta").parameterDefinition("TTA_MODE").help()
    assert "none = no augmentation: the T dropout passes only" in mc_help
    assert "deterministic pass" not in mc_help and "MI = 0" not in mc_help and "mutual information is 0" not in mc_help
    assert "none = one deterministic pass" in tta_help
    assert "T x K samples" in mc_help and "T x K" not in tta_help


def test_algorithms_draw_the_plugin_icon_in_the_modeler(registry: Any) -> None:
    """The Graphical Modeler draws an algorithm's svgIconPath() (a generic gear by default), not its icon()."""
    from qgis.core import QgsApplication

    provider = registry.providerById("mc_uncertainty")
    gear = QgsApplication.iconPath("processingAlgorithm.svg")
    for algorithm in provider.algorithms():
        assert algorithm.svgIconPath() == provider.svgIconPath() != gear, algorithm.id()
        assert Path(algorithm.svgIconPath()).is_file()

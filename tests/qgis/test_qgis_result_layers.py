"""Both outputs loaded in the desktop (runAndLoadResults, the batch dialog): styled, named, in one group."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import RecordingFeedback
from osgeo import gdal
from qgis.core import (
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
)

from mc_uncertainty_plugin.map_layers.styling import (
    DEFAULT_CLASS_COLORS,
    default_class_color,
    read_class_legend,
    style_class_layer,
)

LN3 = math.log(3)
FAST_RUN = {"MODEL_INPUT_SHAPE": "64", "STEP_SHAPE": "32", "N_SAMPLES": 2}


def tree(project: Any) -> list[tuple[str, list[str]]]:
    """The layer tree's top level: ``(group name, [layer names])`` per group."""
    groups = []
    for node in project.layerTreeRoot().children():
        assert isinstance(node, QgsLayerTreeGroup), f"a layer outside any group: {node.name()}"
        assert all(isinstance(child, QgsLayerTreeLayer) for child in node.children())
        groups.append((node.name(), [child.name() for child in node.children()]))
    return groups


def layer_named(project: Any, name: str) -> QgsRasterLayer:
    layers = project.mapLayersByName(name)
    assert len(layers) == 1, (name, [layer.name() for layer in project.mapLayers().values()])
    return layers[0]


def class_items(layer: QgsRasterLayer) -> list[tuple[int, str, str]]:
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    return [(int(c.value), c.color.name(), c.label) for c in renderer.classes()]


def test_run_and_load_results_groups_and_styles_both_outputs(
    mc_plugin: Any, raster_path: str, yaml_model: tuple[str, str], tmp_path: Path, clean_project: Any
) -> None:
    import processing

    config, checkpoint = yaml_model  # class_names: [background, building, water], no class_colors
    feedback = RecordingFeedback()
    results = processing.runAndLoadResults(
        "mc_uncertainty:mc_dropout",
        {
            "INPUT": raster_path,
            "MODEL": config,
            "CHECKPOINT": checkpoint,
            **FAST_RUN,
            "OUTPUT": str(tmp_path / "classes.tif"),
        },
        feedback=feedback,
    )
    assert tree(clean_project) == [
        (
            "scene — MC Dropout (T = 2, entropy)",
            ["scene — MC uncertainty (entropy, T = 2)", "scene — MC classes (T = 2)"],
        )
    ]
    uncertainty = layer_named(clean_project, "scene — MC uncertainty (entropy, T = 2)")
    assert uncertainty.source() == results["OUTPUT_UNCERTAINTY"]
    renderer = uncertainty.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    assert (renderer.classificationMin(), renderer.classificationMax()) == (0, pytest.approx(LN3, abs=1e-5))
    ramp = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert (ramp[0].color.name(), ramp[-1].color.name()) == ("#440154", "#fde725")

    classes = layer_named(clean_project, "scene — MC classes (T = 2)")
    assert classes.source() == results["OUTPUT"]
    # names from the config, colours from the default palette (the config has none)
    assert class_items(classes) == [
        (0, DEFAULT_CLASS_COLORS[0], "background"),
        (1, DEFAULT_CLASS_COLORS[1], "building"),
        (2, DEFAULT_CLASS_COLORS[2], "water"),
    ]
    # the log: stages, ETA lines, device, windows, time
    infos = "\n".join(feedback.infos)
    assert "Loading PyTorch… " in infos and "Device: cpu" in infos and "windows of 64x64" in infos
    assert "% — ETA" in infos and "Total" in infos


def test_tta_layers_say_method_and_mode(
    mc_plugin: Any, raster_path: str, no_dropout_model: str, tmp_path: Path, clean_project: Any
) -> None:
    import processing

    processing.runAndLoadResults(
        "mc_uncertainty:tta",
        {
            "INPUT": raster_path,
            "MODEL": no_dropout_model,
            "MODEL_INPUT_SHAPE": "64",
            "STEP_SHAPE": "32",
            "TTA_MODE": "flip",
            "UNCERTAINTY_MODE": "mutual_information",
            "OUTPUT": str(tmp_path / "tta.tif"),
        },
    )
    assert tree(clean_project) == [
        ("scene — TTA (flip, MI)", ["scene — TTA uncertainty (mutual information, flip)", "scene — TTA classes (flip)"])
    ]
    classes = layer_named(clean_project, "scene — TTA classes (flip)")
    assert [label for _value, _color, label in class_items(classes)] == ["class 0", "class 1", "class 2"]


def test_variation_ratio_scale_ends_at_its_maximum(
    mc_plugin: Any, raster_path: str, torchscript_model: str, tmp_path: Path, clean_project: Any
) -> None:
    import processing

    processing.runAndLoadResults(
        "mc_uncertainty:mc_dropout",
        {
            "INPUT": raster_path,
            "MODEL": torchscript_model,
            **FAST_RUN,
            "UNCERTAINTY_MODE": "variation_ratio",
            "OUTPUT": str(tmp_path / "vr.tif"),
        },
    )
    renderer = layer_named(clean_project, "scene — MC uncertainty (variation ratio, T = 2)").renderer()
    assert renderer.classificationMax() == pytest.approx(1 - 1 / 3, abs=1e-5)  # 1 - 1/C, not ln C


def test_each_run_gets_its_own_group_and_a_number(
    mc_plugin: Any, raster_path: str, torchscript_model: str, tmp_path: Path, clean_project: Any
) -> None:
    import processing

    for name, samples in (("first", 2), ("second", 2), ("third", 3)):
        processing.runAndLoadResults(
            "mc_uncertainty:mc_dropout",
            {
                "INPUT": raster_path,
                "MODEL": torchscript_model,
                **FAST_RUN,
                "N_SAMPLES": samples,
                "OUTPUT": str(tmp_path / f"{name}.tif"),
            },
        )
    groups = tree(clean_project)
    # newest on top; the same settings twice: a run number; another T: its own name
    assert groups == [
        (
            "scene — MC Dropout (T = 3, entropy)",
            ["scene — MC uncertainty (entropy, T = 3)", "scene — MC classes (T = 3)"],
        ),
        (
            "scene — MC Dropout (T = 2, entropy) #2",
            ["scene — MC uncertainty (entropy, T = 2) #2", "scene — MC classes (T = 2) #2"],
        ),
        (
            "scene — MC Dropout (T = 2, entropy)",
            ["scene — MC uncertainty (entropy, T = 2)", "scene — MC classes (T = 2)"],
        ),
    ]
    sources = {Path(layer.source()).name: layer.name() for layer in clean_project.mapLayers().values()}
    assert sources["second.tif"] == "scene — MC classes (T = 2) #2"
    assert len(set(sources.values())) == 6  # no two layers share a name


@contextlib.contextmanager
def following_the_current_layer(project: Any) -> Iterator[None]:
    """Do what QGIS Desktop's layer panel does: a layer added to the tree becomes the current layer, and new
    layers are inserted where the current layer is (its group). At the end new layers go to the top again (the
    insertion point must not outlive the groups a test's clean-up deletes)."""
    from qgis.core import QgsLayerTreeRegistryBridge

    def added(parent: Any, first: int, _last: int) -> None:
        node = parent.children()[first]
        if isinstance(node, QgsLayerTreeLayer) and isinstance(node.parent(), QgsLayerTreeGroup):
            project.layerTreeRegistryBridge().setLayerInsertionPoint(
                QgsLayerTreeRegistryBridge.InsertionPoint(node.parent(), 0)
            )

    project.layerTreeRoot().addedChildren.connect(added)
    try:
        yield
    finally:
        project.layerTreeRoot().addedChildren.disconnect(added)
        project.layerTreeRegistryBridge().setLayerInsertionPoint(
            QgsLayerTreeRegistryBridge.InsertionPoint(project.layerTreeRoot(), 0)
        )


def test_a_run_never_nests_its_group_in_an_earlier_one(
    mc_plugin: Any, raster_path: str, torchscript_model: str, tmp_path: Path, clean_project: Any
) -> None:
    """The current layer sits in the first run's group (QGIS makes the loaded layer current): the second run's
    group goes beside it, at the top level, not inside; a user's own group is still honoured."""
    import processing
    from qgis.core import QgsLayerTreeRegistryBridge

    with following_the_current_layer(clean_project):
        for name in ("first", "second"):
            processing.runAndLoadResults(
                "mc_uncertainty:mc_dropout",
                {"INPUT": raster_path, "MODEL": torchscript_model, **FAST_RUN, "OUTPUT": str(tmp_path / f"{name}.tif")},
            )
        assert [name for name, _layers in tree(clean_project)] == [
            "scene — MC Dropout (T = 2, entropy) #2",
            "scene — MC Dropout (T = 2, entropy)",
        ]
        mine = clean_project.layerTreeRoot().addGroup("my results")
        clean_project.layerTreeRegistryBridge().setLayerInsertionPoint(
            QgsLayerTreeRegistryBridge.InsertionPoint(mine, 0)
        )
        processing.runAndLoadResults(
            "mc_uncertainty:mc_dropout",
            {"INPUT": raster_path, "MODEL": torchscript_model, **FAST_RUN, "OUTPUT": str(tmp_path / "third.tif")},
        )
    assert [child.name() for child in mine.children()] == ["scene — MC Dropout (T = 2, entropy) #3"]


def test_batch_dialog_runs_two_rasters(
    mc_plugin: Any,
    registry: Any,
    qgis_iface: Any,
    raster_path: str,
    torchscript_model: str,
    tmp_path: Path,
    clean_project: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Toolbox's "Run as Batch Process…" dialog, filled in and run as a user would (two rows, the optional
    outputs left blank): no "layers were not correctly generated" error, no row nested in the previous one."""
    import shutil

    import processing.gui.BatchAlgorithmDialog as batch_module
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from qgis.core import QgsProcessingContext as Context

    queued: list[list[str]] = []
    loaded_ok: list[bool] = []
    real_handler = batch_module.handleAlgorithmResults

    def handle(alg: Any, context: Any, *args: Any, **kwargs: Any) -> bool:
        queued.append(list(context.layersToLoadOnCompletion()))
        loaded_ok.append(real_handler(alg, context, *args, **kwargs))  # False: "not correctly generated"
        return loaded_ok[-1]

    monkeypatch.setattr(batch_module, "handleAlgorithmResults", handle)
    second_raster = str(tmp_path / "second_scene.tif")
    shutil.copy(raster_path, second_raster)
    algorithm = registry.createAlgorithmById("mc_uncertainty:mc_dropout")
    dialog = BatchAlgorithmDialog(algorithm, qgis_iface.mainWindow())
    panel = dialog.mainWidget()
    panel.addRow()
    assert panel.batchRowCount() == 2
    context = Context()
    outputs = [str(tmp_path / "batch_a.tif"), str(tmp_path / "batch_b.tif")]
    for row, raster in enumerate((raster_path, second_raster)):
        values = {
            "INPUT": raster,
            "MODEL": torchscript_model,
            "MODEL_INPUT_SHAPE": "64",
            "STEP_SHAPE": "32",
            "N_SAMPLES": 2,
        }
        for key, value in values.items():
            panel.wrappers[row][panel.parameter_to_column[key]].setParameterValue(value, context)
        panel.tblParameters.cellWidget(row + 1, panel.parameter_to_column["OUTPUT"]).setValue(outputs[row])
    panel.checkLoadLayersOnCompletion.setChecked(True)
    try:
        with following_the_current_layer(clean_project):
            dialog.runAlgorithm()
    finally:
        dialog.close()

    assert loaded_ok == [True, True]
    for row, output in enumerate(outputs):
        uncertainty = output[: -len(".tif")] + "_mc_uncertainty.tif"
        assert gdal.Open(output) is not None and gdal.Open(uncertainty) is not None
        assert sorted(queued[row]) == sorted([output, uncertainty])  # no empty path queued
    assert sorted(tree(clean_project)) == [
        (
            "scene — MC Dropout (T = 2, entropy)",
            ["scene — MC uncertainty (entropy, T = 2)", "scene — MC classes (T = 2)"],
        ),
        (
            "second_scene — MC Dropout (T = 2, entropy)",
            ["second_scene — MC uncertainty (entropy, T = 2)", "second_scene — MC classes (T = 2)"],
        ),
    ]
    for layer in clean_project.mapLayers().values():
        expected = QgsSingleBandPseudoColorRenderer if "uncertainty" in layer.name() else QgsPalettedRasterRenderer
        assert isinstance(layer.renderer(), expected), layer.name()


def test_empty_output_definitions_mean_not_given(run_mc_dropout: Any, tmp_path: Path, clean_project: Any) -> None:
    """What the Batch dialog passes for blank optional outputs: definitions with an empty path. The uncertainty
    then goes beside OUTPUT and is loaded; no confidence raster is written; nothing empty is queued."""
    from qgis.core import QgsProcessingOutputLayerDefinition as Definition

    context = QgsProcessingContext()
    context.setProject(clean_project)
    output = str(tmp_path / "classes.tif")
    results = run_mc_dropout(
        OUTPUT=Definition(output, clean_project),
        OUTPUT_UNCERTAINTY=Definition("", clean_project),
        OUTPUT_CONFIDENCE=Definition("", clean_project),
        context=context,
    )
    beside = str(tmp_path / "classes_mc_uncertainty.tif")
    assert results["OUTPUT_UNCERTAINTY"] == beside and results["OUTPUT_CONFIDENCE"] is None
    assert sorted(context.layersToLoadOnCompletion()) == sorted([output, beside])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "classes_mc_uncertainty.tif"]


def test_stretched_colours_span_the_data_and_say_so(
    mc_plugin: Any, raster_path: str, no_dropout_model: str, tmp_path: Path, clean_project: Any
) -> None:
    import processing

    for stretch in (False, True):
        processing.runAndLoadResults(
            "mc_uncertainty:tta",
            {
                "INPUT": raster_path,
                "MODEL": no_dropout_model,
                "MODEL_INPUT_SHAPE": "64",
                "STEP_SHAPE": "32",
                "TTA_MODE": "flip",
                "STRETCH_UNCERTAINTY": stretch,
                "OUTPUT": str(tmp_path / f"tta_{stretch}.tif"),
            },
        )
    fixed = layer_named(clean_project, "scene — TTA uncertainty (entropy, flip)")
    stretched = layer_named(clean_project, "scene — TTA uncertainty (entropy, flip; colours stretched 2–98 %) #2")
    assert (fixed.renderer().classificationMin(), fixed.renderer().classificationMax()) == (
        0,
        pytest.approx(LN3, abs=1e-5),
    )
    dataset = gdal.Open(stretched.source())
    values = dataset.GetRasterBand(1).ReadAsArray().ravel()
    low, high = stretched.renderer().classificationMin(), stretched.renderer().classificationMax()
    assert low == pytest.approx(np.quantile(values, 0.02), abs=0.02 * LN3)
    assert high == pytest.approx(np.quantile(values, 0.98), abs=0.02 * LN3)
    assert 0 < low < high < LN3
    legend = stretched.renderer().shader().rasterShaderFunction().colorRampItemList()
    assert float(legend[0].label) == pytest.approx(low, rel=1e-2) and float(legend[-1].label) == pytest.approx(
        high, rel=1e-2
    )


def test_outputs_not_loaded_by_processing_run(run_mc_dropout: Any, tmp_path: Path, clean_project: Any) -> None:
    """processing.run (scripts, the Modeler) loads nothing: no post-processor touches the project."""
    context = QgsProcessingContext()
    context.setProject(clean_project)
    run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"), context=context)
    assert clean_project.mapLayers() == {} and clean_project.layerTreeRoot().children() == []


def _class_raster(path: Path, colors: list[tuple[int, int, int]] | None, names: list[str] | None) -> str:
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 4, 2, 1, gdal.GDT_Byte)
    dataset.SetGeoTransform((0, 1, 0, 0, 0, -1))
    dataset.SetMetadata({"MC_NUM_CLASSES": "4"})
    band = dataset.GetRasterBand(1)
    band.SetNoDataValue(255)
    band.WriteArray(np.array([[0, 1, 2, 3], [255, 255, 1, 0]], dtype=np.uint8))
    if colors:
        table = gdal.ColorTable()
        for index, rgb in enumerate(colors):
            table.SetColorEntry(index, (*rgb, 255))
        band.SetColorTable(table)
    if names:
        band.SetCategoryNames(names)
    dataset = None
    return str(path)


def test_class_palette_from_the_file_and_nodata_transparent(tmp_path: Path) -> None:
    path = _class_raster(
        tmp_path / "c.tif",
        [(210, 180, 140), (228, 26, 28), (115, 115, 115), (55, 126, 184)],
        ["background", "building", "road", "water"],
    )
    legend = read_class_legend(path)
    # 4 classes (MC_NUM_CLASSES), not the 256 entries of a GeoTIFF palette
    assert legend.names == ("background", "building", "road", "water")
    assert legend.colors == ("#d2b48c", "#e41a1c", "#737373", "#377eb8")
    layer = QgsRasterLayer(path, "classes")
    style_class_layer(layer, legend)
    assert [label for _v, _c, label in class_items(layer)] == list(legend.names)
    image = layer.renderer().block(1, layer.extent(), 4, 2).image()
    assert image.pixelColor(0, 1).alpha() == 0 and image.pixelColor(1, 1).alpha() == 0  # 255: nodata, transparent
    assert image.pixelColor(1, 0).name() == "#e41a1c" and image.pixelColor(1, 0).alpha() == 255


def test_default_palette_without_colours_or_names(tmp_path: Path) -> None:
    legend = read_class_legend(_class_raster(tmp_path / "plain.tif", None, None))
    assert legend.names == ("class 0", "class 1", "class 2", "class 3")
    assert legend.colors == DEFAULT_CLASS_COLORS[:4] and not legend.from_config
    colors = [default_class_color(index) for index in range(40)]
    assert len(set(colors)) == 40 and all(len(color) == 7 and color.startswith("#") for color in colors)

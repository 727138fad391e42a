"""SCHEDULER and BLOCK_SIZE as QGIS users meet them: a qgis_process run on a local Dask cluster, its VRT outputs
carrying what the styling reads, and the parameters' errors."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
from osgeo import gdal
from qgis.core import (
    QgsPalettedRasterRenderer,
    QgsProcessingException,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
)
from test_qgis_process_robustness import QGIS_PROCESS, deployed  # noqa: F401  (the module's fixture)

from mc_uncertainty_plugin.map_layers.result_layers import CLASSES, UNCERTAINTY, style_result_layer

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample"


@pytest.mark.slow
@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_runs_blocks_on_a_local_cluster_and_the_vrts_are_styled(deployed: dict, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "classes.vrt"
    run = subprocess.run(
        [
            QGIS_PROCESS,
            "run",
            "mc_uncertainty:mc_dropout",
            "--json",
            "--",
            f"INPUT={SAMPLE / 'sample.tif'}",
            f"MODEL={SAMPLE / 'model.yaml'}",
            "N_SAMPLES=2",
            "MODEL_INPUT_SHAPE=256,256",
            "STEP_SHAPE=128,128",
            "SCHEDULER=local:2",
            "BLOCK_SIZE=256",
            f"OUTPUT={out}",
        ],
        env=deployed,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(run.stdout)["results"]
    assert results["OUTPUT"] == str(out)
    assert results["OUTPUT_UNCERTAINTY"] == str(tmp_path / "classes_mc_uncertainty.vrt")
    assert sorted(p.name for p in (tmp_path / "classes_blocks").glob("*_classes_r*_c*.tif")) != []
    info = gdal.Info(results["OUTPUT_UNCERTAINTY"], format="json")
    assert float(info["metadata"][""]["MC_UNCERTAINTY_MAX"]) == pytest.approx(math.log(5), abs=1e-6)
    classes = gdal.Info(str(out), format="json")["bands"][0]
    assert classes["categories"] == ["background", "building", "road", "water", "vegetation"]
    assert gdal.Open(str(out)).ReadAsArray().shape == (512, 512)
    assert not list(tmp_path.rglob("*.partial*"))

    uncertainty_layer = QgsRasterLayer(results["OUTPUT_UNCERTAINTY"], "u", "gdal")
    style_result_layer(uncertainty_layer, UNCERTAINTY)
    renderer = uncertainty_layer.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    assert renderer.classificationMax() == pytest.approx(math.log(5), abs=1e-5)
    class_layer = QgsRasterLayer(str(out), "c", "gdal")
    style_result_layer(class_layer, CLASSES)
    assert isinstance(class_layer.renderer(), QgsPalettedRasterRenderer)
    assert [c.label for c in class_layer.renderer().classes()][:2] == ["background", "building"]


@pytest.mark.parametrize(
    "parameters,message",
    [
        ({"SCHEDULER": "local:zero"}, "SCHEDULER must"),
        ({"SCHEDULER": "local:2", "BLOCK_SIZE": "2.5"}, "BLOCK_SIZE must"),
        ({"OUTPUT": "classes.vrt"}, "OUTPUT must end in .tif or .tiff"),  # a VRT needs a scheduler
    ],
)
def test_bad_scale_out_settings_are_named(run_mc_dropout: Any, tmp_path: Path, parameters: dict, message: str) -> None:
    values = {"OUTPUT": str(tmp_path / "c.tif"), **parameters}
    if not Path(values["OUTPUT"]).is_absolute():
        values["OUTPUT"] = str(tmp_path / values["OUTPUT"])
    with pytest.raises(QgsProcessingException, match=message):
        run_mc_dropout(**values)
    assert sorted(p.name for p in tmp_path.iterdir()) == []

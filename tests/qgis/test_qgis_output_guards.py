"""Every algorithm refuses outputs that are (part of) its inputs, compared by real file identity."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException


@pytest.fixture
def mosaic(raster_path: str, tmp_path: Path) -> tuple[str, Path]:
    """A VRT over a copy of the test raster, and that copy (a source the VRT reads)."""
    source = tmp_path / "source.tif"
    source.write_bytes(Path(raster_path).read_bytes())
    vrt = str(tmp_path / "mosaic.vrt")
    gdal.BuildVRT(vrt, [str(source)]).FlushCache()
    return vrt, source


@pytest.mark.parametrize("algorithm", ["mc_uncertainty:mc_dropout", "mc_uncertainty:tta"])
def test_segmentation_refuses_to_overwrite_a_source_of_a_vrt_input(
    mc_plugin: Any, mosaic, torchscript_model, algorithm, tmp_path
):
    import processing

    vrt, source = mosaic
    before = source.read_bytes()
    with pytest.raises(QgsProcessingException, match="OUTPUT must differ from INPUT"):
        processing.run(
            algorithm,
            {
                "INPUT": vrt,
                "MODEL": torchscript_model,
                "OUTPUT": str(source),
                "MODEL_INPUT_SHAPE": "64",
                "STEP_SHAPE": "64",
                "TTA_MODE": "none",
            },
        )
    assert source.read_bytes() == before
    alias = tmp_path / "alias.tif"
    os.link(source, alias)  # a hard link to the source: the same file under another name
    with pytest.raises(QgsProcessingException, match="OUTPUT_UNCERTAINTY must differ from INPUT"):
        processing.run(
            algorithm,
            {
                "INPUT": vrt,
                "MODEL": torchscript_model,
                "OUTPUT": str(tmp_path / "c.tif"),
                "OUTPUT_UNCERTAINTY": str(alias),
                "MODEL_INPUT_SHAPE": "64",
                "STEP_SHAPE": "64",
                "TTA_MODE": "none",
            },
        )
    assert source.read_bytes() == before and not (tmp_path / "c.tif").exists()


def test_evaluate_refuses_to_write_its_report_over_an_input(mc_plugin: Any, run_mc_dropout, tmp_path):
    import processing

    outputs = run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"))
    classes = Path(outputs["OUTPUT"])
    before = classes.read_bytes()
    with pytest.raises(QgsProcessingException, match="OUTPUT_HTML must differ from CLASSES"):
        processing.run(
            "mc_uncertainty:evaluate",
            {
                "CLASSES": str(classes),
                "UNCERTAINTY": outputs["OUTPUT_UNCERTAINTY"],
                "REFERENCE": str(classes),
                "OUTPUT_HTML": str(classes),
                "OUTPUT_PNG": str(tmp_path / "r.png"),
                "OUTPUT_JSON": str(tmp_path / "r.json"),
            },
        )
    assert classes.read_bytes() == before
    assert not (tmp_path / "r.png").exists() and not (tmp_path / "r.json").exists()

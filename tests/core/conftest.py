"""Fixtures of the pure-core tests (no qgis). Helpers and tiny models live in ``core_fixtures.py``."""

from pathlib import Path

import pytest
from core_fixtures import random_image, write_geotiff
from distributed_fixtures import make_scene


@pytest.fixture
def rgb_raster(tmp_path: Path) -> str:
    """A 3-band uint8 GeoTIFF, 110 x 90 pixels, EPSG:32633."""
    folder = tmp_path / "input"
    folder.mkdir()
    return write_geotiff(folder / "scene.tif", random_image((90, 110)))


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """The block tests' scene (``distributed_fixtures``), with its in-process reference run made once."""
    return make_scene(tmp_path_factory.mktemp("scene"))

"""Fixtures of the pure-core tests (no qgis). Helpers and tiny models live in ``core_fixtures.py``."""

from pathlib import Path

import pytest
from core_fixtures import random_image, write_geotiff


@pytest.fixture
def rgb_raster(tmp_path: Path) -> str:
    """A 3-band uint8 GeoTIFF, 110 x 90 pixels, EPSG:32633."""
    folder = tmp_path / "input"
    folder.mkdir()
    return write_geotiff(folder / "scene.tif", random_image((90, 110)))

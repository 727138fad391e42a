"""The review figure of the demo and the README (resources/tools/review_preview.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from core_fixtures import random_image, write_geotiff
from osgeo import gdal

from mc_uncertainty_plugin.core.review.regions import ReviewConfig
from mc_uncertainty_plugin.core.review.vector import review_regions_to_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources" / "tools"))


@pytest.mark.parametrize("geotransform", [(500000.0, 0.5, 0.0, 4100000.0, 0.0, -0.5), None])
def test_patches_come_back_to_their_pixels_and_are_drawn(tmp_path: Path, geotransform) -> None:
    pytest.importorskip("matplotlib")
    from review_preview import read_patches, write_review_preview

    u = np.random.default_rng(0).random((90, 120)).astype(np.float32)
    u[10:30, 70:90] += 2.0
    kwargs = {"geotransform": geotransform} if geotransform else {"geotransform": None, "epsg": None}
    image = write_geotiff(tmp_path / "in.tif", random_image((90, 120)), **kwargs)
    uncertainty = write_geotiff(tmp_path / "u.tif", u, **kwargs)
    result, review = review_regions_to_file(
        ReviewConfig(uncertainty, patch_size=20, count=4, stride=5), str(tmp_path / "review.gpkg")
    )
    patches = read_patches(review, gdal.Open(uncertainty))
    assert [rank for rank, _, _ in patches] == [1, 2, 3, 4]
    for (_rank, pixels, fields), patch in zip(patches, result.patches):
        assert np.allclose(pixels[0], (patch.col, patch.row)) and np.allclose(
            pixels[2], (patch.col + 20, patch.row + 20)
        )
        assert fields["mean_uncertainty"] == patch.mean_uncertainty
    assert (patches[0][1][0] == (70, 10)).all()
    png = write_review_preview(image, uncertainty, review, tmp_path / "review.png", num_classes=5)
    data = Path(png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image

    small = write_review_preview(image, uncertainty, review, tmp_path / "small.png", palette=True)
    with Image.open(small) as indexed:
        assert indexed.mode == "P"

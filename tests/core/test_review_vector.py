"""The regions to review as a vector file: fields, polygons through the geotransform, formats, crash safety."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from core_fixtures import GEOTRANSFORM, write_geotiff
from osgeo import gdal, ogr, osr

from mc_uncertainty_plugin.core.errors import ParameterError, RasterIOError, ReviewCancelled
from mc_uncertainty_plugin.core.io.output_files import host_tag
from mc_uncertainty_plugin.core.review import vector as review_vector
from mc_uncertainty_plugin.core.review.regions import ReviewConfig
from mc_uncertainty_plugin.core.review.vector import review_regions_to_file


def _hot_raster(tmp_path: Path, **kwargs) -> str:
    """60 x 80 px, two hot squares: (40, 8) hotter than (8, 32), both 16 px."""
    u = np.zeros((60, 80), np.float32)
    u[8:24, 40:56] = 2.0
    u[32:48, 8:24] = 1.0
    return write_geotiff(tmp_path / "u.tif", u, **kwargs)


@dataclass
class Written:
    """What a vector file holds, read with OGR and closed again (OGR objects must not outlive their file)."""

    name: str
    geometry_type: int
    fields: list[str]
    srs_wkt: str | None
    fids: list[int]
    rows: list[dict]
    corners: list[list[tuple[float, float]]]


def _read(path: str) -> Written:
    dataset = ogr.Open(path)
    assert dataset is not None and dataset.GetLayerCount() == 1
    layer = dataset.GetLayer(0)
    definition = layer.GetLayerDefn()
    srs = layer.GetSpatialRef()
    written = Written(
        layer.GetName(),
        layer.GetGeomType(),
        [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())],
        srs.ExportToWkt() if srs is not None else None,
        [],
        [],
        [],
    )
    for feature in layer:
        written.fids.append(feature.GetFID())
        written.rows.append(feature.items())
        ring = feature.GetGeometryRef().GetGeometryRef(0)
        written.corners.append([tuple(point) for point in ring.GetPoints()])
        feature = None
    layer = None
    dataset = None
    return written


def test_geopackage_holds_ranked_polygons_in_the_raster_crs(tmp_path: Path) -> None:
    u_path = _hot_raster(tmp_path)
    classes = write_geotiff(tmp_path / "c.tif", np.full((60, 80), 3, np.uint8))
    result, path = review_regions_to_file(
        ReviewConfig(u_path, classes, patch_size=16, count=2, stride=8), str(tmp_path / "review.gpkg")
    )
    assert path == str(tmp_path / "review.gpkg")
    written = _read(path)
    assert written.name == "review"
    assert written.geometry_type == ogr.wkbPolygon
    assert written.fields == ["rank", "mean_uncertainty", "max_uncertainty", "valid_fraction", "dominant_class"]
    assert written.rows == [
        {"rank": 1, "mean_uncertainty": 2.0, "max_uncertainty": 2.0, "valid_fraction": 1.0, "dominant_class": 3},
        {"rank": 2, "mean_uncertainty": 1.0, "max_uncertainty": 1.0, "valid_fraction": 1.0, "dominant_class": 3},
    ]
    assert written.fids == [1, 2]
    x0, dx, _, y0, _, dy = GEOTRANSFORM
    assert written.corners[0] == [
        (x0 + 40 * dx, y0 + 8 * dy),
        (x0 + 56 * dx, y0 + 8 * dy),
        (x0 + 56 * dx, y0 + 24 * dy),
        (x0 + 40 * dx, y0 + 24 * dy),
        (x0 + 40 * dx, y0 + 8 * dy),
    ]
    expected = osr.SpatialReference()
    expected.ImportFromEPSG(32633)
    actual = osr.SpatialReference()
    actual.ImportFromWkt(written.srs_wkt)
    assert actual.IsSame(expected)
    assert [p.rank for p in result.patches] == [1, 2]


def test_rotated_and_ungeoreferenced_rasters(tmp_path: Path) -> None:
    rotated = (1000.0, 2.0, 0.5, 5000.0, 0.25, -2.0)
    folder = tmp_path / "rotated"
    folder.mkdir()
    _, path = review_regions_to_file(
        ReviewConfig(_hot_raster(folder, geotransform=rotated), patch_size=16, count=1), str(folder / "r.geojson")
    )
    written = _read(path)
    g = rotated
    corners = [(40, 8), (56, 8), (56, 24), (40, 24), (40, 8)]
    expected = [(g[0] + c * g[1] + r * g[2], g[3] + c * g[4] + r * g[5]) for c, r in corners]
    assert np.allclose(written.corners[0], expected, rtol=0.0, atol=1e-9)
    assert "dominant_class" not in written.fields  # no class raster, no field

    folder = tmp_path / "plain"
    folder.mkdir()
    _, path = review_regions_to_file(
        ReviewConfig(_hot_raster(folder, geotransform=None, epsg=None), patch_size=16, count=1), str(folder / "p.fgb")
    )
    written = _read(path)
    assert written.corners[0] == [(40.0, -8.0), (56.0, -8.0), (56.0, -24.0), (40.0, -24.0), (40.0, -8.0)]
    assert written.srs_wkt is None


@pytest.mark.parametrize("extension", [".gpkg", ".geojson", ".fgb"])
def test_every_format_keeps_the_rank_order(tmp_path: Path, extension: str) -> None:
    rng = np.random.default_rng(1)
    u_path = write_geotiff(tmp_path / "u.tif", rng.random((200, 200)).astype(np.float32))
    _, path = review_regions_to_file(ReviewConfig(u_path, patch_size=16, count=12), str(tmp_path / f"o{extension}"))
    rows = _read(path).rows
    assert [row["rank"] for row in rows] == list(range(1, 13))
    means = [row["mean_uncertainty"] for row in rows]
    assert means == sorted(means, reverse=True)


def test_no_eligible_patch_gives_an_empty_layer(tmp_path: Path) -> None:
    u_path = write_geotiff(tmp_path / "u.tif", np.full((40, 40), -1.0, np.float32), nodata=-1.0)
    result, path = review_regions_to_file(ReviewConfig(u_path, patch_size=16), str(tmp_path / "empty.gpkg"))
    assert result.patches == () and result.eligible == 0
    assert _read(path).rows == []


def test_bad_outputs_are_refused_before_reading(tmp_path: Path) -> None:
    u_path = _hot_raster(tmp_path)
    classes = write_geotiff(tmp_path / "c.gpkg", np.zeros((60, 80), np.uint8))  # a GeoTIFF named .gpkg
    with pytest.raises(ParameterError, match="^OUTPUT must differ from UNCERTAINTY"):
        review_regions_to_file(ReviewConfig(u_path), u_path)
    with pytest.raises(ParameterError, match="^OUTPUT must differ from CLASSES"):
        review_regions_to_file(ReviewConfig(u_path, classes), str(tmp_path / "." / "c.gpkg"))
    vrt = str(tmp_path / "u.vrt")
    gdal.Translate(vrt, u_path, format="VRT")
    with pytest.raises(ParameterError, match="^OUTPUT must differ from UNCERTAINTY and the files it reads"):
        review_regions_to_file(ReviewConfig(vrt), str(tmp_path / "u.tif"))  # the file behind the VRT
    os.remove(vrt)
    with pytest.raises(ParameterError, match=r"^OUTPUT must end in \.gpkg or \.geojson or \.json or \.fgb.*\.shp"):
        review_regions_to_file(ReviewConfig(u_path), str(tmp_path / "r.shp"))
    with pytest.raises(ParameterError, match="^OUTPUT must be in an existing folder"):
        review_regions_to_file(ReviewConfig(u_path), str(tmp_path / "nowhere" / "r.gpkg"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.gpkg", "u.tif"]


def test_a_failed_or_cancelled_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    u_path = _hot_raster(tmp_path)
    output = tmp_path / "review.gpkg"
    real_fill = review_vector._fill

    def failing_fill(dataset, result, name, driver):
        real_fill(dataset, result, name, driver)  # everything written, then the disk fills up
        raise RasterIOError("disk full (test)")

    monkeypatch.setattr(review_vector, "_fill", failing_fill)
    with pytest.raises(RasterIOError, match="disk full"):
        review_regions_to_file(ReviewConfig(u_path, patch_size=16), str(output))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.tif"]
    monkeypatch.undo()
    with pytest.raises(ReviewCancelled):
        review_regions_to_file(ReviewConfig(u_path, patch_size=16), str(output), is_cancelled=lambda: True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.tif"]
    seen: list[float] = []
    review_regions_to_file(ReviewConfig(u_path, patch_size=16), str(output), progress=seen.append)
    assert seen[-1] == 100.0 and output.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review.gpkg", "u.tif"]


def test_temporaries_of_dead_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = host_tag()
    stale = tmp_path / f".mcu-{here}-{int(dead.stdout)}-abcdef12.partial.gpkg"
    alive = tmp_path / f".mcu-{here}-{os.getpid()}-12abcdef.partial.gpkg"
    for path in (stale, alive):
        path.write_bytes(b"partial")
    review_regions_to_file(ReviewConfig(_hot_raster(tmp_path), patch_size=16), str(tmp_path / "review.gpkg"))
    assert not stale.exists()
    assert alive.exists()  # another run of this very process may still be writing it

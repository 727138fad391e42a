"""The regions to review as a vector file: one polygon per patch, in the raster's CRS, written crash-safe.

Formats, by the output's extension: ``.gpkg`` (GeoPackage, the default), ``.geojson`` / ``.json`` (GeoJSON),
``.fgb`` (FlatGeobuf). Shapefiles are refused: their 10-character field names would cut ``mean_uncertainty``.

One layer, named after the file's stem, polygon geometries, features in rank order (in a GeoPackage the feature
id equals the rank), fields:

============================  =========  =========================================================================
field                         type       meaning
============================  =========  =========================================================================
``rank``                      integer    1 = the most uncertain patch
``mean_uncertainty``          real       mean of the valid pixels' uncertainty
``max_uncertainty``           real       their maximum
``valid_fraction``            real       valid pixels / pixels of the patch
``dominant_class``            integer    most frequent class (only with a class raster; empty when none is valid)
============================  =========  =========================================================================

A patch's polygon is its four pixel corners through the raster's geotransform
``(X, Y) = (g0 + col * g1 + row * g2, g3 + col * g4 + row * g5)``, so rotated (non north-up) rasters give
rotated squares. A raster without georeferencing gets ``(0, 1, 0, 0, 0, -1)`` (x = column, y = -row), as QGIS
draws it.

The output is checked before any pixel is read (not an input file, nor one a VRT input reads; an existing,
writable folder), then written under a hidden temporary name in its folder
(``.mcu-{host}-{pid}-{random}.partial{extension}``) and renamed onto the output only when complete, so a crash
never leaves a file that looks finished; temporaries of runs that died are removed by the next run. Both follow
the rules of :mod:`mc_uncertainty_plugin.core.io.output_files`, as the rasters and reports do.
"""

from __future__ import annotations

import os
from typing import Callable

from osgeo import gdal, ogr, osr

from ..errors import ParameterError, RasterIOError, ReviewCancelled
from ..io.output_files import check_extension, check_outputs, publish_together, remove_stale_temporaries, temporary_path
from .regions import ReviewConfig, ReviewPatch, ReviewResult, find_review_regions

__all__ = ["VECTOR_DRIVERS", "RANK_COLORS", "check_output", "write_review_layer", "review_regions_to_file"]

VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}
# Outline colours from rank 1 to the last rank (QGIS style and previews): they stand out on viridis.
RANK_COLORS = ("#ff1f1f", "#ff4fd8", "#ffffff")
# FlatGeobuf would otherwise reorder the features along its spatial index.
_LAYER_OPTIONS = {"FlatGeobuf": ["SPATIAL_INDEX=NO"]}
_UNGEOREFERENCED = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
_SQLITE_SIDE_FILES = ("", "-journal", "-wal", "-shm")  # what a failed GeoPackage write may leave


def check_output(path: str, inputs: dict[str, str | None]) -> str:
    """The absolute output path, after checking its extension, its folder and that no input reads it.

    Raises:
        ParameterError: the same file as an input or a file it reads (named by the input's key), an unsupported
            extension, an existing folder, a missing or read-only folder.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ParameterError("OUTPUT", path, "be a file path")
    path = check_outputs({"OUTPUT": os.fspath(path)}, rasters=inputs)["OUTPUT"]
    check_extension("OUTPUT", path, tuple(VECTOR_DRIVERS))
    return path


def _spatial_reference(wkt: str) -> osr.SpatialReference | None:
    if not wkt:
        return None
    srs = osr.SpatialReference()
    if srs.ImportFromWkt(wkt) != 0:
        return None
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _polygon(patch: ReviewPatch, gt: tuple[float, ...]) -> ogr.Geometry:
    ring = ogr.Geometry(ogr.wkbLinearRing)
    corners = (
        (patch.col, patch.row),
        (patch.col + patch.width, patch.row),
        (patch.col + patch.width, patch.row + patch.height),
        (patch.col, patch.row + patch.height),
    )
    for col, row in corners + corners[:1]:
        ring.AddPoint_2D(gt[0] + col * gt[1] + row * gt[2], gt[3] + col * gt[4] + row * gt[5])
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def _fill(dataset: gdal.Dataset, result: ReviewResult, layer_name: str, driver: str) -> None:
    layer = dataset.CreateLayer(
        layer_name, _spatial_reference(result.projection), ogr.wkbPolygon, options=_LAYER_OPTIONS.get(driver, [])
    )
    if layer is None:
        raise RasterIOError(f"cannot create the layer: {gdal.GetLastErrorMsg()}.")
    fields = [
        ("rank", ogr.OFTInteger),
        ("mean_uncertainty", ogr.OFTReal),
        ("max_uncertainty", ogr.OFTReal),
        ("valid_fraction", ogr.OFTReal),
    ]
    if result.has_classes:
        fields.append(("dominant_class", ogr.OFTInteger))
    for name, kind in fields:
        if layer.CreateField(ogr.FieldDefn(name, kind)) != 0:
            raise RasterIOError(f"cannot create the field {name}: {gdal.GetLastErrorMsg()}.")
    gt = result.geotransform or _UNGEOREFERENCED
    layer.StartTransaction()
    for patch in result.patches:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("rank", patch.rank)
        feature.SetField("mean_uncertainty", patch.mean_uncertainty)
        feature.SetField("max_uncertainty", patch.max_uncertainty)
        feature.SetField("valid_fraction", patch.valid_fraction)
        if result.has_classes and patch.dominant_class is not None:
            feature.SetField("dominant_class", patch.dominant_class)
        feature.SetGeometry(_polygon(patch, gt))
        if layer.CreateFeature(feature) != 0:
            raise RasterIOError(f"cannot write patch {patch.rank}: {gdal.GetLastErrorMsg()}.")
    if layer.CommitTransaction() != 0:
        raise RasterIOError(f"cannot commit the patches: {gdal.GetLastErrorMsg()}.")


def write_review_layer(result: ReviewResult, path: str) -> str:
    """Write ``result`` as a vector file (format from the extension); an existing file is replaced.

    Returns:
        The absolute path written.

    Raises:
        ParameterError: the extension is not supported or the folder does not exist.
        RasterIOError: GDAL failed to write (nothing is left at ``path``; an earlier file there is kept).
    """
    path = check_output(path, {})
    remove_stale_temporaries(os.path.dirname(path))
    extension = os.path.splitext(path)[1]
    driver_name = VECTOR_DRIVERS[extension.lower()]
    temporary = temporary_path(path) + extension  # drivers such as FlatGeobuf go by the extension
    dataset = None
    try:
        driver = ogr.GetDriverByName(driver_name)
        dataset = driver.CreateDataSource(temporary) if driver is not None else None
        if dataset is None:
            raise RasterIOError(f"cannot create '{path}': {gdal.GetLastErrorMsg() or 'no GDAL driver'}.")
        _fill(dataset, result, os.path.splitext(os.path.basename(path))[0], driver_name)
        dataset.FlushCache()
        dataset = None  # closes the file
        publish_together([(temporary, path)])
    except RuntimeError as error:  # GDAL with exceptions on
        raise RasterIOError(f"cannot write '{path}': {error}.") from None
    except OSError as error:
        raise RasterIOError(f"cannot write '{path}': {error}.") from None
    finally:
        dataset = None
        for suffix in _SQLITE_SIDE_FILES:
            if os.path.exists(temporary + suffix):
                os.remove(temporary + suffix)
    return path


def review_regions_to_file(
    config: ReviewConfig,
    output_path: str,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> tuple[ReviewResult, str]:
    """Find the regions to review (:func:`~.regions.find_review_regions`, 95 % of ``progress``) and write
    them to ``output_path``.

    Returns:
        The result and the absolute path written.

    Raises:
        ParameterError: bad settings or inputs, or OUTPUT is an input file or has an unsupported extension
            (checked before reading any pixel).
        RasterIOError, ReviewCancelled: as reading and writing raise them; no output is left then.
    """
    path = check_output(output_path, {"UNCERTAINTY": config.uncertainty_path, "CLASSES": config.classes_path})
    scaled = (lambda percent: progress(0.95 * percent)) if progress is not None else None
    result = find_review_regions(config, progress=scaled, is_cancelled=is_cancelled)
    if is_cancelled is not None and is_cancelled():
        raise ReviewCancelled("The search for regions to review was cancelled.")
    written = write_review_layer(result, path)
    if progress is not None:
        progress(100.0)
    return result, written

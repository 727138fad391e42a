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

The file is written under a hidden temporary name in the output's folder
(``.{name}.{pid}-{id}.partial{extension}``) and renamed onto the output only when complete, so a crash never
leaves a file that looks finished; temporaries of runs that died are removed by the next run.
"""

from __future__ import annotations

import glob
import os
import re
import uuid
from typing import Callable

from osgeo import gdal, ogr, osr

from .errors import InferenceCancelled, ParameterError, RasterIOError
from .review_regions import ReviewConfig, ReviewPatch, ReviewResult, find_review_regions

__all__ = ["VECTOR_DRIVERS", "RANK_COLORS", "write_review_layer", "review_regions_to_file"]

VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}
# Outline colours from rank 1 to the last rank (QGIS style and previews): they stand out on viridis.
RANK_COLORS = ("#ff1f1f", "#ff4fd8", "#ffffff")
# FlatGeobuf would otherwise reorder the features along its spatial index.
_LAYER_OPTIONS = {"FlatGeobuf": ["SPATIAL_INDEX=NO"]}
_UNGEOREFERENCED = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
_SQLITE_SIDE_FILES = ("", "-journal", "-wal", "-shm")


def _driver_name(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if extension not in VECTOR_DRIVERS:
        raise ParameterError("OUTPUT", path, "end in .gpkg, .geojson, .json or .fgb")
    return VECTOR_DRIVERS[extension]


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str, inputs: dict[str, str | None]) -> str:
    """The absolute output path, after checking its extension, its folder and that it is no input file.

    Raises:
        ParameterError: a bad extension, a missing folder, or the same file as an input (named by its key).
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ParameterError("OUTPUT", path, "be a file path")
    path = os.path.abspath(str(path))
    for key, source in inputs.items():
        if source and _same_file(path, source):
            raise ParameterError("OUTPUT", path, f"be another file than {key}")
    _driver_name(path)
    if not os.path.isdir(os.path.dirname(path)):
        raise ParameterError("OUTPUT", path, "be in an existing folder")
    return path


def _remove_stale_temporaries(path: str) -> None:
    """Delete temporaries of ``path`` whose writing process is gone."""
    folder, name = os.path.split(path)
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)-[0-9a-f]+\.partial")
    for candidate in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.partial*")):
        match = pattern.match(os.path.basename(candidate))
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            try:
                os.remove(candidate)
            except OSError:
                pass
        except PermissionError:
            pass


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
    corners = ((patch.col, patch.row), (patch.col + patch.width, patch.row),
               (patch.col + patch.width, patch.row + patch.height), (patch.col, patch.row + patch.height))
    for col, row in corners + corners[:1]:
        ring.AddPoint_2D(gt[0] + col * gt[1] + row * gt[2], gt[3] + col * gt[4] + row * gt[5])
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def _fill(dataset: gdal.Dataset, result: ReviewResult, layer_name: str, driver: str) -> None:
    layer = dataset.CreateLayer(layer_name, _spatial_reference(result.projection), ogr.wkbPolygon,
                                options=_LAYER_OPTIONS.get(driver, []))
    if layer is None:
        raise RasterIOError(f"cannot create the layer: {gdal.GetLastErrorMsg()}.")
    fields = [("rank", ogr.OFTInteger), ("mean_uncertainty", ogr.OFTReal), ("max_uncertainty", ogr.OFTReal),
              ("valid_fraction", ogr.OFTReal)]
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
        RasterIOError: GDAL failed to write (nothing is left at ``path``).
    """
    path = check_output(path, {})
    _remove_stale_temporaries(path)
    folder, name = os.path.split(path)
    stem, extension = os.path.splitext(name)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.partial{extension}")
    try:
        driver_name = _driver_name(path)
        driver = ogr.GetDriverByName(driver_name)
        dataset = driver.CreateDataSource(temporary) if driver is not None else None
        if dataset is None:
            raise RasterIOError(f"cannot create '{path}': {gdal.GetLastErrorMsg() or 'no GDAL driver'}.")
        _fill(dataset, result, stem, driver_name)
        dataset.FlushCache()
        dataset = None  # closes the file
        os.replace(temporary, path)
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
    """Find the regions to review (:func:`~.review_regions.find_review_regions`, 95 % of ``progress``) and write
    them to ``output_path``.

    Returns:
        The result and the absolute path written.

    Raises:
        ParameterError: bad settings or inputs, or OUTPUT is an input file or has an unsupported extension
            (checked before reading any pixel).
        RasterIOError, InferenceCancelled: as reading and writing raise them; no output is left then.
    """
    path = check_output(output_path, {"UNCERTAINTY": config.uncertainty_path, "CLASSES": config.classes_path})
    scaled = (lambda percent: progress(0.95 * percent)) if progress is not None else None
    result = find_review_regions(config, progress=scaled, is_cancelled=is_cancelled)
    if is_cancelled is not None and is_cancelled():
        raise InferenceCancelled("The search for regions to review was cancelled.")
    written = write_review_layer(result, path)
    if progress is not None:
        progress(100.0)
    return result, written

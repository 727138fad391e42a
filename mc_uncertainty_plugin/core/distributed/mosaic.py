"""The finished blocks as the job's outputs: a VRT per output, or one assembled GeoTIFF; published together.

A VRT written here (not by ``gdalbuildvrt``, which drops them) carries what the GeoTIFF of a single-machine run
carries: the ``MC_*`` metadata, the band description, nodata, and for the class raster its colour table and class
names, so the result styles as a GeoTIFF would (the uncertainty scale reads ``MC_UNCERTAINTY_MAX``). Its sources
are the block files, by paths relative to the VRT (the output folder can move as a whole); a block that held no
valid pixel has no file, and the VRT reads nodata there. Each block file has its own overviews; the VRT's
overview levels are VRTs of those (in the block folder), so a viewer draws a country-wide mosaic from the blocks'
overviews (a level a small edge block lacks is decimated from its deepest one).

A ``.tif`` output is assembled from such a VRT (written in the block folder) by the writer of single-machine runs
(:class:`~..inference.output_set.OutputSet`): the same tiling, compression, metadata and overviews, computed from
the rows as they are written, so the assembled file holds the same pixels and overviews as the in-process run.

Nothing final appears before everything is written: VRTs and GeoTIFFs are written under temporary names and
renamed onto their final paths in one :func:`~..io.output_files.publish_together`.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from osgeo import gdal

from ..errors import InferenceCancelled, RasterIOError
from ..inference.merger import FinishedRows
from ..inference.output_set import OutputSet
from ..inference.plan import Georeference, OutputSpec, Region
from ..io.output_files import publish_together, temporary_path
from .job import BlockRecord, Job

__all__ = ["VrtSource", "overview_factors", "vrt_text", "publish_outputs", "ASSEMBLY_ROWS"]

ASSEMBLY_ROWS = 1024  # rows read from the mosaic at a time while assembling (x panel width x 4 bytes per output)
_VRT_TYPES = {"uint8": "Byte", "float32": "Float32"}


@dataclass(frozen=True)
class VrtSource:
    """One source band of a VRT: ``path`` (relative to the VRT) read whole, at full resolution or its overview
    ``overview`` (0 = factor 2), of ``size`` ``(height, width)``, placed at ``dst`` ``(row, col, height, width)``
    in the VRT's pixels (fractions allowed: GDAL resamples)."""

    path: str
    size: tuple[int, int]
    dst: tuple[float, float, float, float]
    overview: int | None = None


def overview_factors(width: int, height: int) -> list[int]:
    """The overview factors a GeoTIFF of this size gets from this plugin's writer: 2, 4, 8, ... while the
    overview keeps at least 32 pixels along the longer side."""
    factors, factor = [], 2
    while math.ceil(max(width, height) / factor) >= 32:
        factors.append(factor)
        factor *= 2
    return factors


def vrt_text(
    spec: OutputSpec,
    raster_shape: tuple[int, int],
    georeference: Georeference | None,
    sources: Iterable[VrtSource],
    overviews: Sequence[str] = (),
) -> str:
    """The XML of a VRT of ``raster_shape`` (height, width) made of ``sources``, described as ``spec`` (data type,
    nodata, band count and descriptions, metadata, colours, class names), with ``overviews``: VRT files of the
    overview levels, relative to this one. Band ``b`` of the VRT reads band ``b`` of every source."""
    height, width = raster_shape
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if georeference is not None:
        _add_georeference(root, georeference)
        if spec.metadata:
            items = ET.SubElement(root, "Metadata")
            for key, value in spec.metadata:
                ET.SubElement(items, "MDI", key=key).text = value
    sources = list(sources)
    for number in range(1, spec.bands + 1):
        band = ET.SubElement(root, "VRTRasterBand", dataType=_VRT_TYPES[spec.dtype], band=str(number))
        _describe_band(band, spec, number)
        for overview in overviews:
            element = ET.SubElement(band, "Overview")
            ET.SubElement(element, "SourceFilename", relativeToVRT="1").text = overview.replace(os.sep, "/")
            ET.SubElement(element, "SourceBand").text = str(number)
        for source in sources:
            _add_source(band, spec, source, number)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _describe_band(band: ET.Element, spec: OutputSpec, number: int) -> None:
    """Description, nodata, colours and class names of band ``number`` (1-based) of an output."""
    names = spec.band_descriptions
    description = names[number - 1] if names and number <= len(names) else spec.description
    if description:
        ET.SubElement(band, "Description").text = description
    ET.SubElement(band, "NoDataValue").text = repr(float(spec.nodata))
    if spec.color_table:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        for rgba in spec.color_table:
            ET.SubElement(table, "Entry", c1=str(rgba[0]), c2=str(rgba[1]), c3=str(rgba[2]), c4=str(rgba[3]))
    if spec.category_names:
        categories = ET.SubElement(band, "CategoryNames")
        for name in spec.category_names:
            ET.SubElement(categories, "Category").text = name


def _add_georeference(root: ET.Element, georeference: Georeference) -> None:
    if georeference.geotransform is not None:
        if georeference.projection:
            ET.SubElement(root, "SRS").text = georeference.projection
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in georeference.geotransform)
    elif georeference.gcps:
        gcps = ET.SubElement(root, "GCPList", Projection=georeference.gcp_projection)
        for index, (pixel, line, x, y, z) in enumerate(georeference.gcps, start=1):
            ET.SubElement(
                gcps, "GCP", Id=str(index), Pixel=repr(pixel), Line=repr(line), X=repr(x), Y=repr(y), Z=repr(z)
            )
    elif georeference.projection:
        ET.SubElement(root, "SRS").text = georeference.projection


def _add_source(band: ET.Element, spec: OutputSpec, source: VrtSource, number: int = 1) -> None:
    element = ET.SubElement(band, "SimpleSource")
    ET.SubElement(element, "SourceFilename", relativeToVRT="1").text = source.path.replace(os.sep, "/")
    if source.overview is not None:
        options = ET.SubElement(element, "OpenOptions")
        ET.SubElement(options, "OOI", key="OVERVIEW_LEVEL").text = str(source.overview)
    ET.SubElement(element, "SourceBand").text = str(number)
    height, width = source.size
    ET.SubElement(
        element,
        "SourceProperties",
        RasterXSize=str(width),
        RasterYSize=str(height),
        DataType=_VRT_TYPES[spec.dtype],
        BlockXSize="256",
        BlockYSize="256",
    )
    ET.SubElement(element, "SrcRect", xOff="0", yOff="0", xSize=str(width), ySize=str(height))
    row, col, dst_height, dst_width = (repr(v) if isinstance(v, float) else str(v) for v in source.dst)
    ET.SubElement(element, "DstRect", xOff=col, yOff=row, xSize=dst_width, ySize=dst_height)


def _level_source(path: str, region: Region, factor: int) -> VrtSource:
    """A block in the overview of ``factor``: its own overview of that factor when it has one, else its
    deepest one (or itself), which GDAL decimates."""
    own = overview_factors(region.width, region.height)
    if factor in own:
        size = (math.ceil(region.height / factor), math.ceil(region.width / factor))
        return VrtSource(path, size, (region.row // factor, region.col // factor) + size, own.index(factor))
    deepest = max((f for f in own if f < factor), default=1)
    size = (math.ceil(region.height / deepest), math.ceil(region.width / deepest))
    dst = (region.row / factor, region.col / factor, region.height / factor, region.width / factor)
    return VrtSource(path, size, dst, own.index(deepest) if deepest > 1 else None)


def _write_text(path: str, text: str) -> None:
    """Write ``path`` crash-safe (a temporary renamed when complete)."""
    temporary = temporary_path(path)
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _write_vrt(
    job: Job, key: str, records: Mapping[int, BlockRecord], vrt_path: str, temporary: str, with_overviews: bool
) -> None:
    """Write the VRT of output ``key`` (as if at ``vrt_path``) to the file ``temporary``; with its overview
    levels (VRTs of the blocks' overviews, in the block folder) when ``with_overviews``."""
    folder, blocks = os.path.dirname(vrt_path), job.block_folder(key)
    spec, (height, width) = job.spec(key), job.plan.raster_shape
    placed = [(record.region, record.files[key]) for _, record in sorted(records.items()) if key in record.files]
    overviews = []
    for factor in overview_factors(width, height) if with_overviews else []:
        level = os.path.join(blocks, f"{job.tag}_{spec.kind}_ovr{factor}.vrt")
        sources = [_level_source(name, region, factor) for region, name in placed]
        _write_text(level, vrt_text(spec, (math.ceil(height / factor), math.ceil(width / factor)), None, sources))
        overviews.append(os.path.relpath(level, folder))
    sources = [
        VrtSource(
            os.path.relpath(os.path.join(blocks, name), folder),
            (region.height, region.width),
            (region.row, region.col, region.height, region.width),
        )
        for region, name in placed
    ]
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(vrt_text(spec, job.plan.raster_shape, job.plan.georeference, sources, overviews))


def publish_outputs(
    job: Job,
    records: Mapping[int, BlockRecord],
    *,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> dict[str, str]:
    """Write every output of ``job`` from its finished blocks and publish them together.

    Args:
        job: the job; every block must have a record.
        records: block index -> record.
        progress: receives the fraction 0..1 of the assembly done (``.tif`` outputs).
        is_cancelled: polled while assembling; a cancel removes what was written (the blocks stay).

    Returns:
        Processing key -> final path.
    """
    written: list[str] = []  # temporaries to remove if anything fails
    moves: list[tuple[str | None, str]] = []
    assembled: OutputSet | None = None
    try:
        tif_specs = [spec for spec in job.plan.outputs if not spec.path.lower().endswith(".vrt")]
        sources: dict[str, str] = {}
        for spec in job.plan.outputs:
            final = (
                spec.path
                if spec.path.lower().endswith(".vrt")
                else os.path.join(job.block_folder(spec.key), f"{job.tag}_{spec.kind}.vrt")
            )
            temporary = temporary_path(final)
            written.append(temporary)
            _write_vrt(job, spec.key, records, final, temporary, with_overviews=spec not in tif_specs)
            if spec in tif_specs:
                sources[spec.key] = temporary  # a VRT under any name opens: GDAL reads its content
            else:
                moves += [(temporary, final), (None, final + ".aux.xml")]
        if tif_specs:
            assembled = _assemble(job, tif_specs, sources, progress, is_cancelled)
            moves += [move for writer in assembled.writers.values() for move in writer.moves()]
        publish_together(moves)
        if assembled is not None:
            for writer in assembled.writers.values():
                writer.done = True
    except BaseException:
        if assembled is not None:
            assembled.abort()
        raise
    finally:
        for temporary in written:
            if os.path.exists(temporary):
                os.remove(temporary)
    return {spec.key: spec.path for spec in job.plan.outputs}


def _assemble(
    job: Job,
    specs: list[OutputSpec],
    sources: Mapping[str, str],
    progress: Callable[[float], None] | None,
    is_cancelled: Callable[[], bool] | None,
) -> OutputSet:
    """Copy each mosaic into one GeoTIFF, panel by panel, top to bottom (the order of a single-machine run);
    returns the finished, unpublished outputs."""
    plan = job.plan
    height, width = plan.raster_shape
    stored = [replace(spec, scale=None) for spec in specs]  # the block files hold the stored (scaled) values
    outputs = OutputSet(stored, plan.whole, plan.georeference)
    try:
        mosaics = {spec.kind: _open_mosaic(sources[spec.key]) for spec in specs}
        panels = [(c0, min(c0 + plan.config.panel_width, width)) for c0 in range(0, width, plan.config.panel_width)]
        steps, done = len(panels) * -(-height // ASSEMBLY_ROWS), 0
        for c0, c1 in panels:
            for r0 in range(0, height, ASSEMBLY_ROWS):
                if is_cancelled is not None and is_cancelled():
                    raise InferenceCancelled("cancelled by the user while assembling; the finished blocks are kept.")
                rows = min(ASSEMBLY_ROWS, height - r0)
                data = {kind: _read(mosaic, c0, r0, c1 - c0, rows) for kind, mosaic in mosaics.items()}
                finished = FinishedRows(
                    r0,
                    c0,
                    data["classes"],
                    data.get("uncertainty"),
                    data.get("confidence"),
                    data.get("probabilities"),
                    data.get("confident"),
                )
                outputs.write(finished, flush=False)
                done += 1
                if progress is not None:
                    progress(done / steps)
            outputs.write(None, flush=True)
        mosaics.clear()
        outputs.finish()
    except BaseException:
        outputs.abort()
        raise
    return outputs


def _open_mosaic(path: str) -> gdal.Dataset:
    try:
        dataset = gdal.Open(path)
    except RuntimeError:
        dataset = None
    if dataset is None:
        raise RasterIOError(f"cannot open the mosaic of the blocks '{path}': {gdal.GetLastErrorMsg()}.")
    return dataset


def _read(dataset: gdal.Dataset, col: int, row: int, width: int, height: int) -> np.ndarray:
    """Rows of every band: ``(h, w)`` for one band, ``(bands, h, w)`` for several."""
    try:
        values = dataset.ReadAsArray(col, row, width, height)
    except RuntimeError:
        values = None
    if values is None:
        raise RasterIOError(f"reading the blocks at row {row}, column {col} failed: {gdal.GetLastErrorMsg()}.")
    return values

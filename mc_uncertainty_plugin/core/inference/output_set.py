"""The outputs of one run or region, as one object: open together, write rows, finish, publish or abort together."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from osgeo import gdal

from ..io.output_files import publish_together
from ..io.raster_io import GeoTiffWriter
from .merger import FinishedRows
from .plan import Georeference, OutputSpec, Region

__all__ = ["OutputSet", "encode"]


def encode(values: np.ndarray, spec: OutputSpec) -> np.ndarray:
    """``values`` as the file stores them: unchanged, or with ``spec.scale``, ``round(scale * v)`` in the spec's
    data type and ``spec.nodata`` where ``v`` is the float nodata (negative)."""
    if spec.scale is None:
        return values
    scaled = np.clip(np.floor(values * np.float32(spec.scale) + np.float32(0.5)), 0, spec.scale)
    return np.where(values < 0, spec.nodata, scaled).astype(spec.dtype)


class OutputSet:
    """The GeoTIFFs of a region (the whole raster for a plain run), each under a temporary name until published.

    Args:
        specs: what each output holds (:class:`~.plan.OutputSpec`).
        region: the pixels written; each file is region-sized, its georeference shifted to the region.
        georeference: the whole raster's.
        paths: Processing key -> final path, overriding ``spec.path`` (a region's own files).
        behind: write from a worker thread while the model runs (worth it when the model runs on a GPU; on the
            CPU the compression competes with the model for the same cores).

    Rows of the merger arrive in raster coordinates; :meth:`write` hands each output its field of them.
    Whatever fails or is cancelled, :meth:`abort` leaves nothing behind; :meth:`publish` renames every file in
    one all-or-nothing step.
    """

    def __init__(
        self,
        specs: Sequence[OutputSpec],
        region: Region,
        georeference: Georeference,
        paths: Mapping[str, str] | None = None,
        *,
        behind: bool = False,
    ) -> None:
        self.region = region
        self.writers: dict[str, GeoTiffWriter] = {}  # kind -> writer
        self.keys: dict[str, str] = {}  # kind -> Processing key
        self.specs: dict[str, OutputSpec] = {}  # kind -> spec
        placed = georeference.for_region(region)
        gcps = [gdal.GCP(x, y, z, p, line) for p, line, x, y, z in placed.gcps]
        try:
            for spec in specs:
                self.writers[spec.kind] = GeoTiffWriter(
                    (paths or {}).get(spec.key, spec.path),
                    region.width,
                    region.height,
                    np.dtype(spec.dtype),
                    spec.nodata,
                    placed.geotransform,
                    placed.projection,
                    description=spec.description,
                    metadata=dict(spec.metadata),
                    color_table=spec.color_table,
                    category_names=spec.category_names,
                    overview_resampling=spec.overview_resampling,
                    gcps=gcps,
                    gcp_projection=placed.gcp_projection,
                    bands=spec.bands,
                    band_descriptions=spec.band_descriptions,
                )
                self.keys[spec.kind] = spec.key
                self.specs[spec.kind] = spec
        except BaseException:
            self.abort()
            raise
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mc_uncertainty_write") if behind else None
        self._pending: Future[None] | None = None

    @property
    def paths(self) -> dict[str, str]:
        """Processing key -> final path."""
        return {self.keys[kind]: writer.path for kind, writer in self.writers.items()}

    @property
    def folders(self) -> list[str]:
        return list(dict.fromkeys(os.path.dirname(writer.path) for writer in self.writers.values()))

    def write(self, rows: FinishedRows | None, flush: bool) -> None:
        """Write finished rows (``flush``: the end of a column panel). Writing behind, this waits only for the
        previous write."""
        if self._pool is None:
            self._write(rows, flush)
            return
        self.wait()
        self._pending = self._pool.submit(self._write, rows, flush)

    def _write(self, rows: FinishedRows | None, flush: bool) -> None:
        if rows is not None:
            for kind, writer in self.writers.items():
                data = getattr(rows, kind)
                if data is not None:
                    data = encode(data, self.specs[kind])
                    writer.write(rows.row - self.region.row, rows.col - self.region.col, data)
        if flush:
            for writer in self.writers.values():
                writer.flush()

    def wait(self) -> None:
        """Wait for the write in flight, if any (its error surfaces here)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def finish(self) -> None:
        """Write what is buffered, build overviews and close every file (still under temporary names)."""
        self.wait()
        self._stop_pool()
        for writer in self.writers.values():
            writer.finish()

    def publish(self) -> dict[str, str]:
        """Rename every finished file onto its final path in one all-or-nothing step; returns key -> path."""
        self.finish()
        publish_together([move for writer in self.writers.values() for move in writer.moves()])
        for writer in self.writers.values():
            writer.done = True
        return self.paths

    def abort(self) -> None:
        """Delete every temporary file (no write may still run when its file goes); safe to call twice."""
        self._stop_pool()
        for writer in self.writers.values():
            writer.abort()

    def _stop_pool(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

"""The plan of a run: everything decided once for the whole input, so that any region computes as the whole.

:func:`plan_run` takes the whole-input steps, in this order:

1. resolve the bands (BANDS, else the first ``in_channels`` bands that are not alpha);
2. resolve and check the outputs (identities against the inputs and each other, extensions, folders);
3. probe the model on one tile (classes, whether the tile is accepted, the batch size);
4. warn about the input (no CRS, values outside the normalisation);
5. check the free space;
6. describe the outputs (data types, nodata, metadata, class names and colours; :mod:`.output_specs`).

A :class:`RunPlan` is plain data (no model, no open file): a region of it can run in another thread or process.
:func:`region_batches` lists the batches of windows a :class:`Region` needs: the windows of the *global* grid
that touch it, in the global order, in balanced batches.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..config import InferenceConfig
from ..errors import ModelLoadError, ParameterError
from ..io.output_files import check_extension, check_outputs
from ..io.raster_io import RasterReader
from ..models.loading import LoadedModel
from .device import auto_batch_size, check_tile_fits, gpu_batch_size
from .output_specs import UNCERTAINTY_DESCRIPTIONS, OutputOptions, OutputSpec, describe_outputs
from .sampler import select_segmentation_output
from .tiling import TileGrid, Window

__all__ = [
    "OUTPUT_EXTENSIONS",
    "UNCERTAINTY_DESCRIPTIONS",
    "Region",
    "Georeference",
    "OutputSpec",
    "OutputOptions",
    "describe_outputs",
    "RunPlan",
    "Batch",
    "plan_run",
    "region_batches",
    "balanced_split",
]

OUTPUT_EXTENSIONS = (".tif", ".tiff")


@dataclass(frozen=True)
class Region:
    """A rectangle of the raster in pixels: rows ``[row, row + height)``, columns ``[col, col + width)``."""

    row: int
    col: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        return self.row + self.height

    @property
    def col_end(self) -> int:
        return self.col + self.width


@dataclass(frozen=True)
class Georeference:
    """Where the raster lies: a geotransform and CRS, or ground control points ``(pixel, line, x, y, z)``."""

    geotransform: tuple[float, ...] | None
    projection: str
    gcps: tuple[tuple[float, float, float, float, float], ...] = ()
    gcp_projection: str = ""

    @classmethod
    def of(cls, reader: RasterReader) -> Georeference:
        gcps = tuple((g.GCPPixel, g.GCPLine, g.GCPX, g.GCPY, g.GCPZ) for g in reader.gcps)
        transform = tuple(reader.geotransform) if reader.geotransform is not None else None
        return cls(transform, reader.projection, gcps, reader.gcp_projection)

    def for_region(self, region: Region) -> Georeference:
        """The georeference of a region-sized raster whose pixel (0, 0) is the region's top-left pixel."""
        transform = self.geotransform
        if transform is not None:
            x0, dx, rx, y0, ry, dy = transform
            transform = (x0 + region.col * dx + region.row * rx, dx, rx, y0 + region.col * ry + region.row * dy, ry, dy)
        gcps = tuple((p - region.col, line - region.row, x, y, z) for p, line, x, y, z in self.gcps)
        return Georeference(transform, self.projection, gcps, self.gcp_projection)


@dataclass(frozen=True)
class RunPlan:
    """Everything a region of the run needs besides the model (see the module docstring)."""

    input_path: str
    raster_shape: tuple[int, int]  # (height, width)
    bands: tuple[int, ...]
    georeference: Georeference
    config: InferenceConfig
    num_classes: int
    batch_size: int
    outputs: tuple[OutputSpec, ...]
    notes: tuple[str, ...] = field(default=())  # how the batch size was chosen

    @property
    def grid(self) -> TileGrid:
        return TileGrid(self.raster_shape, self.config.model_input_shape, self.config.step_shape)

    @property
    def whole(self) -> Region:
        return Region(0, 0, self.raster_shape[0], self.raster_shape[1])

    def output_paths(self) -> dict[str, str]:
        return {spec.key: spec.path for spec in self.outputs}

    def writes(self, kind: str) -> OutputSpec | None:
        """The output of ``kind`` (``uncertainty``, ``confident`` ...), or None when the run does not write it."""
        return next((spec for spec in self.outputs if spec.kind == kind), None)

    @property
    def needs_uncertainty(self) -> bool:
        """Whether the uncertainty is computed: written, or needed for the confident classes."""
        return any(spec.kind in ("uncertainty", "confident") for spec in self.outputs)


@dataclass(frozen=True)
class Batch:
    """Windows of one grid row inside one column panel ``cols`` of a region, run in one forward pass."""

    panel: int
    cols: tuple[int, int]
    grid_row: int
    windows: tuple[Window, ...]


def balanced_split(items: Sequence[Any], cap: int) -> list[tuple[Any, ...]]:
    """``items`` in order, cut into the fewest parts of at most ``cap``, as equal as possible: never a part of one
    item beside bigger ones (a tile alone in a batch runs other CPU kernels than in a batch of two or more)."""
    count = len(items)
    if count == 0:
        return []
    parts = math.ceil(count / max(1, cap))
    base, extra = divmod(count, parts)
    out, start = [], 0
    for index in range(parts):
        size = base + (1 if index < extra else 0)
        out.append(tuple(items[start : start + size]))
        start += size
    return out


def region_batches(grid: TileGrid, region: Region, panel_width: int, batch_size: int) -> list[Batch]:
    """The batches that compute ``region``: every window of ``grid`` that touches it, panel by panel (at most
    ``panel_width`` columns), grid row by grid row, in column order."""
    batches = []
    panels = [(c0, min(c0 + panel_width, region.col_end)) for c0 in range(region.col, region.col_end, panel_width)]
    for p, cols in enumerate(panels):
        for i, start in enumerate(grid.row_starts):
            if start >= region.row_end or start + grid.window_height <= region.row:
                continue
            for part in balanced_split(grid.windows_in_row(i, cols), batch_size):
                batches.append(Batch(p, cols, i, part))
    return batches


# -- the planning steps ---------------------------------------------------------------------------------------
def resolve_bands(reader: RasterReader, model: LoadedModel, config: InferenceConfig) -> tuple[int, ...]:
    """BANDS, or the first ``in_channels`` bands that hold data (an alpha band is the mask, not data)."""
    in_channels = model.in_channels
    if config.bands is not None:
        if in_channels is not None and len(config.bands) != in_channels:
            raise ParameterError(
                "BANDS", list(config.bands), f"select exactly {in_channels} bands (the model's in_channels)"
            )
        return tuple(config.bands)
    data_bands = reader.data_bands()
    wanted = in_channels or len(data_bands)
    if len(data_bands) < max(wanted, 1):
        alpha = " and an alpha band" if len(data_bands) < reader.band_count else ""
        raise ParameterError(
            "INPUT",
            f"{reader.path} ({len(data_bands)} data band(s){alpha})",
            f"have at least {max(wanted, 1)} data bands (the model's in_channels), or choose them with BANDS",
        )
    return data_bands[:wanted]


def resolve_outputs(paths: Mapping[str, str | None], input_path: str, model: LoadedModel) -> dict[str, str]:
    """The output paths made absolute and checked (see :func:`~..io.output_files.check_outputs`), GeoTIFF only."""
    outputs = check_outputs(
        paths, rasters={"INPUT": input_path}, files={"MODEL": model.source, "CHECKPOINT": model.checkpoint}
    )
    for key, path in outputs.items():
        check_extension(key, path, OUTPUT_EXTENSIONS)
    return outputs


def probe_model(
    model: LoadedModel, device: torch.device, bands: int, config: InferenceConfig
) -> tuple[int, int, str, float]:
    """Run one zero tile: ``(classes, batch size, how the batch was chosen, seconds of the pass)``.

    Checks that the tile fits in memory and is accepted, that the output is ``(B, C, H, W)`` logits, and that
    NUM_CLASSES matches."""
    tile = config.model_input_shape
    check_tile_fits(device, bands, tile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    num_classes = _probe_classes(model, device, bands, tile)
    seconds = time.perf_counter() - started
    note = ""
    if config.batch_size:
        batch_size = config.batch_size
    elif device.type == "cuda":
        batch_size, note = gpu_batch_size(device, torch.cuda.max_memory_allocated(device) - allocated)
    else:
        batch_size = auto_batch_size(device, tile)
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ParameterError(
            "NUM_CLASSES", config.num_classes, f"match the model's {num_classes} output classes (or be 0)"
        )
    if num_classes > 255:
        raise ModelLoadError(f"MODEL has {num_classes} classes; the uint8 class raster holds at most 255.")
    return num_classes, batch_size, note, seconds


def _probe_classes(model: LoadedModel, device: torch.device, bands: int, tile: tuple[int, int]) -> int:
    """Output channels of the network on one zero tile (also checks that the tile shape is accepted)."""
    try:
        x = torch.zeros((1, bands) + tuple(tile), device=device)
        with torch.inference_mode():
            logits = select_segmentation_output(model.module(x))
    except ModelLoadError:
        raise
    except MemoryError:
        raise ParameterError("MODEL_INPUT_SHAPE", f"{tile[0]},{tile[1]}", "be a tile that fits in memory") from None
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ParameterError(
            "MODEL_INPUT_SHAPE",
            f"{tile[0]},{tile[1]}",
            f"be a tile the model accepts with {bands} input band(s) (many models need multiples of 32); "
            f"the model failed: {detail}",
        ) from None
    if logits.dim() != 4:
        raise ModelLoadError(f"MODEL returns a {logits.dim()}-D tensor; expected (B, C, H, W) logits.")
    channels = int(logits.shape[1])
    return 2 if channels == 1 else channels


def warn_about_input(reader: RasterReader, model: LoadedModel, caution: Callable[[str], None]) -> None:
    """No CRS; values far outside what the normalisation expects (e.g. 16-bit imagery with 0..255 statistics)."""
    if not reader.has_crs:
        caution(f"INPUT '{reader.path}' has no CRS: the outputs have none either.")
    value_range = reader.approximate_range()
    scale = model.normalization.max_pixel_value
    if value_range is not None and (value_range[1] > 1.5 * scale or value_range[0] < -0.5 * scale):
        caution(
            f"INPUT values span about {value_range[0]:g}..{value_range[1]:g} but the normalization expects "
            f"0..{scale:g} (max_pixel_value); check the model config's normalization for this imagery."
        )


def check_free_space(specs: Sequence[OutputSpec], width: int, height: int) -> None:
    """Refuse to start when an output folder cannot hold its outputs (uncompressed size + overviews)."""
    needed: dict[str, float] = {}
    for spec in specs:
        folder = os.path.dirname(spec.path)
        size = width * height * spec.bands * np.dtype(spec.dtype).itemsize * 4 / 3
        needed[folder] = needed.get(folder, 0.0) + size
    for folder, size in needed.items():
        free = shutil.disk_usage(folder).free
        if free < size:
            raise ParameterError(
                "OUTPUT",
                folder,
                f"have room for the outputs: about {size / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free",
            )


@dataclass(frozen=True)
class PlanReport:
    """What planning measured, for the run's log and timings."""

    probe_seconds: float


def plan_run(
    model: LoadedModel,
    config: InferenceConfig,
    input_path: str,
    paths: Mapping[str, str | None],
    device: torch.device,
    caution: Callable[[str], None],
    options: OutputOptions | None = None,
) -> tuple[RunPlan, PlanReport]:
    """Take the whole-input steps (module docstring) and return the plan; the model must be on ``device``.

    ``paths`` maps Processing keys to files (None: not written); ``options`` says how the optional outputs are
    written.

    Raises:
        ParameterError, ModelLoadError, RasterIOError: bad input, before any output is written.
    """
    reader = RasterReader(input_path)
    try:
        bands = resolve_bands(reader, model, config)
        reader.select_bands(bands)
        model.normalization.apply(np.zeros((len(bands), 1, 1), np.float32))  # checks mean/std length early
        outputs = resolve_outputs(
            paths if config.export_uncertainty_map else {**paths, "OUTPUT_UNCERTAINTY": None}, input_path, model
        )
        num_classes, batch_size, note, probe_seconds = probe_model(model, device, len(bands), config)
        warn_about_input(reader, model, caution)
        specs = describe_outputs(outputs, model, config, num_classes, options)
        check_free_space(specs, reader.width, reader.height)
        plan = RunPlan(
            input_path,
            (reader.height, reader.width),
            tuple(bands),
            Georeference.of(reader),
            config,
            num_classes,
            batch_size,
            specs,
            (note,) if note else (),
        )
    finally:
        reader.close()
    return plan, PlanReport(probe_seconds)

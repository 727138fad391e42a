"""The engine: windows streamed from GDAL -> stochastic passes -> streaming blend -> GeoTIFF rows.

Order of work: the raster is cut into column panels (one panel unless it is wider than
``InferenceConfig.panel_width``); in each panel, rows of windows run top to bottom and the rows above the next
window row are written as soon as that window row is done. Every window intersecting a panel is computed for
it, so the result does not depend on the panel width, and memory is bounded by
``(C + 2) x tile height x panel width`` floats whatever the raster size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..config import InferenceConfig
from ..models.dropout import find_dropout_layers
from ..errors import InferenceCancelled, InferenceError, McUncertaintyError, ModelLoadError, ParameterError
from .merger import CLASS_NODATA, UNCERTAINTY_NODATA, FinishedRows, StreamingMerger
from ..models.loading import LoadedModel
from ..io.output_files import check_extension, check_outputs, publish_together, remove_stale_temporaries
from ..io.raster_io import GeoTiffWriter, RasterReader
from .sampler import EnsembleSampler, select_segmentation_output
from .tiling import TileGrid, tile_weight_map
from .transforms import transforms_for
from .uncertainty import uncertainty_maximum

__all__ = [
    "RunResult", "run_inference", "resolve_device", "resolve_memory_format", "auto_batch_size", "batch_for_memory",
    "UNCERTAINTY_DESCRIPTIONS",
]

LOGGER = logging.getLogger("mc_uncertainty_plugin")
UNCERTAINTY_DESCRIPTIONS = {
    "entropy": "predictive entropy H[mean p] (nats)",
    "mutual_information": "mutual information / BALD (nats)",
    "expected_entropy": "expected entropy mean H[p] (aleatoric, nats)",
    "variation_ratio": "variation ratio 1 - modal vote share",
}
ProgressCallback = Callable[[float], None]
CancelCallback = Callable[[], bool]
LogCallback = Callable[[str], None]


@dataclass(frozen=True)
class RunResult:
    """What a run wrote and how it ran."""

    segmentation: str
    uncertainty: str | None
    num_classes: int
    device: str
    windows: int
    passes_per_window: int
    seconds: float
    execution_path: str = ""
    confidence: str | None = None
    pass_seconds: dict = field(default_factory=dict)  # "probe"/"full"/"replay" -> (passes, seconds of model compute)
    stage_seconds: dict = field(default_factory=dict)  # setup/read/sampler/merge/write/finish -> seconds


class _Stages:
    """Wall time per stage of a run (``with stages("read"): ...``), for the log and ``make bench``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error naming DEVICE."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ParameterError("DEVICE", name, "name an available device (CUDA is not available here; use auto or cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_memory_format(name: str, device: torch.device, module: torch.nn.Module) -> torch.memory_format:
    """``auto`` -> channels_last for a network with 2-D convolutions on CPU, contiguous otherwise.

    Measured on this project's CPU (``make bench`` prints it): channels_last made full passes of SMP FPN, Unet,
    DeepLabV3+, Linknet and Unet-EfficientNet 6-30 % faster at 256 px and up to 1.7x at 512 px; on GPU in
    float32 it is not reliably faster, so ``auto`` keeps contiguous there.
    """
    if name == "channels_last":
        return torch.channels_last
    if name == "contiguous" or device.type != "cpu":
        return torch.contiguous_format
    convolutional = any(
        isinstance(m, torch.nn.Conv2d) or getattr(m, "original_name", None) == "Conv2d" for m in module.modules()
    )
    return torch.channels_last if convolutional else torch.contiguous_format


def batch_for_memory(free_bytes: int, bytes_per_tile: int, fraction: float = 0.5, cap: int = 32) -> int:
    """Tiles per batch that keep ``bytes_per_tile`` (peak memory of one tile's pass) within ``fraction`` of the
    free device memory; between 1 and ``cap``."""
    if bytes_per_tile <= 0:
        return cap
    return max(1, min(cap, int(free_bytes * fraction) // bytes_per_tile))


def _gpu_batch_size(device: torch.device, probe_peak_bytes: int) -> tuple[int, str]:
    """GPU: batch from the free memory and the probe's peak. The prefix cache keeps one tile's deterministic
    activations alive while the suffix runs, so a tile is budgeted at 1.5x the probe's peak."""
    free, _ = torch.cuda.mem_get_info(device)
    per_tile = int(probe_peak_bytes * 1.5)
    batch = batch_for_memory(free, per_tile)
    return batch, f"GPU memory budget: half of {free / 2**20:.0f} MiB free, {per_tile / 2**20:.0f} MiB per tile"


def auto_batch_size(device: torch.device, tile_shape: tuple[int, int]) -> int:
    """Tiles per pass by pixel count: about 1 MP per batch on CPU, 4 MP on GPU (results never depend on it).

    On GPU a run sizes its batches from the free memory instead (:func:`batch_for_memory`)."""
    pixels = tile_shape[0] * tile_shape[1]
    budget, cap = ((1 << 22), 32) if device.type == "cuda" else ((1 << 20), 8)
    return max(1, min(cap, budget // pixels))


def _parse_colour(value: object, index: int) -> tuple[int, int, int, int]:
    if isinstance(value, (list, tuple)) and len(value) in (3, 4):
        rgba = [int(v) for v in value] + [255] * (4 - len(value))
        return rgba[0], rgba[1], rgba[2], rgba[3]
    text = str(value).strip().lstrip("#")
    if len(text) in (6, 8):
        try:
            parts = [int(text[i : i + 2], 16) for i in range(0, len(text), 2)]
            return parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else 255
        except ValueError:
            pass
    raise ParameterError(f"class_colors[{index}]", value, 'be "#rrggbb" or [r, g, b]')


def _writes_behind(device: torch.device) -> bool:
    """Write finished rows from a worker thread while the model runs on the next ones: on a GPU, where the CPU
    would otherwise wait for the device. On CPU the compression competes with the model for the same cores:
    measured no faster there (8 paired Unet runs on 2 cores: median 6.62 s behind vs 6.37 s in line)."""
    return device.type != "cpu"


def _check_free_space(paths: Sequence[str], width: int, height: int) -> None:
    """Refuse to start when the output folder cannot hold the outputs (uncompressed size + overviews)."""
    per_pixel = {0: 1, 1: 4}  # class raster uint8, uncertainty float32
    needed: dict[str, float] = {}
    for index, path in enumerate(paths):
        folder = os.path.dirname(path)
        needed[folder] = needed.get(folder, 0.0) + width * height * per_pixel[min(index, 1)] * 4 / 3
    for folder, size in needed.items():
        free = shutil.disk_usage(folder).free
        if free < size:
            raise ParameterError(
                "OUTPUT", folder, f"have room for the outputs: about {size / 2**20:.0f} MiB needed, "
                f"{free / 2**20:.0f} MiB free"
            )


OUTPUT_EXTENSIONS = (".tif", ".tiff")
_MEMORY_PER_INPUT_BYTE = 16  # a forward pass needs many times its input's memory (activations)


def _available_memory(device: torch.device) -> int | None:
    """Bytes of memory free for a forward pass on ``device``; None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_tile_fits(device: torch.device, bands: int, tile: tuple[int, int]) -> None:
    """Refuse a tile whose forward pass cannot fit in memory, before allocating it."""
    available = _available_memory(device)
    needed = bands * tile[0] * tile[1] * 4 * _MEMORY_PER_INPUT_BYTE
    if available is not None and needed > available:
        raise ParameterError(
            "MODEL_INPUT_SHAPE", f"{tile[0]},{tile[1]}",
            f"be a tile whose forward pass fits in memory: about {needed / 2**30:.1f} GiB needed for {bands} band(s), "
            f"{available / 2**30:.1f} GiB available on {device.type}; use a smaller tile (e.g. 512,512)",
        )


def _probe_classes(model: LoadedModel, device: torch.device, bands: int, tile: tuple[int, int]) -> int:
    """Output channels of the network on one zero tile (also checks that the tile shape is accepted)."""
    _check_tile_fits(device, bands, tile)
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


def run_inference(
    model: LoadedModel,
    config: InferenceConfig,
    input_path: str,
    segmentation_path: str,
    uncertainty_path: str | None,
    *,
    confidence_path: str | None = None,
    progress: ProgressCallback | None = None,
    is_cancelled: CancelCallback | None = None,
    log: LogCallback | None = None,
    warn: LogCallback | None = None,
) -> RunResult:
    """Run the configured inference over ``input_path`` and write the outputs.

    The model is moved to the device and put in eval mode; with channels_last its 4-D weights are converted
    for the run and put back in the contiguous layout afterwards.

    Raises:
        ParameterError, ModelLoadError, RasterIOError: bad input, before any output is written.
        InferenceCancelled: ``is_cancelled()`` returned True; partial files are removed.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)
    memory_format = resolve_memory_format(config.memory_format, device, model.module)
    model.module.to(device)
    model.module.eval()
    with _ChannelsLastWeights(model.module) if memory_format == torch.channels_last else contextlib.nullcontext():
        return _run(model, config, device, memory_format, started, input_path, segmentation_path, uncertainty_path,
                    confidence_path, progress, is_cancelled, log, warn)


def _report_validity(valid_pixels: int, nonfinite: int, caution: LogCallback) -> None:
    """Warn about pixels the model could not predict; a run that predicted none is an error naming MODEL."""
    if valid_pixels == 0 and nonfinite:
        raise InferenceError(
            f"MODEL gave non-finite probabilities (NaN or inf) at every valid pixel of INPUT ({nonfinite:,}); "
            "nothing was written. Check the model's weights and the config's normalization."
        )
    if valid_pixels == 0:
        caution("No pixel of INPUT was valid (all nodata, masked or NaN): the outputs hold nodata only.")
    elif nonfinite:
        caution(f"MODEL gave non-finite probabilities (NaN or inf) at {nonfinite:,} pixel(s): they are nodata "
                "in every output.")


class _ChannelsLastWeights:
    """The module's 4-D weights in channels_last while at least one run uses them, contiguous again after.

    Counted per module under a lock, so a run that ends does not convert the weights under another run
    (thread) still going on the same model.
    """

    _lock = threading.Lock()
    _users: dict[int, int] = {}

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        with self._lock:
            users = self._users.get(id(self.module), 0)
            if users == 0:
                self.module.to(memory_format=torch.channels_last)
            self._users[id(self.module)] = users + 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            users = self._users.pop(id(self.module)) - 1
            if users:
                self._users[id(self.module)] = users
            else:
                self.module.to(memory_format=torch.contiguous_format)


def _run(
    model: LoadedModel,
    config: InferenceConfig,
    device: torch.device,
    memory_format: torch.memory_format,
    started: float,
    input_path: str,
    segmentation_path: str,
    uncertainty_path: str | None,
    confidence_path: str | None,
    progress: ProgressCallback | None,
    is_cancelled: CancelCallback | None,
    log: LogCallback | None,
    warn: LogCallback | None,
) -> RunResult:

    def say(message: str) -> None:
        LOGGER.info(message)
        if log is not None:
            log(message)

    def caution(message: str) -> None:
        LOGGER.warning(message)
        if warn is not None:
            warn(message)
        elif log is not None:
            log(f"Warning: {message}")

    reader = RasterReader(input_path)
    in_channels = model.in_channels
    if config.bands is not None:
        bands: Sequence[int] = config.bands
        if in_channels is not None and len(bands) != in_channels:
            raise ParameterError("BANDS", list(bands), f"select exactly {in_channels} bands (the model's in_channels)")
    else:
        data_bands = reader.data_bands()  # an alpha band is the mask, not data
        wanted = in_channels or len(data_bands)
        if len(data_bands) < max(wanted, 1):
            alpha = " and an alpha band" if len(data_bands) < reader.band_count else ""
            raise ParameterError(
                "INPUT", f"{input_path} ({len(data_bands)} data band(s){alpha})",
                f"have at least {max(wanted, 1)} data bands (the model's in_channels), or choose them with BANDS",
            )
        bands = data_bands[:wanted]
    reader = reader.select_bands(bands)
    model.normalization.apply(np.zeros((len(bands), 1, 1), np.float32))  # checks mean/std length early

    if not config.export_uncertainty_map:
        uncertainty_path = None
    outputs = check_outputs(
        {"OUTPUT": segmentation_path, "OUTPUT_UNCERTAINTY": uncertainty_path, "OUTPUT_CONFIDENCE": confidence_path},
        rasters={"INPUT": input_path}, files={"MODEL": model.source, "CHECKPOINT": model.checkpoint},
    )
    for key, path in outputs.items():
        check_extension(key, path, OUTPUT_EXTENSIONS)
    segmentation_path = outputs["OUTPUT"]
    uncertainty_path = outputs.get("OUTPUT_UNCERTAINTY")
    confidence_path = outputs.get("OUTPUT_CONFIDENCE")

    tile = config.model_input_shape
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated = torch.cuda.memory_allocated(device)
    probe_started = time.perf_counter()
    num_classes = _probe_classes(model, device, len(bands), tile)
    probe_seconds = time.perf_counter() - probe_started  # a forward pass: counted as model compute
    budget_note = ""
    if config.batch_size:
        batch_size = config.batch_size
    elif device.type == "cuda":
        batch_size, budget_note = _gpu_batch_size(device, torch.cuda.max_memory_allocated(device) - allocated)
        budget_note = f" ({budget_note})"
    else:
        batch_size = auto_batch_size(device, tile)
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ParameterError("NUM_CLASSES", config.num_classes, f"match the model's {num_classes} output classes (or be 0)")
    if num_classes > 255:
        raise ModelLoadError(f"MODEL has {num_classes} classes; the uint8 class raster holds at most 255.")

    _check_free_space([p for p in (segmentation_path, uncertainty_path, confidence_path) if p], reader.width, reader.height)
    if not reader.has_crs:
        caution(f"INPUT '{input_path}' has no CRS: the outputs have none either.")
    value_range = reader.approximate_range()
    scale = model.normalization.max_pixel_value
    if value_range is not None and (value_range[1] > 1.5 * scale or value_range[0] < -0.5 * scale):
        caution(
            f"INPUT values span about {value_range[0]:g}..{value_range[1]:g} but the normalization expects "
            f"0..{scale:g} (max_pixel_value); check the model config's normalization for this imagery."
        )

    layers = find_dropout_layers(model.module) if config.mc_dropout else []
    transforms = transforms_for(config.tta_mode)
    sampler = EnsembleSampler(
        model.module, device, n_samples=config.n_samples, mc_dropout=config.mc_dropout,
        transforms=transforms, dropout_layers=layers, seed=config.seed,
        need_expected_entropy=config.uncertainty_needs_expected_entropy, cache_prefix=config.cache_prefix,
        need_votes=config.uncertainty_needs_votes,
        need_mutual_information=config.uncertainty_needs_mutual_information, memory_format=memory_format, autocast=config.autocast,
    )
    grid = TileGrid((reader.height, reader.width), tile, config.step_shape)
    weights = tile_weight_map(config.tile_weight, tile)[: grid.window_height, : grid.window_width]
    panels = [(c0, min(c0 + config.panel_width, reader.width)) for c0 in range(0, reader.width, config.panel_width)]
    total_windows = sum(len(grid.windows_in_row(i, p)) for p in panels for i in range(len(grid.row_starts)))
    total_passes = max(1, total_windows * sampler.passes_per_tile)
    how = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    how += ", channels_last" if memory_format == torch.channels_last else ""
    how += f", autocast {config.autocast}" if config.autocast != "off" else ""
    say(
        f"Device: {device.type}{how}; {reader.width}x{reader.height} px, {len(bands)} band(s), "
        f"{num_classes} classes; {total_windows} windows of {tile[0]}x{tile[1]} (step {config.step_shape[0]},"
        f"{config.step_shape[1]}), batch {batch_size}{budget_note}; {sampler.n_samples} sample(s) x {len(transforms)} "
        f"transform(s) per window; {len(layers)} active dropout layer(s)."
    )

    colours = [_parse_colour(c, i) for i, c in enumerate(model.class_colors or ())] or None
    metadata = {
        "MC_MODEL": os.path.basename(model.source),
        "MC_NUM_CLASSES": num_classes,
        "MC_N_SAMPLES": sampler.n_samples if config.mc_dropout else 1,
        "MC_DROPOUT": "on" if config.mc_dropout else "off",
        "MC_TTA_MODE": config.tta_mode,
        "MC_SEED": config.seed,
        "MC_TILE": f"{tile[0]},{tile[1]}",
        "MC_STEP": f"{config.step_shape[0]},{config.step_shape[1]}",
        "MC_TILE_WEIGHT": config.tile_weight,
        "MC_PRECISION": "float32" if config.autocast == "off" else f"autocast {config.autocast}",
    }
    common = dict(width=reader.width, height=reader.height, geotransform=reader.geotransform,
                  projection=reader.projection, gcps=reader.gcps, gcp_projection=reader.gcp_projection)
    writers: list[GeoTiffWriter] = []
    reading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mc_uncertainty_read")
    writing = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="mc_uncertainty_write")
               if _writes_behind(device) else None)
    try:
        class_writer = GeoTiffWriter(
            segmentation_path, dtype=np.uint8, nodata=CLASS_NODATA, description="class index",
            metadata=metadata, color_table=colours, category_names=model.class_names, overview_resampling="NEAREST",
            **common,
        )
        writers.append(class_writer)
        uncertainty_writer = None
        if uncertainty_path is not None:
            uncertainty_writer = GeoTiffWriter(
                uncertainty_path, dtype=np.float32, nodata=UNCERTAINTY_NODATA,
                description=UNCERTAINTY_DESCRIPTIONS[config.uncertainty_mode],
                metadata={**metadata, "MC_UNCERTAINTY_MODE": config.uncertainty_mode,
                          "MC_UNCERTAINTY_MAX": f"{uncertainty_maximum(config.uncertainty_mode, num_classes):.6f}"},
                overview_resampling="AVERAGE", **common,
            )
            writers.append(uncertainty_writer)
        confidence_writer = None
        if confidence_path is not None:
            confidence_writer = GeoTiffWriter(
                confidence_path, dtype=np.float32, nodata=UNCERTAINTY_NODATA,
                description="confidence max_c mean p (calibration)", metadata=metadata,
                overview_resampling="AVERAGE", **common,
            )
            writers.append(confidence_writer)

        for folder in dict.fromkeys(os.path.dirname(writer.path) for writer in writers):
            for leftover in remove_stale_temporaries(folder):
                say(f"Removed {os.path.basename(leftover)}, left by an earlier run that did not finish.")

        def write_rows(rows: FinishedRows | None, panel_done: bool) -> None:
            """Write finished rows; when writing behind, only the writing thread calls the writers until joined."""
            if rows is not None:
                class_writer.write(rows.row, rows.col, rows.classes)
                if uncertainty_writer is not None and rows.uncertainty is not None:
                    uncertainty_writer.write(rows.row, rows.col, rows.uncertainty)
                if confidence_writer is not None and rows.confidence is not None:
                    confidence_writer.write(rows.row, rows.col, rows.confidence)
            if panel_done:
                for writer in writers:
                    writer.flush()

        done = 0

        def advance(windows: int) -> None:
            """``windows`` windows went through one more pass."""
            nonlocal done
            done += windows
            if progress is not None:
                progress(min(99.0, 100.0 * done / total_passes))

        def check_cancel() -> None:
            if is_cancelled is not None and is_cancelled():
                raise InferenceCancelled("cancelled by the user; no output was written.")

        mode = config.uncertainty_mode if uncertainty_writer is not None else None
        skipped = valid_pixels = nonfinite = 0
        stages = _Stages()
        # the batches in order: (panel, window row, windows); a job that starts a window row drops GDAL's cached
        # input blocks of the rows above first
        jobs = [
            (p, i, windows[first : first + batch_size])
            for p, panel in enumerate(panels)
            for i in range(len(grid.row_starts))
            for windows in [grid.windows_in_row(i, panel)]
            for first in range(0, len(windows), batch_size)
        ]

        def load(index: int) -> tuple[list, list, list]:
            """Read and normalise the windows of job ``index`` (runs in the reading thread)."""
            p, i, batch = jobs[index]
            if index > 0 and jobs[index - 1][:2] != (p, i):
                reader.release_cache()
            chunk, tiles, valids = [], [], []
            for window in batch:
                data, valid = reader.read(window, tile)
                if not valid.any():  # entirely nodata: nothing to predict
                    continue
                chunk.append(window)
                tiles.append(np.where(valid, model.normalization.apply(data), 0.0).astype(np.float32))
                valids.append(valid)
            return chunk, tiles, valids

        stages.seconds["setup"] = time.perf_counter() - started
        merger: StreamingMerger | None = None
        # one job ahead: the next batch is read while the model runs on this one; the reader is only ever
        # used from that thread, and its errors surface here through result()
        pending = reading.submit(load, 0) if jobs else None
        written: Future[None] | None = None  # the pending write when writing behind (at most one)
        with sampler:  # dropout hooks and prefix-cache wrappers installed once for the run
            for index, (p, i, batch) in enumerate(jobs):
                if merger is None:
                    merger = StreamingMerger(num_classes, reader.height, panels[p], grid.window_height, mode,
                                             with_confidence=confidence_writer is not None)
                check_cancel()
                with stages("read"):  # the time the model waited for the reading thread
                    assert pending is not None
                    chunk, tiles, valids = pending.result()
                pending = reading.submit(load, index + 1) if index + 1 < len(jobs) else None
                if len(chunk) < len(batch):
                    skipped += len(batch) - len(chunk)
                    advance((len(batch) - len(chunk)) * sampler.passes_per_tile)
                if chunk:
                    try:
                        with stages("sampler"):
                            reduced = sampler(np.stack(tiles), [w.key for w in chunk], is_cancelled,
                                              lambda n=len(chunk): advance(n))
                    except McUncertaintyError:
                        raise
                    except Exception as exc:  # the model's own failure: one clear line, no traceback
                        detail = " ".join(str(exc).split())[:300]
                        raise InferenceError(
                            f"MODEL failed on the window at row {chunk[0].row}, column {chunk[0].col} of INPUT: "
                            f"{type(exc).__name__}: {detail}"
                        ) from exc
                    with stages("merge"):
                        for b, window in enumerate(chunk):
                            h, w = window.height, window.width
                            merger.aggregate(
                                window,
                                reduced.mean_probs[b, :, :h, :w],
                                reduced.expected_entropy[b, :h, :w] if reduced.expected_entropy is not None else None,
                                weights * valids[b][:h, :w],
                                reduced.votes[b, :, :h, :w] if reduced.votes is not None else None,
                                (reduced.mutual_information[b, :h, :w]
                                 if reduced.mutual_information is not None else None),
                            )
                following = jobs[index + 1][:2] if index + 1 < len(jobs) else None
                if following == (p, i):
                    continue  # more batches in this window row
                panel_done = following is None or following[0] != p
                with stages("merge"):
                    if panel_done:
                        finished = merger.finalize()
                        nonfinite += merger.nonfinite_pixels
                        merger = None
                    else:  # only the window row is done
                        finished = merger.pop_rows(grid.row_starts[i + 1])
                    if finished is not None:
                        valid_pixels += int(np.count_nonzero(finished.classes != CLASS_NODATA))
                with stages("write"):  # writing behind: the time the model waited for the writing thread
                    if written is not None:
                        written.result()
                        written = None
                    if writing is not None:
                        written = writing.submit(write_rows, finished, panel_done)
                    else:
                        write_rows(finished, panel_done)
        with stages("write"):
            if written is not None:
                written.result()
        check_cancel()
        _report_validity(valid_pixels, nonfinite, caution)
        with stages("finish"):
            for writer in writers:
                writer.finish()
            publish_together([move for writer in writers for move in writer.moves()])
            for writer in writers:
                writer.done = True
    except BaseException:
        if writing is not None:
            writing.shutdown(wait=True, cancel_futures=True)  # no write may still be running when its file goes
        for writer in writers:
            writer.abort()
        raise
    finally:
        if writing is not None:
            writing.shutdown(wait=True, cancel_futures=True)
        reading.shutdown(wait=True, cancel_futures=True)  # no read may still be running when the file closes
        reader.close()
    if progress is not None:
        progress(100.0)
    seconds = time.perf_counter() - started
    say(f"Execution: {sampler.execution_path}.")
    pass_seconds = {"probe": (1, probe_seconds), **sampler.pass_seconds}
    model_seconds = sum(total for _, total in pass_seconds.values())
    say("Time: " + ", ".join([f"model passes {model_seconds:.1f} s"] + [
        f"{name} {value:.1f} s" for name, value in stages.seconds.items()]))
    say(f"Done in {seconds:.1f} s ({skipped} nodata window(s) skipped): "
        + ", ".join(p for p in (segmentation_path, uncertainty_path, confidence_path) if p))
    return RunResult(segmentation_path, uncertainty_path, num_classes, device.type, total_windows,
                     sampler.passes_per_tile, seconds, sampler.execution_path, confidence_path,
                     pass_seconds, dict(stages.seconds))

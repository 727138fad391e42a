"""The engine: plan the run once, then stream any region of the raster through the model into GeoTIFF rows.

A run reads as its steps:

1. :func:`~.plan.plan_run` — bands, outputs, probe, warnings, free space, output descriptions (whole input);
2. plan the windows — :func:`~.plan.region_batches`: the global grid's windows that touch the region;
3. stream — read ahead (:class:`~.read_ahead.ReadAhead`) -> stochastic passes (:class:`~.sampler.EnsembleSampler`)
   -> blend (:class:`~.merger.StreamingMerger`) -> write finished rows (:class:`~.output_set.OutputSet`);
4. finish — check what was predicted, close the files, publish them all together;
5. summarise — execution path, time per stage.

:func:`run_region` computes any rectangle of the raster exactly as the whole run computes those pixels: the
window grid, the dropout keys and the blending weights are global, only windows touching the region run, in the
same order and the same batches, and the region's rows go to region-sized files with a shifted georeference. With
one torch thread a mosaic of regions equals the whole run bit for bit. A tile never runs alone in a batch when
the batch size is 2 or more (it is paired with a copy of itself): CPU kernels give other floats for a batch of one.

Order of work inside a region: column panels (one unless it is wider than ``InferenceConfig.panel_width``); in
each panel rows of windows run top to bottom and the rows above the next window row are written as soon as that
window row is done, so memory is bounded by ``(C + 2) x tile height x panel width`` floats.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from ..config import InferenceConfig
from ..errors import InferenceCancelled, InferenceError
from ..io.output_files import remove_stale_temporaries
from ..io.raster_io import RasterReader
from ..models.dropout import find_dropout_layers
from ..models.loading import LoadedModel
from .device import ModelOnDevice, batch_for_memory, resolve_device, resolve_memory_format
from .heap import reuse_freed_memory
from .merger import CLASS_NODATA, FinishedRows, StreamingMerger
from .output_set import OutputSet
from .plan import UNCERTAINTY_DESCRIPTIONS, Batch, OutputOptions, Region, RunPlan, plan_run, region_batches
from .read_ahead import LoadedBatch, ReadAhead
from .sampler import EnsembleSampler
from .tiling import tile_weight_map
from .transforms import transforms_for
from .window_outputs import WindowKey, WindowOutput, build_sampler, window_outputs

__all__ = [
    "RunCallbacks",
    "RunResult",
    "RegionResult",
    "run_inference",
    "run_region",
    "resolve_device",
    "resolve_memory_format",
    "batch_for_memory",
    "UNCERTAINTY_DESCRIPTIONS",
]

LOGGER = logging.getLogger("mc_uncertainty_plugin")


@dataclass(frozen=True)
class RunCallbacks:
    """How a run talks to its caller: ``progress`` (0..100), ``is_cancelled`` (polled between passes), ``log``
    and ``warn`` (one-line messages; warnings go to ``log`` when ``warn`` is not given)."""

    progress: Callable[[float], None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    log: Callable[[str], None] | None = None
    warn: Callable[[str], None] | None = None

    def say(self, message: str) -> None:
        LOGGER.info(message)
        if self.log is not None:
            self.log(message)

    def caution(self, message: str) -> None:
        LOGGER.warning(message)
        if self.warn is not None:
            self.warn(message)
        elif self.log is not None:
            self.log(f"Warning: {message}")

    def check_cancel(self) -> None:
        if self.is_cancelled is not None and self.is_cancelled():
            raise InferenceCancelled("cancelled by the user; no output was written.")


@dataclass(frozen=True)
class RegionResult:
    """What a region run wrote and how it went."""

    paths: dict[str, str]  # Processing key -> file
    windows: int  # windows planned (those skipped as nodata included)
    skipped: int  # windows entirely nodata
    valid_pixels: int
    nonfinite_pixels: int
    passes_per_window: int
    execution_path: str
    pass_seconds: dict = field(default_factory=dict)  # "full"/"replay" -> (passes, seconds of model compute)
    stage_seconds: dict = field(default_factory=dict)  # setup/read/sampler/merge/write/finish -> seconds
    computed: int = 0  # windows run through the model here (not skipped, not given)


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
    probabilities: str | None = None
    confident: str | None = None


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


def _writes_behind(device: torch.device) -> bool:
    """Write finished rows from a worker thread while the model runs on the next ones: on a GPU, where the CPU
    would otherwise wait for the device. On CPU the compression competes with the model for the same cores and
    was no faster (the README's benchmark section)."""
    return device.type != "cpu"


# -- entry points ---------------------------------------------------------------------------------------------
def run_inference(
    model: LoadedModel,
    config: InferenceConfig,
    input_path: str,
    segmentation_path: str,
    uncertainty_path: str | None,
    *,
    confidence_path: str | None = None,
    probabilities_path: str | None = None,
    confident_path: str | None = None,
    output_options: OutputOptions | None = None,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> RunResult:
    """Run the configured inference over the whole of ``input_path`` and write the outputs.

    The optional outputs (None: not written): ``confidence_path`` (max p̄), ``probabilities_path`` (p̄ per class)
    and ``confident_path`` (classes where the uncertainty is within ``output_options.confident_threshold``;
    the uncertainty is computed for it even when ``uncertainty_path`` is None).

    Raises:
        ParameterError, ModelLoadError, RasterIOError: bad input, before any output is written.
        InferenceError: the model failed or predicted nothing finite; nothing is left written.
        InferenceCancelled: ``is_cancelled()`` returned True; partial files are removed.
    """
    started = time.perf_counter()
    callbacks = RunCallbacks(progress, is_cancelled, log, warn)
    device = resolve_device(config.device)
    memory_format = resolve_memory_format(config.memory_format, device, model.module)
    paths = {
        "OUTPUT": segmentation_path,
        "OUTPUT_UNCERTAINTY": uncertainty_path,
        "OUTPUT_CONFIDENCE": confidence_path,
        "OUTPUT_PROBABILITIES": probabilities_path,
        "OUTPUT_CONFIDENT": confident_path,
    }
    with ModelOnDevice(model, device, memory_format), reuse_freed_memory():
        plan, report = plan_run(model, config, input_path, paths, device, callbacks.caution, output_options)
        callbacks.say(_describe(plan, model, device, memory_format))
        region = _stream_region(plan, model, plan.whole, None, device, memory_format, callbacks, started)
    if progress is not None:
        progress(100.0)
    return _summarise(plan, region, report.probe_seconds, device, started, callbacks)


def run_region(
    plan: RunPlan,
    model: LoadedModel,
    region: Region,
    paths: Mapping[str, str] | None = None,
    callbacks: RunCallbacks | None = None,
    given: Mapping[WindowKey, WindowOutput] | None = None,
) -> RegionResult:
    """Compute ``region`` of ``plan`` exactly as the whole run computes those pixels (module docstring) and write
    it to region-sized files: ``paths`` (Processing key -> file) or the plan's own paths. No whole-input check is
    repeated here: the plan made them. Windows in ``given`` (computed elsewhere by
    :func:`~.window_outputs.compute_windows`) are blended as they are instead of running again."""
    device = resolve_device(plan.config.device)
    memory_format = resolve_memory_format(plan.config.memory_format, device, model.module)
    with ModelOnDevice(model, device, memory_format), reuse_freed_memory():
        return _stream_region(
            plan, model, region, paths, device, memory_format, callbacks or RunCallbacks(), given=given or {}
        )


# -- the steps --------------------------------------------------------------------------------------------------
def _describe(plan: RunPlan, model: LoadedModel, device: torch.device, memory_format: torch.memory_format) -> str:
    """One line on how the run goes: device, raster, windows, batch, samples."""
    config = plan.config
    layers = len(find_dropout_layers(model.module)) if config.mc_dropout else 0
    samples = config.n_samples if layers else 1
    transforms = len(transforms_for(config.tta_mode))
    how = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    how += ", channels_last" if memory_format == torch.channels_last else ""
    how += f", autocast {config.autocast}" if config.autocast != "off" else ""
    height, width = plan.raster_shape
    tile, step = config.model_input_shape, config.step_shape
    windows = sum(len(b.windows) for b in region_batches(plan.grid, plan.whole, config.panel_width, plan.batch_size))
    notes = "".join(f" ({note})" for note in plan.notes)
    return (
        f"Device: {device.type}{how}; {width}x{height} px, {len(plan.bands)} band(s), {plan.num_classes} classes; "
        f"{windows} windows of {tile[0]}x{tile[1]} (step {step[0]},{step[1]}), batch {plan.batch_size}{notes}; "
        f"{samples} sample(s) x {transforms} transform(s) per window; {layers} active dropout layer(s)."
    )


class _Progress:
    """Percent of the passes of a region done, reported as they happen (never 100 before the end)."""

    def __init__(self, callbacks: RunCallbacks, total_passes: int) -> None:
        self.callbacks = callbacks
        self.total = max(1, total_passes)
        self.done = 0

    def advance(self, passes: int) -> None:
        self.done += passes
        if self.callbacks.progress is not None:
            self.callbacks.progress(min(99.0, 100.0 * self.done / self.total))


@dataclass
class _Counts:
    skipped: int = 0
    computed: int = 0
    valid_pixels: int = 0
    nonfinite_pixels: int = 0


def _stream_region(
    plan: RunPlan,
    model: LoadedModel,
    region: Region,
    paths: Mapping[str, str] | None,
    device: torch.device,
    memory_format: torch.memory_format,
    callbacks: RunCallbacks,
    started: float | None = None,
    given: Mapping[WindowKey, WindowOutput] | None = None,
) -> RegionResult:
    """Plan the region's windows, stream them, finish and publish its outputs (or leave nothing)."""
    started = time.perf_counter() if started is None else started
    stages = _Stages()
    batches = region_batches(plan.grid, region, plan.config.panel_width, plan.batch_size)
    sampler = build_sampler(plan, model, device, memory_format)
    progress = _Progress(callbacks, sum(len(b.windows) for b in batches) * sampler.passes_per_tile)
    reader = RasterReader(plan.input_path).select_bands(plan.bands)
    try:
        outputs = OutputSet(plan.outputs, region, plan.georeference, paths, behind=_writes_behind(device))
    except BaseException:
        reader.close()
        raise
    try:
        for folder in outputs.folders:
            for leftover in remove_stale_temporaries(folder):
                callbacks.say(f"Removed {os.path.basename(leftover)}, left by an earlier run that did not finish.")
        stages.seconds["setup"] = time.perf_counter() - started
        with ReadAhead(reader, batches, model.normalization, plan.config.model_input_shape) as loaded, sampler:
            counts = _blend_and_write(plan, region, loaded, sampler, outputs, callbacks, progress, stages, given or {})
        callbacks.check_cancel()
        _report_validity(counts, callbacks)
        with stages("finish"):
            written = outputs.publish()
    except BaseException:
        outputs.abort()
        raise
    finally:
        reader.close()
    return RegionResult(
        written,
        sum(len(b.windows) for b in batches),
        counts.skipped,
        counts.valid_pixels,
        counts.nonfinite_pixels,
        sampler.passes_per_tile,
        sampler.execution_path,
        dict(sampler.pass_seconds),
        dict(stages.seconds),
        counts.computed,
    )


def _blend_and_write(
    plan: RunPlan,
    region: Region,
    loaded: ReadAhead,
    sampler: EnsembleSampler,
    outputs: OutputSet,
    callbacks: RunCallbacks,
    progress: _Progress,
    stages: _Stages,
    given: Mapping[WindowKey, WindowOutput],
) -> _Counts:
    """Batch by batch: passes, blend, and after each window row the rows no later window can reach are written."""
    batches = loaded.batches
    grid = plan.grid
    weights = tile_weight_map(plan.config.tile_weight, plan.config.model_input_shape)
    weights = weights[: grid.window_height, : grid.window_width]
    counts = _Counts()
    merger: StreamingMerger | None = None
    for index, batch in enumerate(batches):
        callbacks.check_cancel()
        with stages("read"):  # the time the model waited for the reading thread
            item = loaded.next()
        if merger is None:
            merger = _new_merger(plan, region, batch, sampler)
        counts.skipped += item.skipped
        progress.advance(item.skipped * sampler.passes_per_tile)
        if item.windows:
            computed = sum(window.key not in given for window in item.windows)
            progress.advance((len(item.windows) - computed) * sampler.passes_per_tile)
            with stages("sampler"):
                window_results = window_outputs(
                    sampler,
                    item,
                    plan.batch_size,
                    given,
                    callbacks.is_cancelled,
                    functools.partial(progress.advance, computed),
                )
            counts.computed += computed
            with stages("merge"):
                _aggregate(merger, item, window_results, weights)
        following = batches[index + 1] if index + 1 < len(batches) else None
        if following is not None and (following.panel, following.grid_row) == (batch.panel, batch.grid_row):
            continue  # more batches in this window row
        panel_done = following is None or following.panel != batch.panel
        with stages("merge"):
            finished = merger.finalize() if panel_done else merger.pop_rows(grid.row_starts[batch.grid_row + 1])
            _count(finished, merger if panel_done else None, counts)
        if panel_done:
            merger = None
        with stages("write"):  # writing behind: the time the model waited for the writing thread
            outputs.write(finished, flush=panel_done)
    with stages("write"):
        outputs.wait()
    return counts


def _new_merger(plan: RunPlan, region: Region, batch: Batch, sampler: EnsembleSampler) -> StreamingMerger:
    confident = plan.writes("confident")
    return StreamingMerger(
        plan.num_classes,
        (region.row, region.row_end),
        batch.cols,
        plan.grid.window_height,
        plan.config.uncertainty_mode if plan.needs_uncertainty else None,
        with_confidence=plan.writes("confidence") is not None,
        with_probabilities=plan.writes("probabilities") is not None,
        confident_threshold=confident.threshold if confident is not None else None,
    )


def _aggregate(merger: StreamingMerger, item: LoadedBatch, outputs: list[WindowOutput], weights: np.ndarray) -> None:
    """Blend each window's result; a cropped one (``offset``) as the part of the window it covers."""
    for b, (window, out) in enumerate(zip(item.windows, outputs)):
        top, left = out.offset
        h, w = out.mean_probs.shape[-2:]
        part = window
        if (top, left, h, w) != (0, 0, window.height, window.width):
            part = replace(window, row=window.row + top, col=window.col + left, height=h, width=w)
        merger.aggregate(
            part,
            out.mean_probs,
            out.expected_entropy,
            weights[top : top + h, left : left + w] * item.valids[b][top : top + h, left : left + w],
            out.votes,
            out.mutual_information,
        )


def _count(finished: FinishedRows | None, finalized: StreamingMerger | None, counts: _Counts) -> None:
    if finished is not None:
        counts.valid_pixels += int(np.count_nonzero(finished.classes != CLASS_NODATA))
    if finalized is not None:
        counts.nonfinite_pixels += finalized.nonfinite_pixels


def _report_validity(counts: _Counts, callbacks: RunCallbacks) -> None:
    """Warn about pixels the model could not predict; a run that predicted none is an error naming MODEL."""
    if counts.valid_pixels == 0 and counts.nonfinite_pixels:
        raise InferenceError(
            f"MODEL gave non-finite probabilities (NaN or inf) at every valid pixel of INPUT "
            f"({counts.nonfinite_pixels:,}); nothing was written. Check the model's weights and the config's "
            "normalization."
        )
    if counts.valid_pixels == 0:
        callbacks.caution("No pixel of INPUT was valid (all nodata, masked or NaN): the outputs hold nodata only.")
    elif counts.nonfinite_pixels:
        callbacks.caution(
            f"MODEL gave non-finite probabilities (NaN or inf) at {counts.nonfinite_pixels:,} "
            "pixel(s): they are nodata in every output."
        )


def _summarise(
    plan: RunPlan,
    region: RegionResult,
    probe_seconds: float,
    device: torch.device,
    started: float,
    callbacks: RunCallbacks,
) -> RunResult:
    seconds = time.perf_counter() - started
    callbacks.say(f"Execution: {region.execution_path}.")
    pass_seconds = {"probe": (1, probe_seconds), **region.pass_seconds}
    model_seconds = sum(total for _, total in pass_seconds.values())
    callbacks.say(
        "Time: "
        + ", ".join(
            [f"model passes {model_seconds:.1f} s"]
            + [f"{name} {value:.1f} s" for name, value in region.stage_seconds.items()]
        )
    )
    callbacks.say(
        f"Done in {seconds:.1f} s ({region.skipped} nodata window(s) skipped): " + ", ".join(region.paths.values())
    )
    return RunResult(
        region.paths["OUTPUT"],
        region.paths.get("OUTPUT_UNCERTAINTY"),
        plan.num_classes,
        device.type,
        region.windows,
        region.passes_per_window,
        seconds,
        region.execution_path,
        region.paths.get("OUTPUT_CONFIDENCE"),
        pass_seconds,
        dict(region.stage_seconds),
        region.paths.get("OUTPUT_PROBABILITIES"),
        region.paths.get("OUTPUT_CONFIDENT"),
    )

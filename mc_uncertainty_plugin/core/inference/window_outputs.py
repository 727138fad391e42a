"""The passes of a batch of windows, one window's result, and windows computed on their own for other processes.

A window's result (:class:`WindowOutput`: ``p̄`` and the per-window reductions the merger blends) depends only on
the plan, the model and the window: its dropout masks are keyed by its position, a lone tile is paired with a
copy of itself, and with one torch thread the CPU kernels give each tile of a batch the floats it gets in any
other batch. So a window that several blocks of a distributed job need can be computed once
(:func:`compute_windows`) and handed to each of them (``given`` in :func:`window_outputs`): the blocks then blend
exactly the floats they would have computed themselves, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InferenceError, McUncertaintyError
from ..io.raster_io import RasterReader
from ..models.dropout import find_dropout_layers
from ..models.loading import LoadedModel
from .device import ModelOnDevice, resolve_device, resolve_memory_format
from .heap import reuse_freed_memory
from .plan import Batch, Region, RunPlan, balanced_split
from .read_ahead import LoadedBatch, ReadAhead
from .sampler import EnsembleSampler, TileAccumulators
from .tiling import Window
from .transforms import transforms_for

__all__ = [
    "WindowKey",
    "WindowOutput",
    "build_sampler",
    "run_passes",
    "window_outputs",
    "compute_windows",
    "crop_outputs",
]

WindowKey = tuple[int, int]


@dataclass(frozen=True)
class WindowOutput:
    """One window's reductions of its passes, cropped to the part of the window inside the raster (float32)."""

    mean_probs: np.ndarray  # (C, h, w)
    expected_entropy: np.ndarray | None  # (h, w)
    votes: np.ndarray | None  # (C, h, w)
    mutual_information: np.ndarray | None  # (h, w)
    offset: tuple[int, int] = (0, 0)  # where the arrays start in the window: a crop (:func:`crop_outputs`)


def build_sampler(
    plan: RunPlan, model: LoadedModel, device: torch.device, memory_format: torch.memory_format
) -> EnsembleSampler:
    """The sampler of ``plan``: its samples, transforms, seed and the reductions its outputs need."""
    config = plan.config
    layers = find_dropout_layers(model.module) if config.mc_dropout else []
    mode = config.uncertainty_mode if plan.needs_uncertainty else None
    return EnsembleSampler(
        model.module,
        device,
        n_samples=config.n_samples,
        mc_dropout=config.mc_dropout,
        transforms=transforms_for(config.tta_mode),
        dropout_layers=layers,
        seed=config.seed,
        need_expected_entropy=mode == "expected_entropy",
        cache_prefix=config.cache_prefix,
        need_votes=mode == "variation_ratio",
        need_mutual_information=mode == "mutual_information",
        memory_format=memory_format,
        autocast=config.autocast,
    )


def run_passes(
    sampler: EnsembleSampler,
    windows: Sequence[Window],
    tiles: np.ndarray,
    batch_size: int,
    is_cancelled: Callable[[], bool] | None = None,
    on_pass: Callable[[], None] | None = None,
) -> TileAccumulators:
    """The passes of one batch of ``windows`` (their normalised ``tiles``). A lone tile is paired with a copy of
    itself when batches hold 2 or more (its floats then do not depend on how the windows fell into batches); the
    copy's result is dropped."""
    keys = [window.key for window in windows]
    if len(keys) == 1 and batch_size > 1:
        tiles, keys = np.concatenate([tiles, tiles]), keys * 2
    try:
        return sampler(tiles, keys, is_cancelled, on_pass)
    except McUncertaintyError:
        raise
    except Exception as exc:  # the model's own failure: one clear line, no traceback
        detail = " ".join(str(exc).split())[:300]
        first = windows[0]
        raise InferenceError(
            f"MODEL failed on the window at row {first.row}, column {first.col} of INPUT: {type(exc).__name__}: {detail}"
        ) from exc


def _crop(values: np.ndarray | None, index: int, height: int, width: int) -> np.ndarray | None:
    """Tile ``index`` of a batch of per-tile results, cropped to the part inside the raster."""
    return values[index, ..., :height, :width] if values is not None else None


def _split(reduced: TileAccumulators, windows: Sequence[Window]) -> list[WindowOutput]:
    return [
        WindowOutput(
            reduced.mean_probs[b, :, : window.height, : window.width],
            _crop(reduced.expected_entropy, b, window.height, window.width),
            _crop(reduced.votes, b, window.height, window.width),
            _crop(reduced.mutual_information, b, window.height, window.width),
        )
        for b, window in enumerate(windows)
    ]


def window_outputs(
    sampler: EnsembleSampler,
    item: LoadedBatch,
    batch_size: int,
    given: Mapping[WindowKey, WindowOutput],
    is_cancelled: Callable[[], bool] | None = None,
    on_pass: Callable[[], None] | None = None,
) -> list[WindowOutput]:
    """The results of the windows of ``item`` in order: those in ``given`` as they are, the others computed in one
    batch."""
    todo = [b for b, window in enumerate(item.windows) if window.key not in given]
    computed: dict[int, WindowOutput] = {}
    if todo:
        windows = [item.windows[b] for b in todo]
        reduced = run_passes(sampler, windows, item.tiles[todo], batch_size, is_cancelled, on_pass)
        computed = dict(zip(todo, _split(reduced, windows)))
    return [computed[b] if b in computed else given[w.key] for b, w in enumerate(item.windows)]


def compute_windows(
    plan: RunPlan,
    model: LoadedModel,
    windows: Sequence[Window],
    is_cancelled: Callable[[], bool] | None = None,
) -> dict[WindowKey, WindowOutput]:
    """The results of ``windows`` of ``plan`` exactly as a run that reaches them computes them, keyed by position;
    windows entirely nodata are left out (a run skips them too). Nothing is written."""
    device = resolve_device(plan.config.device)
    memory_format = resolve_memory_format(plan.config.memory_format, device, model.module)
    width = plan.raster_shape[1]
    batches = [Batch(0, (0, width), index, part) for index, part in enumerate(balanced_split(windows, plan.batch_size))]
    results: dict[WindowKey, WindowOutput] = {}
    reader = RasterReader(plan.input_path).select_bands(plan.bands)
    try:
        with ModelOnDevice(model, device, memory_format), reuse_freed_memory():
            sampler = build_sampler(plan, model, device, memory_format)
            with ReadAhead(reader, batches, model.normalization, plan.config.model_input_shape) as loaded, sampler:
                for _ in batches:
                    item = loaded.next()
                    outputs = window_outputs(sampler, item, plan.batch_size, {}, is_cancelled)
                    results.update(
                        (w.key, _copy(out, (Ellipsis,), out.offset)) for w, out in zip(item.windows, outputs)
                    )
    finally:
        reader.close()
    return results


def _copy(output: WindowOutput, inside: tuple, offset: tuple[int, int]) -> WindowOutput:
    """Copies of ``output``'s arrays at ``inside``: a view would keep the whole batch's arrays alive (and pickle
    them with it)."""

    def part(values: np.ndarray | None) -> np.ndarray | None:
        return values[inside].copy() if values is not None else None

    return WindowOutput(
        output.mean_probs[inside].copy(),
        part(output.expected_entropy),
        part(output.votes),
        part(output.mutual_information),
        offset,
    )


def crop_outputs(outputs: Mapping[WindowKey, WindowOutput], region: Region) -> dict[WindowKey, WindowOutput]:
    """The part of each window's result inside ``region`` (copies; windows that miss it are left out): a block
    blends only its own pixels, so it needs no more of a window it shares with others. Each pixel keeps its
    floats, so blending the crop gives the block what blending the whole window gives."""
    cropped = {}
    for (row, col), output in outputs.items():
        top, left = row + output.offset[0], col + output.offset[1]  # the arrays' first pixel in the raster
        height, width = output.mean_probs.shape[-2:]
        r0, c0 = max(region.row - top, 0), max(region.col - left, 0)
        r1, c1 = min(region.row_end - top, height), min(region.col_end - left, width)
        if r0 >= r1 or c0 >= c1:
            continue
        inside = (Ellipsis, slice(r0, r1), slice(c0, c1))
        cropped[(row, col)] = _copy(output, inside, (output.offset[0] + r0, output.offset[1] + c0))
    return cropped

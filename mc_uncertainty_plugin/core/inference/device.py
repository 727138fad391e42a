"""Where and how the network runs: device, memory layout, batch size, memory checks, the model on its device."""

from __future__ import annotations

import os
import threading
from typing import Any

import torch

from ..errors import ParameterError
from ..models.loading import LoadedModel
from .pointwise import PointwiseInInputLayout

__all__ = [
    "resolve_device",
    "resolve_memory_format",
    "batch_for_memory",
    "gpu_batch_size",
    "auto_batch_size",
    "available_memory",
    "check_tile_fits",
    "ModelOnDevice",
]

_MEMORY_PER_INPUT_BYTE = 16  # a forward pass needs many times its input's memory (activations)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error naming DEVICE."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ParameterError("DEVICE", name, "name an available device (CUDA is not available here; use auto or cpu)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_memory_format(name: str, device: torch.device, module: torch.nn.Module) -> torch.memory_format:
    """``auto`` -> channels_last for a network with 2-D convolutions on CPU, contiguous otherwise.

    On CPU channels_last made the full passes of every SMP architecture measured faster (the README's benchmark,
    ``make bench``); on GPU in float32 it is not reliably faster, so ``auto`` keeps contiguous there.
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


def gpu_batch_size(device: torch.device, probe_peak_bytes: int) -> tuple[int, str]:
    """GPU: batch from the free memory and the probe's peak. The prefix cache keeps one tile's deterministic
    activations alive while the suffix runs, so a tile is budgeted at 1.5x the probe's peak."""
    free, _ = torch.cuda.mem_get_info(device)
    per_tile = int(probe_peak_bytes * 1.5)
    batch = batch_for_memory(free, per_tile)
    return batch, f"GPU memory budget: half of {free / 2**20:.0f} MiB free, {per_tile / 2**20:.0f} MiB per tile"


def auto_batch_size(device: torch.device, tile_shape: tuple[int, int]) -> int:
    """Tiles per pass by pixel count: about 1 MP per batch on CPU, 4 MP on GPU.

    On GPU a run sizes its batches from the free memory instead (:func:`batch_for_memory`)."""
    pixels = tile_shape[0] * tile_shape[1]
    budget, cap = ((1 << 22), 32) if device.type == "cuda" else ((1 << 20), 8)
    return max(1, min(cap, budget // pixels))


def available_memory(device: torch.device) -> int | None:
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


def check_tile_fits(device: torch.device, bands: int, tile: tuple[int, int]) -> None:
    """Refuse a tile whose forward pass cannot fit in memory, before allocating it.

    A pass needs many times its input (the activations): the input tile (``bands x H x W`` float32) times
    :data:`_MEMORY_PER_INPUT_BYTE` must fit in the memory available now."""
    available = available_memory(device)
    needed = bands * tile[0] * tile[1] * 4 * _MEMORY_PER_INPUT_BYTE
    if available is not None and needed > available:
        raise ParameterError(
            "MODEL_INPUT_SHAPE",
            f"{tile[0]},{tile[1]}",
            f"be a tile whose forward pass fits in memory: about {needed / 2**30:.1f} GiB needed for {bands} band(s), "
            f"{available / 2**30:.1f} GiB available on {device.type}; use a smaller tile (e.g. 512,512)",
        )


class ModelOnDevice:
    """Context: the model on ``device`` in eval mode, its 4-D weights in ``memory_format`` while at least one run
    uses them (contiguous again after). On CPU in channels_last, its 1x1 convolutions meanwhile compute in their
    input's layout (:class:`~.pointwise.PointwiseInInputLayout`).

    Weight layouts are counted per module under a lock, so a run that ends does not convert the weights under
    another run (thread) still going on the same model.
    """

    _lock = threading.Lock()
    _users: dict[int, int] = {}
    _pointwise: dict[int, PointwiseInInputLayout] = {}

    def __init__(self, model: LoadedModel, device: torch.device, memory_format: torch.memory_format) -> None:
        self.module = model.module
        self.device = device
        self.channels_last = memory_format == torch.channels_last

    def __enter__(self) -> ModelOnDevice:
        self.module.to(self.device)
        self.module.eval()
        if self.channels_last:
            with self._lock:
                users = self._users.get(id(self.module), 0)
                if users == 0:
                    self.module.to(memory_format=torch.channels_last)
                    if self.device.type == "cpu":
                        self._pointwise[id(self.module)] = PointwiseInInputLayout(self.module).__enter__()
                self._users[id(self.module)] = users + 1
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.channels_last:
            return
        with self._lock:
            users = self._users.pop(id(self.module)) - 1
            if users:
                self._users[id(self.module)] = users
            else:
                pointwise = self._pointwise.pop(id(self.module), None)
                if pointwise is not None:
                    pointwise.__exit__(*exc)
                self.module.to(memory_format=torch.contiguous_format)

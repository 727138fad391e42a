"""Monte Carlo dropout with masks that depend only on (seed, tile, sample, layer).

The model stays in ``eval()`` (BatchNorm uses its running statistics, dropout modules are the identity) and a
forward hook on every active dropout module replaces its output by ``dropout(x)`` with a mask drawn from a
generator seeded per batch element from ``(seed, tile row, tile col, augmentation, sample, layer index)``.
So results do not depend on the batch size, the tile order or any global RNG state, and the model's own mode
flags are never changed. The hook never writes into its input (in-place dropout would corrupt a cached
activation).

TorchScript modules take no hooks: their dropout submodules are switched to ``train()`` for the run (and
restored), and each tile and sample runs as its own forward pass under a seeded, forked global RNG.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "DropoutLayer",
    "DROPOUT_KINDS",
    "find_dropout_layers",
    "derive_seed",
    "seeded_dropout",
    "MCDropoutHooks",
    "ScriptedDropoutMode",
]

# class name -> how the mask is shaped and applied
DROPOUT_KINDS = {
    "Dropout": "elementwise",
    "Dropout1d": "channel",
    "Dropout2d": "channel",
    "Dropout3d": "channel",
    "AlphaDropout": "alpha",
    "FeatureAlphaDropout": "feature_alpha",
}
_ALPHA = 1.7580993408473766  # SELU: -alpha' = scale * alpha


@dataclass(frozen=True)
class DropoutLayer:
    """An active dropout module found in a model."""

    index: int
    name: str
    module: nn.Module
    kind: str
    p: float
    scripted: bool


def _class_name(module: nn.Module) -> str:
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", type(module).__name__))
    for cls in type(module).__mro__:
        if cls.__name__ in DROPOUT_KINDS and cls.__module__.startswith("torch.nn"):
            return cls.__name__
    return type(module).__name__


def find_dropout_layers(model: nn.Module) -> list[DropoutLayer]:
    """Every dropout module with ``p > 0`` (also inside TorchScript modules, via ``original_name``)."""
    layers: list[DropoutLayer] = []
    for name, module in model.named_modules():
        kind = DROPOUT_KINDS.get(_class_name(module))
        if kind is None:
            continue
        try:
            p = float(module.p)
        except (AttributeError, TypeError, RuntimeError):
            continue
        if p > 0:
            scripted = isinstance(module, torch.jit.ScriptModule)
            layers.append(DropoutLayer(len(layers), name, module, kind, p, scripted))
    return layers


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integer keys (numpy ``SeedSequence``: well mixed, order-sensitive)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def seeded_dropout(x: torch.Tensor, kind: str, p: float, seeds: Sequence[int]) -> torch.Tensor:
    """Dropout of ``x`` (``(B, C, ...)``) with one mask per batch element drawn from ``seeds[b]``.

    - ``elementwise`` / ``channel``: ``y = x * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` per element or per
      channel (``Dropout2d``-style).
    - ``alpha`` / ``feature_alpha`` (SELU networks), as in PyTorch:
      ``a = ((alpha^2 p + 1)(1 - p))^-1/2``, ``y = x * (a m) + a alpha (m - 1 + p)``.
    """
    if len(seeds) != x.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {x.shape[0]}.")
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = 1.0 - p
    if kind in ("elementwise", "alpha"):
        shape = tuple(x.shape[1:])
    else:
        shape = (x.shape[1],) + (1,) * (x.dim() - 2)
    masks = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        masks.append(torch.rand(shape, generator=generator) < keep)
    mask = torch.stack(masks).to(device=x.device, dtype=x.dtype)
    if kind in ("elementwise", "channel"):
        return x * (mask / keep)
    a = 1.0 / math.sqrt((_ALPHA * _ALPHA * p + 1.0) * keep)
    return x * (mask * a) + (mask - 1.0 + p) * (_ALPHA * a)


class MCDropoutHooks:
    """Context manager that makes the eager dropout layers of a model sample seeded masks.

    Usage::

        with MCDropoutHooks(layers, seed) as hooks:
            hooks.set_keys([(row, col, aug, t) for ...])   # one key per batch element
            out = model(x)

    Hooks act only in the thread that entered the context, so concurrent runs on one model do not mix.
    """

    def __init__(self, layers: Sequence[DropoutLayer], seed: int) -> None:
        self.layers = [layer for layer in layers if not layer.scripted]
        self.seed = int(seed)
        self._keys: list[tuple[int, ...]] | None = None
        self._thread: int | None = None
        self._handles: list = []

    def set_keys(self, keys: Sequence[tuple[int, ...]] | None) -> None:
        """Sample keys of the batch elements of the next forward pass; ``None`` = deterministic (no dropout)."""
        self._keys = list(keys) if keys is not None else None

    def _hook(self, layer: DropoutLayer):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor):
            if self._keys is None or threading.get_ident() != self._thread:
                return None
            seeds = [derive_seed(self.seed, *key, layer.index) for key in self._keys]
            return seeded_dropout(inputs[0], layer.kind, layer.p, seeds)

        return hook

    def __enter__(self) -> MCDropoutHooks:
        self._thread = threading.get_ident()
        self._handles = [layer.module.register_forward_hook(self._hook(layer)) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._keys = None


class ScriptedDropoutMode:
    """Context manager switching TorchScript dropout submodules to train mode, restoring their flags after."""

    def __init__(self, layers: Sequence[DropoutLayer]) -> None:
        self.layers = [layer for layer in layers if layer.scripted]
        self._flags: list[bool] = []

    def __enter__(self) -> ScriptedDropoutMode:
        self._flags = [layer.module.training for layer in self.layers]
        for layer in self.layers:
            layer.module.train(True)
        return self

    def __exit__(self, *exc) -> None:
        for layer, flag in zip(self.layers, self._flags):
            layer.module.train(flag)

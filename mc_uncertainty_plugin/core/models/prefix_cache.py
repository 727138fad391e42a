"""Compute the deterministic part of the network once per tile batch; re-run only what dropout touches.

Everything upstream of the first active dropout is identical in all T passes. :class:`PrefixCache` records, in
the first pass, the output of every *maximal* module call that is deterministic — the module contains no active
dropout layer and all its tensor inputs are known-deterministic (the network input, or outputs of such calls) —
and in the next passes returns those outputs instead of running the module. Modules containing dropout run
normally, so their children are decided one by one, and glue code in their ``forward`` runs as written. A
tensor made by glue code (``torch.cat``, ``+``) is conservatively treated as stochastic, so results are exact;
the cost of a pass shrinks to the stochastic suffix plus the modules fed by such glue.

Safety:

- keys are ``(module name, call number in this pass)``, and calls inside a cached call are not counted, so
  shared modules cannot be confused;
- cached containers are returned as fresh shallow copies; cached tensors are checked for in-place changes
  (their version counters) after every pass, and a change raises :class:`PrefixCacheError`;
- :meth:`PrefixCache.verify` compares a replayed pass with a full pass on real data before the cache is trusted.

Works on eager ``nn.Module``s; TorchScript modules cannot be patched and run full passes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import nn

from .dropout import DropoutLayer

__all__ = ["PrefixCache", "PrefixCacheError"]

_SIMPLE = (int, float, str, bool, type(None))
_INSTALL_LOCK = threading.Lock()  # patching forward is check-then-set: one run at a time


class PrefixCacheError(RuntimeError):
    """The cached prefix would not reproduce a full pass (in-place change, control flow, verification)."""


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _signature(value: Any) -> Any:
    """Non-tensor structure of call arguments, compared between passes; None when it is not simple."""
    if isinstance(value, torch.Tensor):
        return "T"
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, (list, tuple)):
        items = [_signature(v) for v in value]
        return (
            None
            if any(i is None and v is not None for i, v in zip(items, value))
            else (type(value).__name__, tuple(items))
        )
    if isinstance(value, dict):
        entries = {k: _signature(v) for k, v in value.items()}
        return (
            None if any(entries[k] is None and value[k] is not None for k in value) else tuple(sorted(entries.items()))
        )
    return None


def _copy_containers(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy_containers(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_copy_containers(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _copy_containers(v)) for k, v in value.items()) if type(value) is dict else value
    return value


class _PassState:
    def __init__(self, recording: bool, network_input: torch.Tensor) -> None:
        self.recording = recording
        # ids of the known-deterministic tensors: the network input and recorded outputs, all kept alive by the
        # caller or by the cache for the whole pass, so no other tensor can take one of these ids meanwhile
        self.clean: set[int] = {id(network_input)}
        self.counts: dict[str, int] = {}
        self.depth_inside_cached = 0
        self.replayed = 0
        self.recomputed = 0


class PrefixCache:
    """Memoises deterministic module calls of ``model`` between the passes over one input tensor.

    Usage (what :class:`~..inference.sampler.EnsembleSampler` does)::

        with PrefixCache(model, dropout_layers) as cache:
            for each batch and transform (input xt):
                for t in range(T):
                    with cache.pass_(xt, recording=(t == 0)):
                        out = model(xt)
                cache.clear()
    """

    def __init__(self, model: nn.Module, dropout_layers: Iterable[DropoutLayer]) -> None:
        self.model = model
        dropout_names = [layer.name for layer in dropout_layers]
        self.stochastic = {
            name
            for name, _ in model.named_modules()
            if any(d == name or d.startswith(name + ".") or name == "" for d in dropout_names)
        }
        self.modules = [(name, m) for name, m in model.named_modules() if name and name not in self.stochastic]
        self._cache: dict[tuple[str, int], tuple[Any, Any, list[tuple[torch.Tensor, int]]]] = {}
        self._local = threading.local()
        self._installed: list[nn.Module] = []
        self.last_replayed = 0
        self.last_recomputed = 0

    @property
    def applicable(self) -> bool:
        """False when nothing can be cached (no module outside the dropout path, or TorchScript)."""
        return bool(self.modules) and not isinstance(self.model, torch.jit.ScriptModule)

    # -- installation ---------------------------------------------------------------------------------------
    def __enter__(self) -> PrefixCache:
        with _INSTALL_LOCK:
            for name, module in self.modules:
                if "forward" in module.__dict__:
                    continue  # patched by a concurrent run (or the user): its wrapper passes our calls through
                module.forward = self._wrap(name, module.forward)  # type: ignore[method-assign]
                self._installed.append(module)
        return self

    def __exit__(self, *exc: Any) -> None:
        with _INSTALL_LOCK:
            for module in self._installed:
                module.__dict__.pop("forward", None)
        self._installed = []
        self.clear()

    def _wrap(self, name: str, forward: Callable[..., Any]) -> Callable[..., Any]:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            state: _PassState | None = getattr(self._local, "state", None)
            if state is None or state.depth_inside_cached:
                return forward(*args, **kwargs)
            number = state.counts.get(name, 0)
            state.counts[name] = number + 1
            key = (name, number)
            inputs = list(_tensors((args, kwargs)))
            signature = _signature((args, kwargs))
            if signature is None or not all(id(t) in state.clean for t in inputs):
                state.recomputed += 1
                return forward(*args, **kwargs)
            if state.recording:
                state.depth_inside_cached += 1
                try:
                    output = forward(*args, **kwargs)
                finally:
                    state.depth_inside_cached -= 1
                tensors = list(_tensors(output))
                self._cache[key] = (signature, output, [(t, t._version) for t in tensors])
            else:
                entry = self._cache.get(key)
                if entry is None or entry[0] != signature:
                    raise PrefixCacheError(f"call {name}#{number} did not happen in the recorded pass.")
                output = _copy_containers(entry[1])
                state.replayed += 1
            for tensor in _tensors(output):
                state.clean.add(id(tensor))
            return output

        return cached_forward

    # -- passes ---------------------------------------------------------------------------------------------
    def pass_(self, network_input: torch.Tensor, recording: bool) -> _Pass:
        """Context for one forward pass over ``network_input``; the first pass over an input records."""
        return _Pass(self, network_input, recording)

    def clear(self) -> None:
        """Drop the recorded outputs (next input)."""
        self._cache = {}

    def check_unmodified(self) -> None:
        for (name, number), (_, _, versions) in self._cache.items():
            for tensor, version in versions:
                if tensor._version != version:
                    raise PrefixCacheError(f"the output of {name}#{number} was modified in place by a later layer.")

    def verify(
        self, run_full: Callable[[], torch.Tensor], run_cached: Callable[[], torch.Tensor], tolerance: float = 1e-5
    ) -> float:
        """Max abs difference between a full pass and a replayed pass with the same masks; raises if above."""
        full = run_full()
        cached = run_cached()
        difference = float((full - cached).abs().max()) if full.numel() else 0.0
        if not difference <= tolerance:
            raise PrefixCacheError(f"replayed pass differs from a full pass by {difference:.3g}.")
        return difference


class _Pass:
    def __init__(self, cache: PrefixCache, network_input: torch.Tensor, recording: bool) -> None:
        self.cache = cache
        self.state = _PassState(recording, network_input)

    def __enter__(self) -> _PassState:
        self.cache._local.state = self.state
        return self.state

    def __exit__(self, *exc: Any) -> None:
        self.cache._local.state = None
        self.cache.last_replayed = self.state.replayed
        self.cache.last_recomputed = self.state.recomputed
        if exc[0] is None and not self.state.recording:
            self.cache.check_unmodified()

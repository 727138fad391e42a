"""Stochastic passes over a tile batch, reduced on the fly to ``p̄`` and ``mean_t H[p_t]``.

With MC dropout on an eager model, the deterministic prefix of the network runs once per tile batch and
transform (:mod:`.prefix_cache`); only the stochastic suffix runs T times.

For each augmentation ``k`` of the ``K`` test-time transforms and each of the ``T`` dropout samples, one pass
gives logits -> probabilities ``p_{k,t}`` (softmax over classes; a 1-channel output is a sigmoid and becomes
``[1 - s, s]``), mapped back through the inverse transform. The sampler keeps only running sums, so memory is
that of one pass whatever ``T x K``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InferenceCancelled, ModelLoadError
from ..models.dropout import DropoutLayer, MCDropoutHooks, ScriptedDropoutMode, derive_seed
from ..models.prefix_cache import PrefixCache, PrefixCacheError
from .transforms import Transform
from .uncertainty import entropy

__all__ = ["EnsembleSampler", "TileAccumulators", "select_segmentation_output", "softmax_terms"]


class TileAccumulators(NamedTuple):
    """Per-tile reductions of the ``N = T x K`` passes of a batch (numpy, float32)."""

    mean_probs: np.ndarray  # (B, C, H, W): p̄ = (1/N) Σ p_n
    expected_entropy: np.ndarray | None  # (B, H, W): (1/N) Σ H[p_n]
    votes: np.ndarray | None  # (B, C, H, W): (1/N) Σ 1[argmax p_n = c]
    mutual_information: np.ndarray | None = None  # (B, H, W): max(H[p̄] - (1/N) Σ H[p_n], 0); exactly 0 if N = 1


def select_segmentation_output(output: Any) -> torch.Tensor:
    """The segmentation logits ``(B, C, H, W)`` in a model's output.

    Accepts a tensor, torchvision-style ``{"out": ..., "aux": ...}`` (uses ``out``), SMP ``aux_params``
    ``(mask, label)`` (uses the only 4-D map). Several spatial maps mean aggregation is undefined: error.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if "out" in output and isinstance(output["out"], torch.Tensor):
            return output["out"]
        maps = [v for v in output.values() if isinstance(v, torch.Tensor) and v.dim() == 4]
    elif isinstance(output, (tuple, list)):
        maps = [v for v in output if isinstance(v, torch.Tensor) and v.dim() == 4]
    else:
        raise ModelLoadError(f"MODEL returned {type(output).__name__}; expected a (B, C, H, W) tensor.")
    if len(maps) != 1:
        raise ModelLoadError(
            f"MODEL returns {len(maps)} spatial maps; aggregation undefined (multi-head models are out of scope)."
        )
    return maps[0]


def softmax_terms(
    logits: torch.Tensor, *, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(e, s, H)`` with ``p = e / s`` the class probabilities of one pass and ``H`` their entropy (or None).

    Softmax over the class axis, written out: ``y = max(z - max_c z, -87)``, ``e = exp(y)`` ``(B, C, H, W)``,
    ``s = Σ_c e`` ``(B, 1, H, W)`` and ``H = -Σ_c p ln p = ln s - Σ_c p y`` (as ``Σ_c p = 1``; no logarithm of a
    probability, so no ``0 ln 0``). The caller divides: a running sum of probabilities takes ``e / s`` in one
    step (``addcdiv_``), never materialising ``p``. The floor -87 keeps ``exp`` out of float32's subnormal range
    (``exp(-87.3)`` is the smallest normal float), where CPUs compute it 50-250x slower: a class more than
    87 nats below the top one gets ``p <= 1.7e-38`` instead of a smaller number or 0: probabilities move by
    < 2e-38, entropies by < 1e-33. ``e`` is always a new tensor (``logits`` is never modified), in NCHW layout:
    there the class reductions run over contiguous planes (about 3x faster than ``torch.softmax(z, dim=1)`` over
    the strided class axis: the README's benchmark section); a channels_last output is copied there first.
    A one-channel output ``z`` is a sigmoid: it is the softmax of the two logits ``[0, z]``
    (``σ(z) = e^z / (e^0 + e^z)``), computed the same way.

    On the CPU the steps run slab by slab (one image, a band of rows): each step over a whole batch read and
    wrote every class plane from memory, a slab's intermediates stay in the core's cache (a pass of 4 x 5 x 512 x
    512 logits, one thread: 20 ms instead of 41). A slab's numbers depend only on its own image, never on the
    batch, so a region computed alone gets the same bits. Against whole-batch steps they were identical for 5
    classes; with 20, PyTorch's vectorised class sum rounded differently in the last bit for 0.2 % of pixels.
    """
    if logits.shape[1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    z = logits.contiguous()  # class axis reduced in NCHW: fast; a channels_last output is copied here
    batch, classes, height, width = z.shape
    exp = torch.empty_like(z)
    total = z.new_empty((batch, 1, height, width))
    entropy_ = z.new_empty((batch, height, width)) if with_entropy else None
    if z.device.type != "cpu":
        _softmax_into(z, exp, total, entropy_, dim=1)
        return exp, total, entropy_
    rows = max(1, _SLAB_ELEMENTS // (classes * width))
    for b in range(batch):
        for row in range(0, height, rows):
            band = slice(row, row + rows)
            _softmax_into(
                z[b, :, band], exp[b, :, band], total[b, :, band], None if entropy_ is None else entropy_[b, band], 0
            )
    return exp, total, entropy_


def _softmax_into(
    z: torch.Tensor, exp: torch.Tensor, total: torch.Tensor, entropy_: torch.Tensor | None, dim: int
) -> None:
    """:func:`softmax_terms` of ``z`` (class axis ``dim``) written into ``exp``, ``total`` and ``entropy_``."""
    shifted = z - z.amax(dim=dim, keepdim=True)  # z is never modified
    shifted.clamp_min_(_EXP_FLOOR)
    torch.exp(shifted, out=exp)
    torch.sum(exp, dim=dim, keepdim=True, out=total)
    if entropy_ is not None:
        plane = total.squeeze(dim)
        torch.log(plane, out=entropy_).sub_(shifted.mul_(exp).sum(dim=dim).div_(plane))


_EXP_FLOOR = -87.0  # exp(-87) = 1.65e-38 is a normal float32; below -87.34 exp returns subnormals (slow)
_SLAB_ELEMENTS = 1 << 17  # class values per slab on the CPU (512 KiB of float32: fits a core's L2 cache)


class EnsembleSampler:
    """Runs ``T x K`` passes of a tile batch and returns the per-tile accumulators.

    Args:
        module: the network (kept in eval mode).
        device: torch device.
        n_samples: T dropout samples per augmentation (1 when ``mc_dropout`` is False).
        mc_dropout: sample dropout masks; False runs the deterministic network.
        transforms: the K test-time transforms (identity only when TTA is off).
        dropout_layers: active dropout layers of ``module``.
        seed: base seed of the dropout masks.
        need_expected_entropy: also accumulate ``mean H[p_{k,t}]`` (mutual information, expected entropy).
        need_votes: also accumulate the vote shares of the classes (variation ratio).
        need_mutual_information: also return each tile's own mutual information (needs the expected entropy).
        memory_format: layout of the network input (the module's weights are converted by the caller).
        autocast: ``off``, ``bfloat16`` or ``float16`` (mixed precision of the forward passes, opt-in).
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        *,
        n_samples: int,
        mc_dropout: bool,
        transforms: Sequence[Transform],
        dropout_layers: Sequence[DropoutLayer],
        seed: int,
        need_expected_entropy: bool,
        cache_prefix: bool = True,
        need_votes: bool = False,
        need_mutual_information: bool = False,
        memory_format: torch.memory_format = torch.contiguous_format,
        autocast: str = "off",
    ) -> None:
        self.module = module
        self.memory_format = memory_format
        self.autocast_dtype = None if autocast == "off" else getattr(torch, autocast)
        self.device = device
        self.transforms = tuple(transforms)
        self.layers = list(dropout_layers) if mc_dropout else []
        # without active dropout every pass is identical: one pass gives the same p̄ and E[H]
        self.n_samples = n_samples if self.layers else 1
        self.seed = seed
        self.need_votes = need_votes
        self.need_mutual_information = need_mutual_information
        self.need_expected_entropy = need_expected_entropy or need_mutual_information
        self.scripted = any(layer.scripted for layer in self.layers)
        self.pass_seconds: dict[str, tuple[int, float]] = {}  # kind -> (passes, seconds): model compute only
        self.prefix_cache: PrefixCache | None = None
        self.cache_status = "off"
        if not self.layers:
            self.execution_path = "one deterministic pass per transform (no active dropout)"
        elif self.scripted or isinstance(module, torch.jit.ScriptModule):
            self.execution_path = "full passes (TorchScript modules cannot be split)"
        elif self.n_samples < 2:
            self.execution_path = "full passes (T = 1)"
        elif not cache_prefix:
            self.execution_path = "full passes (prefix caching disabled)"
        else:
            cache = PrefixCache(module, self.layers)
            if cache.applicable:
                self.prefix_cache = cache
                self.cache_status = "unverified"
                self.execution_path = "deterministic prefix once per tile batch, stochastic suffix T times"
            else:
                self.execution_path = "full passes (dropout at the network input: nothing deterministic to cache)"

        self._hooks: MCDropoutHooks | None = None
        self._run_stack: contextlib.ExitStack | None = None

    # -- a run: hooks and cache wrappers installed once, not per batch ---------------------------------------
    def __enter__(self) -> EnsembleSampler:
        stack = contextlib.ExitStack()
        try:
            if self.layers and not self.scripted:
                self._hooks = stack.enter_context(MCDropoutHooks(self.layers, self.seed))
            if self.scripted:
                stack.enter_context(ScriptedDropoutMode(self.layers))
            if self.prefix_cache is not None:
                stack.enter_context(self.prefix_cache)
        except BaseException:
            stack.close()
            raise
        self._run_stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._run_stack, self._hooks = self._run_stack, None, None
        if stack is not None:
            stack.close()

    @property
    def passes_per_tile(self) -> int:
        return self.n_samples * len(self.transforms)

    def _forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.autocast_dtype is None:
            output = self.module(x)
        else:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                output = self.module(x)
        logits = select_segmentation_output(output).float()
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def _sample_logits(self, x: torch.Tensor, keys: Sequence[tuple[int, ...]]) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        if not self.layers:
            return self._forward(x, size)
        if not self.scripted:
            hooks = self._hooks  # installed for the run by __enter__
            if hooks is None:
                raise RuntimeError("the dropout hooks are not installed: run the sampler inside `with sampler:`.")
            hooks.set_keys(keys)
            try:
                return self._forward(x, size)
            finally:
                hooks.set_keys(None)
        outputs = []
        devices = [self.device] if self.device.type == "cuda" else []
        for b, key in enumerate(keys):  # TorchScript: one seeded pass per element keeps batch independence
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(derive_seed(self.seed, *key))
                outputs.append(self._forward(x[b : b + 1], size))
        return torch.cat(outputs)

    def _timed(self, kind: str, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run one forward pass and add its wall time to ``pass_seconds[kind]`` (``full`` or ``replay``)."""
        start = time.perf_counter()
        logits = run()
        if logits.device.type == "cuda":
            torch.cuda.synchronize(logits.device)
        count, total = self.pass_seconds.get(kind, (0, 0.0))
        self.pass_seconds[kind] = (count + 1, total + time.perf_counter() - start)
        return logits

    def _pass(
        self, xt: torch.Tensor, keys: Sequence[tuple[int, ...]], cache: PrefixCache | None, t: int
    ) -> torch.Tensor:
        """One stochastic pass; with the prefix cache, pass 0 records and later passes replay the prefix."""

        def full() -> torch.Tensor:
            return self._timed("full", lambda: self._sample_logits(xt, keys))

        if cache is None:
            return full()
        try:
            with cache.pass_(xt, recording=(t == 0)):
                logits = self._timed("full" if t == 0 else "replay", lambda: self._sample_logits(xt, keys))
            if t == 1 and self.cache_status == "unverified":
                cache.verify(full, lambda: logits)
                self.cache_status = "on"
                self.execution_path += (
                    f" ({cache.last_replayed} module call(s) replayed, {cache.last_recomputed} recomputed per pass)"
                )
            return logits
        except PrefixCacheError as exc:
            self.cache_status = "off"
            self.execution_path = f"full passes (prefix cache refused: {exc})"
            cache.clear()
            return full()

    def __call__(
        self,
        batch: np.ndarray,
        tile_keys: Sequence[tuple[int, int]],
        is_cancelled: Callable[[], bool] | None = None,
        on_pass: Callable[[], None] | None = None,
    ) -> TileAccumulators:
        """Accumulate the passes of one batch.

        Args:
            batch: ``(B, bands, H, W) float32`` normalised tiles.
            tile_keys: ``(row, col)`` of each tile in the raster; with the seed they fix its dropout masks.
            is_cancelled: polled between passes; raises :class:`InferenceCancelled` when it returns True.
            on_pass: called after every pass (progress).

        Returns:
            :class:`TileAccumulators`: ``p̄``, ``mean H[p]`` (or None) and vote shares (or None).
        """
        if self._run_stack is None:  # a single call outside ``with sampler:``
            with self:
                return self(batch, tile_keys, is_cancelled, on_pass)
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        prob_sum: torch.Tensor | None = None
        entropy_sum: torch.Tensor | None = None
        vote_sum: torch.Tensor | None = None
        cache = self.prefix_cache if self.cache_status in ("unverified", "on") else None
        # the cache checks tensor version counters, which inference tensors do not keep
        with torch.no_grad() if cache is not None else torch.inference_mode():
            for transform in self.transforms:
                xt = transform.apply(x).contiguous(memory_format=self.memory_format)
                for t in range(self.n_samples):
                    if is_cancelled is not None and is_cancelled():
                        raise InferenceCancelled("cancelled by the user.")
                    # the transform's place among the eight: its masks are the same in every TTA set
                    keys = [(row, col, transform.key, t) for row, col in tile_keys]
                    logits = self._pass(xt, keys, cache, t)
                    if cache is not None and self.cache_status == "off":
                        cache = None  # verification failed: full passes from here on
                    exp, total, h = softmax_terms(logits, with_entropy=self.need_expected_entropy)
                    exp, total = transform.invert(exp), transform.invert(total)
                    if self.need_votes:  # argmax e = argmax p
                        vote = F.one_hot(exp.argmax(dim=1), exp.shape[1]).permute(0, 3, 1, 2).float()
                        vote_sum = vote if vote_sum is None else vote_sum.add_(vote)
                    # Σ p = Σ e / s in one step; e is a fresh tensor, ours to divide in place the first time
                    prob_sum = exp.div_(total) if prob_sum is None else prob_sum.addcdiv_(exp, total)
                    if h is not None:
                        h = transform.invert(h)
                        entropy_sum = h if entropy_sum is None else entropy_sum.add_(h)
                    if on_pass is not None:
                        on_pass()
                if cache is not None:
                    cache.clear()
        return self._reduce(prob_sum, entropy_sum, vote_sum)

    def _reduce(
        self, prob_sum: torch.Tensor | None, entropy_sum: torch.Tensor | None, vote_sum: torch.Tensor | None
    ) -> TileAccumulators:
        """Means over the ``N`` passes, and the tile's own mutual information ``H[p̄] - mean H[p_n]``.

        With one pass per tile (no active dropout and no TTA) the mutual information is 0 by definition; it is
        set to exactly 0 rather than computed as the difference of two roundings of the same entropy."""
        if prob_sum is None:
            raise RuntimeError("the sampler ran no pass (no transform).")
        count = float(self.passes_per_tile)
        mean = (prob_sum / count).cpu().numpy()
        expected = (entropy_sum / count).cpu().numpy() if entropy_sum is not None else None
        information = None
        if self.need_mutual_information and expected is not None:
            if self.passes_per_tile == 1:
                information = np.zeros_like(expected)
            else:
                information = np.maximum(entropy(mean, axis=1) - expected, np.float32(0.0))
        votes = (vote_sum / count).cpu().numpy() if vote_sum is not None else None
        return TileAccumulators(mean, expected, votes, information)

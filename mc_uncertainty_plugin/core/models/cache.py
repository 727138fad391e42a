"""Models kept loaded for the session, so a second run on the same model starts computing at once.

Loading a model costs seconds (building the architecture, reading the weights) while a run on a small raster may
take less. :class:`ModelCache` keeps the last few loaded models (2 by default), keyed by the *identity of the
files* they were read from — path, size and modification time of the model file, of the checkpoint (given, or
named by the config's ``checkpoint_path``) and of a TorchScript model's YAML sidecar — plus the device and the
loading options. Editing or replacing any of those files changes the key, so a stale model is never reused.

A cached model is *leased* to one run at a time: inference registers hooks on the network's dropout layers, so
two runs must not share one module. A second run that asks for a model already in use gets a private copy,
loaded for it and not cached. Every operation is thread-safe (QGIS runs Processing algorithms and tasks in
worker threads).

    with SESSION_MODELS.lease(model_key("model.yaml", "model.ckpt", "cpu"), lambda: load_model(...)) as lease:
        lease.value        # the model
        lease.reused       # True when it came from the cache

Pure Python (PyYAML only; no torch import here): the loader is the caller's.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import McUncertaintyError
from .yaml_config import Interpolator, read_config

__all__ = ["FileIdentity", "ModelKey", "Lease", "ModelCache", "model_key", "SESSION_MODELS"]

T = TypeVar("T")
_CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class FileIdentity:
    """What tells one version of a file from another: absolute path, size in bytes, modification time (ns)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity | None:
        """The identity of ``path`` now, or None when it does not exist."""
        absolute = os.path.realpath(os.fspath(path))
        try:
            status = os.stat(absolute)
        except OSError:
            return None
        return cls(absolute, status.st_size, status.st_mtime_ns)


@dataclass(frozen=True)
class ModelKey:
    """The identity of a loaded model.

    Attributes:
        model: the model file (YAML config or TorchScript).
        checkpoint: the checkpoint given by the caller (its path as given), or None.
        files: every other file the model is read from, in a fixed order (checkpoint, sidecar ...).
        device: the device the run asked for (``auto``, ``cpu``, ``cuda``).
        options: other loading options that change the result (e.g. trusted ``_target_`` prefixes).
    """

    model: FileIdentity | None
    checkpoint: str | None
    files: tuple[FileIdentity | None, ...]
    device: str
    options: tuple[str, ...] = ()


def _config_checkpoint(config_path: str) -> str | None:
    """The file named by a YAML config's top-level ``checkpoint_path``, relative to the config; None if none.

    Read with the loader's own bounded, lazily interpolating reader (a hostile config must not hang here)."""
    try:
        value = Interpolator(read_config(config_path)).get("checkpoint_path")
    except McUncertaintyError:  # an unreadable config is the loader's to report (and is not cached)
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        return None
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), os.fspath(value))


def _related_files(model_path: str, checkpoint: str | None) -> list[str]:
    """Files besides ``model_path`` whose content the loaded model depends on."""
    stem, suffix = os.path.splitext(model_path)
    if suffix.lower() in _CONFIG_SUFFIXES:
        named = checkpoint or _config_checkpoint(model_path)
        return [named] if named else []
    sidecars = [stem + s for s in _CONFIG_SUFFIXES]  # a TorchScript model's normalization and class names
    return ([checkpoint] if checkpoint else []) + sidecars


def model_key(
    model_path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | None = None,
    options: Sequence[str] = (),
) -> ModelKey:
    """The key of the model ``load_model(model_path, checkpoint)`` would load now, for ``device``.

    Args:
        model_path: MODEL, a YAML config or a TorchScript file.
        checkpoint: CHECKPOINT, or None (a YAML config's ``checkpoint_path`` is then followed).
        device: the requested device (None: the default, ``auto``).
        options: further loading options, compared as given.
    """
    path = os.fspath(model_path)
    given = os.fspath(checkpoint) if checkpoint else None
    files = tuple(FileIdentity.of(f) for f in _related_files(path, given))
    return ModelKey(FileIdentity.of(path), given, files, device or "auto", tuple(str(o) for o in options))


@dataclass
class _Entry(Generic[T]):
    value: T
    loaded_at: float
    in_use: bool = False


@dataclass(frozen=True)
class Lease(Generic[T]):
    """A model handed to one run.

    Attributes:
        value: the model.
        reused: True when it was loaded by an earlier run (no loading happened now).
        cached: True when it is (now) kept in the cache; False for a private copy.
        age_s: seconds since it was loaded.
    """

    value: T
    reused: bool
    cached: bool
    age_s: float = 0.0


@dataclass
class ModelCache(Generic[T]):
    """A bounded, thread-safe LRU of loaded models, leased to one run at a time.

    Args:
        capacity: how many models are kept; the least recently used idle one goes first.
        clock: seconds, monotonic (tests pass a fake one).
    """

    capacity: int = 2
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[ModelKey, _Entry[T]] = field(default_factory=OrderedDict, init=False, repr=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {self.capacity}.")

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[ModelKey]:
        """The cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        """Forget every model (leased ones stay with their runs)."""
        with self._lock:
            self._entries.clear()

    def _take(self, key: ModelKey) -> _Entry[T] | None:
        """The idle cached entry of ``key``, marked in use; None when absent or busy."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.in_use:
                return None
            entry.in_use = True
            self._entries.move_to_end(key)
            return entry

    def _store(self, key: ModelKey, value: T) -> _Entry[T] | None:
        """Cache ``value`` under ``key`` (in use), evicting idle entries; None when it cannot be kept."""
        with self._lock:
            if key in self._entries or self.capacity == 0:
                return None  # another run loaded it meanwhile (and uses it), or nothing is kept
            entry = _Entry(value, self.clock(), in_use=True)
            self._entries[key] = entry
            for old_key in [k for k, e in self._entries.items() if not e.in_use]:
                if len(self._entries) <= self.capacity:
                    break
                del self._entries[old_key]
            if len(self._entries) > self.capacity:  # every other entry is in use: keep this one private
                del self._entries[key]
                return None
            return entry

    def _release(self, key: ModelKey, entry: _Entry[T]) -> None:
        with self._lock:
            entry.in_use = False

    @contextmanager
    def lease(self, key: ModelKey, load: Callable[[], T]) -> Iterator[Lease[T]]:
        """The model of ``key`` for the duration of the ``with`` block: cached, or loaded with ``load()``.

        Raises:
            Whatever ``load()`` raises; nothing is cached then.
        """
        entry = self._take(key)
        if entry is not None:
            lease = Lease(entry.value, reused=True, cached=True, age_s=self.clock() - entry.loaded_at)
        else:
            value = load()
            entry = self._store(key, value)
            lease = Lease(value, reused=False, cached=entry is not None)
        try:
            yield lease
        finally:
            if entry is not None:
                self._release(key, entry)


SESSION_MODELS: ModelCache[Any] = ModelCache(capacity=2)  # the models of this process (the QGIS session)

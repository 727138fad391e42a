"""Keep freed memory for reuse while a run goes on (glibc's malloc, i.e. Linux; elsewhere nothing changes).

A run allocates and frees the same large buffers for every batch (activations, probabilities, blended rows). By
default glibc returns a freed buffer of more than a few MiB to the kernel, either because it was mapped on its own
(``M_MMAP_THRESHOLD``, adjusted at run time, at most 32 MiB) or because it sat at the top of the heap beyond
``M_TRIM_THRESHOLD``, or, in a thread other than the main one (QGIS tasks, Dask workers), because a heap of the
thread's arena became empty and was unmapped whole (unless ``M_TOP_PAD`` is larger than what it held); the next
batch then faults the pages in again and the kernel zeroes each one. On the sample model (512 px tiles, T = 10,
one torch thread) that was a fifth of the run's time spent in the kernel, and two worker processes doing it at
once slowed each other further (the README's scale-out benchmark).

:func:`reuse_freed_memory` sets, while at least one run is going on in the process, allocations up to 32 MiB to
come from the heap, freed memory to stay in it, and a 64 MiB pad that keeps threads' heaps mapped; when the last
run ends, the pad is glibc's default again, the trim threshold becomes 64 MiB (what glibc's own adjustment
reaches after such a workload) and ``malloc_trim(0)`` hands the free memory back to the system. A run holds the
same buffers as before; it only stops returning and refetching them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["reuse_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest dynamic threshold on 64-bit systems
_TRIM_DURING_RUN = 2**31 - 1  # mallopt takes an int: never trim while a run goes on
_TRIM_AFTER_RUN = 2 * _MMAP_THRESHOLD
_PAD_DURING_RUN = 2 * _MMAP_THRESHOLD  # a thread arena's heap is at most 64 MiB: never unmapped while padded so
_DEFAULT_PAD = 128 * 1024  # glibc's DEFAULT_TOP_PAD

_lock = threading.Lock()
_runs = 0


def _glibc() -> Any:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has mallopt as a stub)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Within the block (and any other run's, counted per process), freed memory stays for reuse (module
    docstring)."""
    global _runs
    if _LIBC is None:
        yield
        return
    with _lock:
        if _runs == 0:
            _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _TRIM_DURING_RUN)
            _LIBC.mallopt(_M_TOP_PAD, _PAD_DURING_RUN)
        _runs += 1
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0:
                _LIBC.mallopt(_M_TOP_PAD, _DEFAULT_PAD)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER_RUN)
                _LIBC.malloc_trim(0)

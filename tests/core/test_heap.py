"""Freed memory stays for reuse during a run (no page faults for buffers freed and allocated again) and goes back
to the system after it; glibc only."""

import subprocess
import sys
from pathlib import Path

import pytest

from mc_uncertainty_plugin.core.inference import heap

ROOT = Path(__file__).resolve().parents[2]

# A run's pattern: a batch's buffers (6 x 20 MiB, under the 32 MiB mapping limit) touched and freed, 10 times.
# Prints the minor page faults of the batches after the first, and the resident memory (MiB) inside the block with
# the buffers freed, and after it.
_SCRIPT = r"""
import contextlib, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from mc_uncertainty_plugin.core.inference.heap import reuse_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

def batches():
    for _ in range(10):
        buffers = [np.ones(20 * 2**20, dtype=np.uint8) for _ in range(6)]
        del buffers
        yield

block = reuse_freed_memory() if sys.argv[2] == "reuse" else contextlib.nullcontext()
with block:
    steps = batches()
    next(steps)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in steps:
        pass
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    inside = rss_mib()
print(faults, inside, rss_mib())
"""


def _run(mode: str) -> tuple[int, float, float]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(ROOT), mode], capture_output=True, text=True, timeout=120, check=True
    )
    faults, inside, after = done.stdout.split()
    return int(faults), float(inside), float(after)


@pytest.mark.skipif(heap._LIBC is None, reason="glibc only")
def test_freed_buffers_are_reused_in_a_run_and_returned_after_it():
    default_faults, _, _ = _run("default")
    faults, inside, after = _run("reuse")
    pages = 9 * 6 * 20 * 2**20 // 4096  # what refetching every batch's buffers would cost
    assert faults < pages // 100 and faults < default_faults // 10
    assert inside > 100  # the freed buffers are kept for the next batch …
    assert after < inside - 100  # … and returned when the run ends


def test_runs_are_counted_so_the_last_one_restores(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append(("mallopt", option, value))

        def malloc_trim(self, pad):
            calls.append(("trim", pad))

    monkeypatch.setattr(heap, "_LIBC", FakeLibc())
    with heap.reuse_freed_memory():
        with heap.reuse_freed_memory():  # a second run in another thread
            assert len(calls) == 2
        assert len(calls) == 2  # the first run still goes on: nothing restored
    assert calls == [
        ("mallopt", heap._M_MMAP_THRESHOLD, 32 * 2**20),
        ("mallopt", heap._M_TRIM_THRESHOLD, 2**31 - 1),
        ("mallopt", heap._M_TRIM_THRESHOLD, 64 * 2**20),
        ("trim", 0),
    ]

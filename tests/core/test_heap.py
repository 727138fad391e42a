"""Freed memory stays for reuse during a run (no page faults for buffers freed and allocated again) and goes back
to the system after it; glibc only."""

import subprocess
import sys
from pathlib import Path

import pytest

from mc_uncertainty_plugin.core.inference import heap

ROOT = Path(__file__).resolve().parents[2]

# A run's pattern: a batch's buffers (6 x 20 MiB, under the 32 MiB mapping limit) touched and freed, 10 times, in
# the main thread or in another (QGIS tasks and Dask workers run there). Prints the minor page faults of the batches
# after the first, and the resident memory (MiB) inside the block with the buffers freed, and after it.
_SCRIPT = r"""
import contextlib, resource, sys, threading
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

def run():
    block = reuse_freed_memory() if sys.argv[2] == "reuse" else contextlib.nullcontext()
    with block:
        steps = batches()
        next(steps)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in steps:
            pass
        result.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        result.append(rss_mib())

result = []
if sys.argv[3] == "thread":
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
else:
    run()
print(*result, rss_mib())
"""


def _run(mode: str, thread: str) -> tuple[int, float, float]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(ROOT), mode, thread],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    faults, inside, after = done.stdout.split()
    return int(faults), float(inside), float(after)


@pytest.mark.skipif(heap._LIBC is None, reason="glibc only")
@pytest.mark.parametrize("thread", ["main", "thread"])
def test_freed_buffers_are_reused_in_a_run_and_returned_after_it(thread):
    default_faults, _, _ = _run("default", thread)
    faults, inside, after = _run("reuse", thread)
    pages = 9 * 6 * 20 * 2**20 // 4096  # what refetching every batch's buffers would cost
    assert faults < pages // 100 and faults < default_faults // 10
    assert inside > 100  # the freed buffers are kept for the next batch …
    # … and returned when the run ends, down to glibc's usual 64 MiB trim threshold (a thread's arena keeps up to it)
    assert after < inside - 50


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
            assert len(calls) == 3
        assert len(calls) == 3  # the first run still goes on: nothing restored
    assert calls == [
        ("mallopt", heap._M_MMAP_THRESHOLD, 32 * 2**20),
        ("mallopt", heap._M_TRIM_THRESHOLD, 2**31 - 1),
        ("mallopt", heap._M_TOP_PAD, 64 * 2**20),
        ("mallopt", heap._M_TOP_PAD, 128 * 1024),
        ("mallopt", heap._M_TRIM_THRESHOLD, 64 * 2**20),
        ("trim", 0),
    ]

"""``SCHEDULER=local:N``: a Dask cluster of N worker processes on this machine, hosted by a helper process.

The plugin never starts worker processes itself: inside QGIS ``sys.executable`` is the QGIS program, and
spawning it (what multiprocessing does on Windows and macOS) opens new QGIS windows. Instead
:class:`LocalClusterProcess` runs ``python -m mc_uncertainty_plugin.core.distributed local-cluster --workers N``
with a real Python interpreter (:func:`worker_python`: the running one when it is a Python, else that of the
configured environment), which hosts a ``LocalCluster`` (processes, one task thread each), prints its address and
stops it when its standard input closes: when the plugin is done, or if the plugin's process dies.

In the helper, Dask's nanny is told not to export ``MALLOC_TRIM_THRESHOLD_=65536`` to the workers (a block sets
glibc's thresholds itself while it runs, :mod:`..inference.heap`, so this only keeps the workers' environment
plain; the nanny would also leak it into the process hosting it: the helper, not QGIS) and to export
``MALLOC_ARENA_MAX=1`` (:data:`WORKER_ENVIRONMENT`); ``OMP_NUM_THREADS=1`` stays, the blocks set torch's threads
themselves. Dask's housekeeping that only feeds diagnostics is slowed down
(:data:`QUIET_CONFIG`: its statistical profiler off, 1-2 s intervals) so it leaves the cores to the blocks, and the
helper imports the blocks' code while the workers start: Dask's scheduler unpickles each task it is sent.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ..errors import ParameterError

__all__ = [
    "ADDRESS_PREFIX",
    "QUIET_CONFIG",
    "WORKER_ENVIRONMENT",
    "BLOCK_MODULE",
    "LocalClusterProcess",
    "worker_python",
    "serve",
]

ADDRESS_PREFIX = "MCU_SCHEDULER "
BLOCK_MODULE = "mc_uncertainty_plugin.core.distributed.dask_driver"  # what a submitted block's task imports
# Dask's periodic housekeeping, slowed down where it only feeds diagnostics: with the defaults the helper (scheduler
# and nannies) took a tenth of a core and every worker's event loop woke 50 times a second, on the cores the blocks
# compute on. Memory is still checked every second.
QUIET_CONFIG = {
    "distributed.worker.profile.enabled": False,  # samples the task thread's stack every 10 ms, deep in torch
    "distributed.admin.tick.interval": "1s",  # event-loop latency checks (20 ms)
    "distributed.admin.system-monitor.interval": "2s",  # dashboard metrics (500 ms)
    "distributed.admin.system-monitor.gil.enabled": False,  # GIL contention sampling every 1 ms (gilknocker)
    "distributed.worker.memory.monitor-interval": "1s",  # nanny and worker memory checks (100 ms)
}
# A block computes in a task thread, which glibc gives an arena of its own: heaps of at most 64 MiB that it maps,
# grows and releases as a batch's buffers come and go. Measured on a 4096 x 2048 block (sample model, T = 10): 621k
# page faults and 1.7 s in the kernel in a worker against 228k and 0.6 s in a process's main thread; with one arena
# (the main one, which keeps freed memory while a run goes on: ..inference.heap) 221k-242k and 0.7-1.0 s. The worker's other
# threads only wait on the network, so sharing the arena costs nothing measurable.
# What Dask's nanny exports to the workers it starts (None: not exported; see the module docstring).
WORKER_ENVIRONMENT: dict[str, str | None] = {"MALLOC_TRIM_THRESHOLD_": None, "MALLOC_ARENA_MAX": "1"}
_PACKAGE_PARENT = Path(__file__).resolve().parents[3]  # the folder holding mc_uncertainty_plugin/


def _venv_python(env_path: str) -> str | None:
    root = Path(env_path)
    for candidate in (root / "bin" / "python", root / "Scripts" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    return None


def worker_python(executable: str | None = None) -> tuple[str, list[str]]:
    """The Python interpreter for the helper and its workers, and folders to add to its ``PYTHONPATH``.

    Inside QGIS (``qgis`` is imported): the interpreter of the configured environment (a virtual environment:
    its own Python) — ``sys.executable`` there is the QGIS program, or whatever ``python3`` comes first on the
    PATH, which need not have torch or Dask. Elsewhere (a script, pytest, a Python console): the running
    interpreter. Else QGIS's own Python with the environment's ``site-packages`` on the path.

    Raises:
        ParameterError: naming SCHEDULER when no interpreter is found.
    """
    executable = sys.executable if executable is None else executable
    inside_qgis = "qgis.core" in sys.modules
    if not inside_qgis and executable and Path(executable).name.lower().startswith("python"):
        return executable, []
    from ... import installer, python_env  # pure Python; they read QGIS settings only inside QGIS

    environments = python_env.configured_environments()
    for _source, env_path in environments:
        found = _venv_python(env_path)
        if found:
            return found, []
    if executable and Path(executable).name.lower().startswith("python"):
        return executable, []
    base = installer.find_python()
    if base:
        return base, [str(p) for _s, env in environments for p in python_env.site_packages_dirs(env)]
    raise ParameterError(
        "SCHEDULER",
        "local:N",
        "find a Python interpreter to run the workers (configure the "
        "plugin's Python environment, or start a Dask cluster yourself and give its address)",
    )


class LocalClusterProcess:
    """A helper process hosting a local Dask cluster (module docstring); a context manager.

    Args:
        workers: worker processes.
        python: the interpreter (default :func:`worker_python`).
        timeout: seconds to wait for the address.

    Attributes:
        address: the scheduler's address once started.
    """

    def __init__(self, workers: int, python: str | None = None, timeout: float = 120.0) -> None:
        if workers < 1:
            raise ParameterError("SCHEDULER", f"local:{workers}", "ask for at least one worker (local:N, N >= 1)")
        self.workers = workers
        self.python, self.extra_path = (python, []) if python else worker_python()
        self.timeout = timeout
        self.address: str | None = None
        self._process: subprocess.Popen | None = None
        self._errors: list[str] = []
        self._readers: list[threading.Thread] = []

    def _environment(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONSTARTUP", "MALLOC_TRIM_THRESHOLD_")
        }
        paths = [str(_PACKAGE_PARENT)] + self.extra_path + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> str:
        """Start the helper and return the scheduler's address.

        Raises:
            ParameterError: naming SCHEDULER when the helper does not report an address in time.
        """
        command = [
            self.python,
            "-m",
            "mc_uncertainty_plugin.core.distributed",
            "local-cluster",
            "--workers",
            str(self.workers),
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._environment(),
            cwd=str(_PACKAGE_PARENT),
        )
        found: list[str] = []
        address_read = threading.Event()
        reader = threading.Thread(
            target=self._read_address, args=(self._process.stdout, found, address_read), daemon=True
        )
        reader.start()
        errors = threading.Thread(target=self._keep_errors, args=(self._process.stderr,), daemon=True)
        errors.start()
        self._readers = [reader, errors]
        address_read.wait(self.timeout)
        if not found:
            self.stop()
            detail = " ".join(self._errors[-5:])[-600:] or "no output"
            raise ParameterError(
                "SCHEDULER", f"local:{self.workers}", f"start a local cluster with {self.python} ({detail})"
            )
        self.address = found[0]
        return self.address

    def _read_address(self, stream: IO[str], found: list[str], address_read: threading.Event) -> None:
        """The address line, then the rest of the helper's output: its workers inherit the pipe, and one that
        prints (a model's ``forward`` may) would block once the pipe is full if nobody read it."""
        for line in stream:
            if not found and line.startswith(ADDRESS_PREFIX):
                found.append(line[len(ADDRESS_PREFIX) :].strip())
                address_read.set()
            else:
                self._errors.append(line.strip())
                del self._errors[:-50]
        address_read.set()

    def _keep_errors(self, stream: IO[str]) -> None:
        for line in stream:
            self._errors.append(line.strip())
            del self._errors[:-50]

    def stop(self) -> None:
        """Close the helper's input (it stops its cluster and exits); kill it if it does not within 30 s."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait(10)
        for reader in self._readers:  # the helper is gone: its pipes are at their end
            reader.join(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(workers: int, threads: int = 1, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> None:
    """The helper's side: host a ``LocalCluster`` of ``workers`` processes until ``stdin`` closes."""
    import dask
    from distributed import LocalCluster

    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    dask.config.set(
        {
            **{f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_ENVIRONMENT.items()},
            **QUIET_CONFIG,
        }
    )
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    # The scheduler unpickles every submitted task, importing the block's module (and torch with it): done here,
    # while the workers start, rather than when the first job waits for its first block.
    importer = threading.Thread(target=importlib.import_module, args=(BLOCK_MODULE,), daemon=True)
    importer.start()
    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=None) as cluster:
        importer.join()
        stdout.write(f"{ADDRESS_PREFIX}{cluster.scheduler_address}\n")
        stdout.flush()
        for _line in stdin:  # until the plugin closes our input, or dies
            pass


def main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="local-cluster", description="Host a local Dask cluster until stdin closes.")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="task threads per worker process")
    args = parser.parse_args(argv)
    serve(args.workers, args.threads)
    return 0

"""The workers of a Dask cluster as a job needs them: connected, checked, given the model and their threads.

- Workers must import this plugin and have the client's plugin, torch and segmentation-models-pytorch versions
  (checked before anything is submitted, and again by each task). The scheduler must import the plugin too: it
  unpickles every task.
- The model: workers read the model files by their paths when they can (a shared file system); otherwise the
  files are shipped to every worker, also those joining later (Dask's ``UploadFile`` plugin), and loaded there
  with the same safe loading.
- Torch threads per worker process: 1 in exact mode, else the host's cores divided by the task threads of all
  workers on that host (measured here: two workers of two threads each on two cores ran 3x slower than with one
  each).
- At the end, dead writers' temporaries are removed by a worker on each host, and by the client.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from ..errors import McUncertaintyError, MissingDependencyError, ParameterError
from ..io.output_files import remove_stale_temporaries
from .block_task import VersionMismatchError, shipped_name
from .job import Job, ModelBundle, local_versions

__all__ = [
    "connect",
    "worker_slots",
    "check_scheduler",
    "check_workers",
    "ship_model_files",
    "torch_threads",
    "clean_everywhere",
]


def connect(address: str, timeout: float = 30.0) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address`` with at least one worker.

    Raises:
        ParameterError: naming SCHEDULER when the scheduler cannot be reached or has no worker.
    """
    try:
        from distributed import Client
    except ImportError:
        raise MissingDependencyError(
            "SCHEDULER needs Dask distributed in the plugin's Python environment: pip install "
            "'dask[distributed]==2026.8.0' there (or leave SCHEDULER empty)."
        ) from None
    try:
        client = Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ParameterError("SCHEDULER", address, f"be the address of a reachable Dask scheduler ({error})") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError):
        client.close()
        raise ParameterError(
            "SCHEDULER", address, f"have at least one worker (none joined within {timeout:.0f} s)"
        ) from None
    return client


def worker_slots(client: Any) -> int:
    """Blocks that can run at once: the workers' task threads."""
    return max(1, sum(client.nthreads().values()))


def check_scheduler(client: Any) -> None:
    """Refuse a scheduler that cannot import the plugin: Dask's scheduler unpickles every submitted task.

    Raises:
        McUncertaintyError: naming what to install where.
    """
    try:
        client.run_on_scheduler(local_versions)
    except Exception as error:  # the scheduler fails to unpickle the call
        raise McUncertaintyError(
            f"The Dask scheduler cannot import this plugin ({type(error).__name__}: {error}); Dask's scheduler "
            "unpickles every task, so give it the plugin (e.g. its folder's parent on PYTHONPATH) and torch, "
            "like the workers."
        ) from None


def check_workers(client: Any, job: Job) -> None:
    """Refuse a scheduler or workers that cannot import the plugin, and workers with other versions."""
    check_scheduler(client)
    try:
        found = client.run(local_versions)
    except Exception as error:  # a worker that cannot import the plugin fails to unpickle the call
        raise McUncertaintyError(
            f"Dask workers cannot run this plugin ({type(error).__name__}: {error}); give them "
            "the plugin (e.g. its folder's parent on PYTHONPATH), torch and "
            "segmentation-models-pytorch of the same versions as here."
        ) from None
    differing = {address: versions for address, versions in found.items() if versions != job.versions}
    if differing:
        address, versions = next(iter(differing.items()))
        raise VersionMismatchError(
            f"{len(differing)} Dask worker(s) have other versions than the client, e.g. "
            f"{address}: {versions} (client: {job.versions}); install the same plugin, torch "
            "and segmentation-models-pytorch on every worker."
        )


def _files_present(files: list[tuple[str, int]]) -> bool:
    return all(os.path.isfile(path) and os.path.getsize(path) == size for path, size in files)


def ship_model_files(client: Any, bundle: ModelBundle, force: bool | None) -> list[str]:
    """Ship the model files to the workers unless all of them read the paths (or ``force`` says); returns the
    names of the worker plugins registered."""
    if force is None:
        present = client.run(_files_present, [(f.path, f.size) for f in bundle.files])
        force = not all(present.values())
    if not force:
        return []
    from distributed.diagnostics.plugin import UploadFile

    names = []
    for file in bundle.files:
        plugin = UploadFile(file.path, load=False)
        plugin.filename = shipped_name(bundle, file)
        plugin.name = f"mcu-model-{bundle.digest[:16]}-{file.role}"
        client.register_plugin(plugin)
        names.append(plugin.name)
    return names


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def torch_threads(client: Any, exact: bool) -> dict[str, int]:
    """Worker address -> torch threads: 1 in exact mode; else the host's cores shared by the task threads of all
    workers on that host (several workers on one machine must not each take every core)."""
    if exact:
        return {}
    cores = client.run(_cores)
    per_host: dict[str, int] = {}
    for address, threads in client.nthreads().items():
        host = urlparse(address).hostname or address
        per_host[host] = per_host.get(host, 0) + threads
    return {
        address: max(1, count // per_host.get(urlparse(address).hostname or address, 1))
        for address, count in cores.items()
    }


def _clean_folders(folders: list[str]) -> list[str]:
    """Remove the temporaries of dead writers of this host (runs on every worker, and on the client)."""
    return [path for folder in folders for path in remove_stale_temporaries(folder)]


def clean_everywhere(client: Any, job: Job) -> None:
    folders = sorted({job.block_folder(spec.key) for spec in job.plan.outputs})
    try:
        client.run(_clean_folders, folders)
    except Exception:  # noqa: BLE001 - workers may be gone; the client cleans what it can
        pass
    _clean_folders(folders)

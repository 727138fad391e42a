"""Scale out: one run over a large raster as independent blocks, on Dask distributed or as a job array.

A block is a rectangle of the raster computed exactly as the whole run computes those pixels (the engine's
:func:`~..inference.engine.run_region`): with one torch thread per process, the mosaic of the blocks equals the
single-process run bit for bit. Modules, in the order a run uses them:

- :mod:`.blocks` — the block layout, its alignment and the automatic block size; the halo overhead;
- :mod:`.serialise` — a run plan as JSON and back;
- :mod:`.job` — the job (plan, layout, model files, fingerprint), its files on disk and the block records;
- :mod:`.block_task` — one block where it runs: versions, model, compute, record;
- :mod:`.seams` — the windows crossing cuts, computed once on Dask for all the blocks they touch;
- :mod:`.workers` — a Dask cluster's workers: connect, check versions, ship the model, torch threads, clean up;
- :mod:`.dask_driver` — the blocks and seam tasks as Dask futures: progress, cancel, retries;
- :mod:`.local_cluster` — ``SCHEDULER=local:N``: a helper process hosting a local cluster;
- :mod:`.mosaic` — VRTs with the run's metadata, assembly into one GeoTIFF, publishing together;
- :mod:`.run` — :func:`run_job`, the entry point (the processors call it when SCHEDULER is set);
- ``__main__`` — ``plan`` / ``run-block`` / ``assemble`` for clusters without a Dask scheduler.

Nothing here imports Dask until a job runs on it: the plugin works without Dask installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_job": "run",
    "parse_scheduler": "run",
    "finish_job": "run",
    "JobProgress": "dask_driver",
    "BlockFailedError": "dask_driver",
    "VersionMismatchError": "block_task",
    "run_block": "block_task",
    "BlockLayout": "blocks",
    "choose_layout": "blocks",
    "halo_overhead": "blocks",
    "parse_block_size": "blocks",
    "Job": "job",
    "LocalClusterProcess": "local_cluster",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

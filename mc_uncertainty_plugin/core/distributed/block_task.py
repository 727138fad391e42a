"""One block, where it runs (a Dask worker, or a job-array task): check, load the model, compute, record.

:func:`run_block` is the whole of a block's work and knows nothing of Dask: the Dask driver wraps it with a
cancel flag and progress messages, the ``run-block`` command calls it as is.

1. versions: the worker's plugin / torch / segmentation-models-pytorch must be the client's (another version may
   compute other numbers);
2. resume: a block whose record matches the job is not computed again;
3. the model: loaded from the job's files with the same safe loading as anywhere (``weights_only``, the
   ``_target_`` allow-list the client trusted), from their paths when this machine reads them with the recorded
   contents, otherwise from the copies shipped to the worker; kept for the next block;
4. compute: :func:`~..inference.engine.run_region` into the block's files (temporary names, renamed when
   complete, so a killed worker leaves no file that looks complete), blending the windows other tasks computed
   for it (:func:`run_windows`, on Dask) as given;
5. record: a block without a valid pixel keeps no file; the record is written last.

One block runs at a time in a process (the model object is shared); give workers one thread each and torch
the cores (exact mode: one torch thread per process, one process per core).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable

from ..errors import McUncertaintyError, ModelLoadError
from ..inference.engine import RunCallbacks, run_region
from ..inference.plan import region_batches
from ..inference.tiling import Window
from ..inference.window_outputs import WindowKey, WindowOutput, compute_windows
from ..models.loading import LoadedModel, load_model
from .job import BlockRecord, Job, ModelBundle, ModelFile, local_versions, read_record, sha256_of, write_record

__all__ = [
    "VersionMismatchError",
    "BlockOutcome",
    "check_versions",
    "shipped_name",
    "model_file_paths",
    "load_bundle",
    "block_windows",
    "run_windows",
    "run_block",
]

_MODELS: dict[str, LoadedModel] = {}  # bundle digest -> model (the last one loaded)
_RUN_LOCK = threading.Lock()  # one block at a time per process
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 already computed here


class VersionMismatchError(McUncertaintyError):
    """A worker has another version of the plugin, torch or segmentation-models-pytorch than the client."""


@dataclass(frozen=True)
class BlockOutcome:
    """What one call of :func:`run_block` did: ``resumed`` when the block was already done."""

    record: BlockRecord
    resumed: bool
    messages: tuple[str, ...] = field(default_factory=tuple)
    computed: int = 0  # windows this call ran through the model (not those given, not the nodata ones)


def check_versions(expected: Mapping[str, str], where: str = "this worker") -> None:
    """Refuse to compute with versions other than the client's.

    Raises:
        VersionMismatchError: naming each differing package and both versions.
    """
    here = local_versions()
    differing = [
        f"{name} {here.get(name)} (client: {version})"
        for name, version in expected.items()
        if here.get(name) != version
    ]
    if differing:
        raise VersionMismatchError(
            f"{where} has other versions than the client: {', '.join(differing)}; install the "
            "same plugin, torch and segmentation-models-pytorch on every worker."
        )


def shipped_name(bundle: ModelBundle, file: ModelFile) -> str:
    """The name of a model file shipped to workers: the bundle's digest keeps jobs apart, and a TorchScript file
    and its YAML keep one stem."""
    return f"mcu-{bundle.digest[:16]}-{os.path.basename(file.path)}"


def _matches(path: str, file: ModelFile) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    if info.st_size != file.size:
        return False
    key = (path, info.st_size, info.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_of(path)
    return _VERIFIED[key] == file.sha256


def model_file_paths(bundle: ModelBundle, shipped_folder: str | None = None) -> dict[str, str]:
    """Role -> path of each model file with the recorded contents: the original paths when all of them match
    here, else the shipped copies in ``shipped_folder``.

    Raises:
        ModelLoadError: neither the paths nor shipped copies hold the recorded files.
    """
    if all(_matches(f.path, f) for f in bundle.files):
        return {f.role: f.path for f in bundle.files}
    if shipped_folder:
        shipped = {f.role: os.path.join(shipped_folder, shipped_name(bundle, f)) for f in bundle.files}
        if all(_matches(shipped[f.role], f) for f in bundle.files):
            return shipped
    unreadable = next(f.path for f in bundle.files if not _matches(f.path, f))
    raise ModelLoadError(
        f"MODEL: this worker cannot read '{unreadable}' with the contents the client loaded, and no "
        "copy was shipped; put the model on a path every worker reads, or let the job ship it."
    )


def load_bundle(bundle: ModelBundle, shipped_folder: str | None = None) -> LoadedModel:
    """The job's model, loaded here once (safe loading with the client's allow-list) and kept for later blocks."""
    model = _MODELS.get(bundle.digest)
    if model is None:
        paths = model_file_paths(bundle, shipped_folder)
        model = load_model(paths["model"], paths.get("checkpoint"), allowed_prefixes=bundle.allowed_prefixes)
        _MODELS.clear()
        _MODELS[bundle.digest] = model
    return model


def block_windows(job: Job, index: int) -> int:
    """Windows block ``index`` runs (those of the global grid that touch it)."""
    plan = job.plan
    batches = region_batches(plan.grid, job.layout.region(index), plan.config.panel_width, plan.batch_size)
    return sum(len(batch.windows) for batch in batches)


def _prepare(job: Job, torch_threads: int | None, shipped_folder: str | None) -> LoadedModel:
    """Torch's threads for this process and the job's model (call holding ``_RUN_LOCK``)."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    return load_bundle(job.model, shipped_folder)


def run_windows(
    job: Job,
    windows: Sequence[Window],
    *,
    is_cancelled: Callable[[], bool] | None = None,
    torch_threads: int | None = None,
    shipped_folder: str | None = None,
) -> dict[WindowKey, WindowOutput]:
    """The results of ``windows`` of ``job`` for the blocks that share them (:mod:`.seams`); nodata windows are
    left out. Same checks and model loading as a block; nothing is written."""
    check_versions(job.versions)
    with _RUN_LOCK:
        model = _prepare(job, torch_threads, shipped_folder)
        return compute_windows(job.plan, model, windows, is_cancelled)


def run_block(
    job: Job,
    index: int,
    *,
    is_cancelled: Callable[[], bool] | None = None,
    report: Callable[[int, int], None] | None = None,
    torch_threads: int | None = None,
    shipped_folder: str | None = None,
    given: Mapping[WindowKey, WindowOutput] | None = None,
) -> BlockOutcome:
    """Compute block ``index`` of ``job`` into its files and record it (module docstring).

    Args:
        job: the job.
        index: the block, row-major from 0.
        is_cancelled: polled between passes; a cancel removes the block's partial files.
        report: receives ``(windows done, windows planned)`` of this block as it runs.
        torch_threads: torch threads of this process (1: exact mode); None leaves torch's setting.
        shipped_folder: where shipped model copies are (a Dask worker's local directory).
        given: results of windows computed once for several blocks (:func:`run_windows`), blended as they are.

    Raises:
        VersionMismatchError, ModelLoadError, RasterIOError, InferenceError, InferenceCancelled.
    """
    check_versions(job.versions)
    done = read_record(job, index)
    if done is not None:
        return BlockOutcome(done, True)
    started = time.perf_counter()
    region = job.layout.region(index)
    planned = block_windows(job, index)
    messages: list[str] = []

    def progress(percent: float) -> None:
        if report is not None:
            report(int(planned * percent / 100.0), planned)

    with _RUN_LOCK:
        model = _prepare(job, torch_threads, shipped_folder)
        paths = {spec.key: job.block_file(spec.key, index) for spec in job.plan.outputs}
        for path in paths.values():
            os.makedirs(os.path.dirname(path), exist_ok=True)
        callbacks = RunCallbacks(progress, is_cancelled, messages.append, lambda _warning: None)  # counted below
        result = run_region(job.plan, model, region, paths, callbacks, given)
    files = {key: os.path.basename(path) for key, path in result.paths.items()}
    if result.valid_pixels == 0 and result.nonfinite_pixels == 0:  # nodata only: the mosaic reads nodata here
        for path in result.paths.values():
            for leftover in (path, path + ".aux.xml"):
                if os.path.exists(leftover):
                    os.remove(leftover)
        files = {}
    sizes = {key: os.path.getsize(os.path.join(os.path.dirname(paths[key]), name)) for key, name in files.items()}
    record = BlockRecord(
        job.fingerprint,
        index,
        region,
        files,
        sizes,
        result.windows,
        result.skipped,
        result.valid_pixels,
        result.nonfinite_pixels,
        time.perf_counter() - started,
        result.execution_path,
        result.passes_per_window,
    )
    write_record(job, record)
    if report is not None:
        report(planned, planned)
    return BlockOutcome(record, False, tuple(messages), result.computed)

"""The blocks of a job on Dask distributed, with the futures API: one task per block.

- Workers: every worker must import this plugin and have the client's plugin, torch and
  segmentation-models-pytorch versions (checked before anything is submitted, and again by each block). The
  scheduler must import the plugin too: it unpickles every task (checked before anything is submitted). The
  nanny's ``MALLOC_TRIM_THRESHOLD_`` does not matter: a block sets glibc's thresholds while it runs
  (:mod:`..inference.heap`).
- The model: workers read the model files by their paths when they can (a shared file system); otherwise the
  files are shipped to every worker, also those joining later (Dask's ``UploadFile`` plugin), and loaded there
  with the same safe loading.
- Torch threads per worker process: 1 in exact mode (outputs bit for bit those of an in-process run with one
  torch thread), else the host's cores divided by the task threads of all workers on that host (measured here:
  two workers of two threads each on two cores ran 3x slower than with one each). Set explicitly in each block:
  Dask's nanny exports ``OMP_NUM_THREADS=1`` to workers.
- Progress: each running block sends ``(windows done, planned)`` at most every half second (worker events,
  :meth:`distributed.Worker.log_event`); the client turns them into :class:`JobProgress` with an ETA.
- Cancel: a distributed ``Event`` that running blocks poll (they stop within a pass and remove their partial
  files); blocks not started are cancelled; finished blocks are kept for a rerun to resume.
- Faults: a block whose worker dies is computed again by the scheduler (same bits: a block depends on nothing
  but the job); an exception is retried ``retries`` times (e.g. a transient read error); a block that keeps
  failing stops the job with one error naming the block. Dead workers' temporaries are removed by a worker on
  their host at the end.
"""

from __future__ import annotations

import os
import queue
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ..errors import InferenceCancelled, InferenceError, McUncertaintyError, MissingDependencyError, ParameterError
from ..inference.engine import RunCallbacks
from ..io.output_files import remove_stale_temporaries
from .block_task import BlockOutcome, VersionMismatchError, block_windows, run_block, shipped_name
from .blocks import block_window_counts
from .job import BlockRecord, Job, ModelBundle, local_versions, read_record

__all__ = [
    "JobProgress",
    "BlockFailedError",
    "connect",
    "worker_slots",
    "check_scheduler",
    "torch_threads",
    "run_blocks_on_dask",
    "block_task",
]

REPORT_INTERVAL = 0.5  # s between progress messages of a block, and between its polls of the cancel event
STOP_TIMEOUT = 120.0  # s to wait for running blocks to stop after a cancel or a failure


class BlockFailedError(InferenceError):
    """A block kept failing (after its retries, or its worker died again and again): the job stopped."""


@dataclass(frozen=True)
class JobProgress:
    """Where a job stands: windows done of planned (resumed blocks count as done), blocks, time, ETA."""

    windows_done: int
    windows_planned: int
    blocks_done: int
    blocks_total: int
    blocks_resumed: int
    elapsed: float  # s since the blocks were submitted
    eta: float | None  # s left at the rate of this run, None before the first window

    @property
    def percent(self) -> float:
        return 100.0 * self.windows_done / max(1, self.windows_planned)


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


def _check_workers(client: Any, job: Job) -> None:
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


def _ship_model(client: Any, bundle: ModelBundle, force: bool | None) -> list[str]:
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


def block_task(
    job: Job,
    index: int,
    event_name: str,
    topic: str,
    threads: Mapping[str, int],
    probe: Callable[[int, int], None] | None = None,
) -> BlockOutcome:
    """The task of block ``index`` on a Dask worker (:func:`~.block_task.run_block` with the worker's cancel
    event, progress messages and torch threads: ``threads[worker address]``, 1 when missing).
    ``probe(index, windows done)`` runs at each progress step (for tests of lost workers)."""
    from distributed import Event, get_worker

    worker = get_worker()
    event = Event(event_name)
    if event.is_set():
        raise InferenceCancelled("cancelled before the block started.")
    attempt = uuid.uuid4().hex[:8]
    polled = {"at": time.monotonic(), "set": False, "sent": 0.0}

    def is_cancelled() -> bool:
        now = time.monotonic()
        if now - polled["at"] >= REPORT_INTERVAL:
            polled["at"], polled["set"] = now, event.is_set()
        return bool(polled["set"])

    def report(done: int, planned: int) -> None:
        if probe is not None:
            probe(index, done)
        now = time.monotonic()
        if done >= planned or now - polled["sent"] >= REPORT_INTERVAL:
            polled["sent"] = now
            worker.log_event(topic, {"block": index, "attempt": attempt, "done": done, "planned": planned})

    report(0, block_windows(job, index))
    return run_block(
        job,
        index,
        is_cancelled=is_cancelled,
        report=report,
        torch_threads=threads.get(worker.address, 1),
        shipped_folder=worker.local_directory,
    )


def _clean_folders(folders: list[str]) -> list[str]:
    """Remove the temporaries of dead writers of this host (runs on every worker, and on the client)."""
    return [path for folder in folders for path in remove_stale_temporaries(folder)]


def _describe_failure(job: Job, index: int, error: BaseException, retries: int) -> str:
    region = job.layout.region(index)
    where = (
        f"block {index} of blocks 0..{len(job.layout) - 1} (rows {region.row}..{region.row_end - 1}, columns "
        f"{region.col}..{region.col_end - 1})"
    )
    if type(error).__name__ == "KilledWorker":
        return f"{where} failed: its worker died on every attempt (out of memory? see the workers' logs)."
    detail = str(error) if isinstance(error, McUncertaintyError) else f"{type(error).__name__}: {error}"
    return f"{where} failed after {retries + 1} attempt(s): {detail}"


class _Blocks:
    """The state of the submitted blocks: futures, progress per block, what finished."""

    def __init__(self, job: Job, records: dict[int, BlockRecord]) -> None:
        self.job = job
        self.records = records
        counts = block_window_counts(job.plan.grid, job.layout)  # the workers' own counts replace these
        self.planned = dict(enumerate(counts))
        self.planned.update({index: record.windows for index, record in records.items()})
        self.done = {index: record.windows for index, record in records.items()}
        self.attempts: dict[int, str] = {}
        self.messages: queue.Queue = queue.Queue()
        self.resumed = len(records)
        self.started = time.monotonic()
        self.resumed_windows = sum(self.done.values())

    def on_event(self, event: tuple[float, dict]) -> None:  # the client's event loop thread
        self.messages.put(event[1])

    def drain(self) -> None:
        while True:
            try:
                message = self.messages.get_nowait()
            except queue.Empty:
                return
            index = int(message["block"])
            if index not in self.records:
                self.attempts[index] = message["attempt"]
                self.done[index] = int(message["done"])
                self.planned[index] = int(message["planned"])

    def finish(self, index: int, record: BlockRecord) -> None:
        self.records[index] = record
        self.done[index] = self.planned[index] = record.windows

    def progress(self) -> JobProgress:
        done, planned = sum(self.done.values()), sum(self.planned.values())
        elapsed = time.monotonic() - self.started
        fresh = done - self.resumed_windows
        eta = elapsed * (planned - done) / fresh if fresh > 0 else None
        return JobProgress(done, planned, len(self.records), len(self.planned), self.resumed, elapsed, eta)


def run_blocks_on_dask(
    job: Job,
    client: Any,
    callbacks: RunCallbacks,
    on_progress: Callable[[JobProgress], None] | None = None,
    *,
    retries: int = 2,
    exact: bool = True,
    ship_model: bool | None = None,
    probe: Callable[[int, int], None] | None = None,
) -> dict[int, BlockRecord]:
    """Compute every block of ``job`` not already done on the workers of ``client``.

    Args:
        job: the job.
        client: a connected ``distributed.Client``.
        callbacks: ``is_cancelled`` (polled every 0.1 s) and ``log`` of the caller; progress goes to ``on_progress``.
        on_progress: receives a :class:`JobProgress` after each poll that changed it.
        retries: extra attempts of a block that raised (a lost worker is handled by the scheduler).
        exact: one torch thread per worker process.
        ship_model: True ships the model files to the workers, False never, None when a worker lacks them.
        probe: run on the worker at each progress step of a block (tests).

    Returns:
        Block index -> record, for every block.

    Raises:
        InferenceCancelled: finished blocks are kept, nothing else is left.
        BlockFailedError: naming the block; the other blocks were stopped.
        VersionMismatchError: before anything ran.
    """
    _check_workers(client, job)
    records = {index: record for index in range(len(job.layout)) if (record := read_record(job, index))}
    state = _Blocks(job, records)
    pending = [index for index in range(len(job.layout)) if index not in records]
    if records:
        callbacks.say(f"Resuming: {len(records)} of {len(job.layout)} block(s) already done.")
    if not pending:
        return records
    plugins = _ship_model(client, job.model, ship_model)
    if plugins:
        callbacks.say("The model files were shipped to the workers (they cannot read them by their paths).")
    run_id = uuid.uuid4().hex[:12]
    event_name, topic = f"mcu-cancel-{run_id}", f"mcu-progress-{run_id}"
    client.subscribe_topic(topic, state.on_event)
    try:
        threads = torch_threads(client, exact)
        futures = {
            client.submit(
                block_task,
                job,
                index,
                event_name,
                topic,
                threads,
                probe,
                retries=retries,
                pure=False,
                key=f"mcu-block-{job.tag}-{index}-{run_id}",
            ): index
            for index in pending
        }
        _follow(job, client, futures, state, callbacks, on_progress, event_name, retries)
    finally:
        client.unsubscribe_topic(topic)
        for name in plugins:
            try:
                client.unregister_worker_plugin(name)
            except Exception:  # noqa: BLE001 - the scheduler may be gone; the copies die with the workers
                pass
        _clean_everywhere(client, job)
    return state.records


def _follow(
    job: Job,
    client: Any,
    futures: dict,
    state: _Blocks,
    callbacks: RunCallbacks,
    on_progress: Callable[[JobProgress], None] | None,
    event_name: str,
    retries: int,
) -> None:
    """Wait for the blocks, reporting progress; stop everything on a cancel or a block that failed for good."""
    from distributed import as_completed

    remaining = as_completed(list(futures), loop=client.loop)
    last: JobProgress | None = None
    while True:
        for future in remaining.next_batch(block=False):
            index = futures[future]
            if future.status == "finished":
                outcome: BlockOutcome = future.result()
                state.finish(index, outcome.record)
                for message in outcome.messages:
                    callbacks.say(message)
                continue
            error = future.exception() if future.status == "error" else InferenceCancelled("block cancelled")
            _stop(client, futures, state, event_name)
            if callbacks.is_cancelled is not None and callbacks.is_cancelled():
                break
            raise BlockFailedError(_describe_failure(job, index, error, retries)) from error
        state.drain()
        current = state.progress()
        if on_progress is not None and current != last:
            on_progress(current)
            last = current
        if callbacks.is_cancelled is not None and callbacks.is_cancelled():
            _stop(client, futures, state, event_name)
            raise InferenceCancelled(
                f"cancelled by the user; {len(state.records)} of {len(job.layout)} finished "
                "block(s) are kept (run the same job again to resume), nothing else was left."
            )
        if remaining.is_empty():
            return
        time.sleep(0.1)


def _stop(client: Any, futures: dict, state: _Blocks, event_name: str) -> None:
    """Tell running blocks to stop (they remove their partial files), cancel the others, wait for the running."""
    from distributed import Event

    Event(event_name, client=client).set()
    state.drain()
    running = [f for f, index in futures.items() if index in state.attempts and not f.done()]
    waiting = [f for f, index in futures.items() if index not in state.attempts and not f.done()]
    if waiting:
        client.cancel(waiting)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(not f.done() for f in running) and time.monotonic() < deadline:
        time.sleep(0.1)


def _clean_everywhere(client: Any, job: Job) -> None:
    folders = sorted({job.block_folder(spec.key) for spec in job.plan.outputs})
    try:
        client.run(_clean_folders, folders)
    except Exception:  # noqa: BLE001 - workers may be gone; the client cleans what it can
        pass
    _clean_folders(folders)

"""The blocks of a job on Dask distributed, with the futures API: a task per block, and seam tasks.

- Tasks: a block is one task; the windows crossing cuts run once, in seam tasks submitted just before the first
  block that needs them, and the blocks they touch take their results (:mod:`.seams`). Workers are connected,
  checked and given the model and their torch threads by :mod:`.workers`; the nanny's ``MALLOC_TRIM_THRESHOLD_``
  does not matter (a block sets glibc's thresholds while it runs, :mod:`..inference.heap`), and torch's threads
  are set in each task (Dask's nanny exports ``OMP_NUM_THREADS=1`` to workers).
- Progress: each running block sends ``(windows done, planned)`` at most every half second (worker events,
  :meth:`distributed.Worker.log_event`); the client turns them into :class:`JobProgress` with an ETA.
- Cancel: a distributed ``Event`` that running tasks poll (they stop within a pass; a block removes its partial
  files); blocks not started are cancelled; finished blocks are kept for a rerun to resume.
- Faults: a task whose worker dies is computed again by the scheduler (same bits: a task depends on nothing but
  the job and its windows), also a seam task whose results were lost with their worker; an exception is retried
  ``retries`` times (e.g. a transient read error); a block that keeps failing (or whose seam task does) stops the
  job with one error naming the block. Dead workers' temporaries are removed by a worker on their host at the end.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InferenceCancelled, InferenceError, McUncertaintyError
from ..inference.engine import RunCallbacks
from ..inference.window_outputs import crop_outputs
from .block_task import BlockOutcome, block_windows, run_block, run_windows
from .blocks import block_window_counts
from .job import BlockRecord, Job, read_record
from .seams import seam_tasks
from .workers import check_workers, clean_everywhere, ship_model_files, torch_threads, worker_slots

__all__ = [
    "JobProgress",
    "BlockFailedError",
    "run_blocks_on_dask",
    "block_task",
    "seam_task",
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


def _cancel_poller(event_name: str) -> Callable[[], bool]:
    """``is_cancelled`` of a task: the job's distributed ``Event``, asked at most every :data:`REPORT_INTERVAL`.

    Raises:
        InferenceCancelled: the job was cancelled before the task started.
    """
    from distributed import Event

    event = Event(event_name)
    if event.is_set():
        raise InferenceCancelled("cancelled before the task started.")
    polled = {"at": time.monotonic(), "set": False}

    def is_cancelled() -> bool:
        now = time.monotonic()
        if now - polled["at"] >= REPORT_INTERVAL:
            polled["at"], polled["set"] = now, event.is_set()
        return bool(polled["set"])

    return is_cancelled


def seam_task(
    job: Job,
    windows: tuple,
    event_name: str,
    topic: str,
    name: str,
    threads: Mapping[str, int],
    probe: Callable[[int, int], None] | None = None,
) -> dict:
    """The windows of a seam task on a Dask worker (:func:`~.block_task.run_windows`); reports how many ran.
    ``probe(-1, number of windows)`` runs before them (tests)."""
    from distributed import get_worker

    worker = get_worker()
    if probe is not None:
        probe(-1, len(windows))
    results = run_windows(
        job,
        windows,
        is_cancelled=_cancel_poller(event_name),
        torch_threads=threads.get(worker.address, 1),
        shipped_folder=worker.local_directory,
    )
    worker.log_event(topic, {"seam": name, "computed": len(results)})
    return results


def block_task(
    job: Job,
    index: int,
    event_name: str,
    topic: str,
    threads: Mapping[str, int],
    probe: Callable[[int, int], None] | None = None,
    *shared: dict,
) -> BlockOutcome:
    """The task of block ``index`` on a Dask worker (:func:`~.block_task.run_block` with the worker's cancel
    event, progress messages and torch threads: ``threads[worker address]``, 1 when missing), blending as given
    the ``shared`` windows: its crops of the results of the seam tasks it needs. ``probe(index, windows done)`` runs at each progress step (for tests of
    lost workers)."""
    from distributed import get_worker

    worker = get_worker()
    is_cancelled = _cancel_poller(event_name)
    attempt = uuid.uuid4().hex[:8]
    sent = {"at": 0.0}

    def report(done: int, planned: int) -> None:
        if probe is not None:
            probe(index, done)
        now = time.monotonic()
        if done >= planned or now - sent["at"] >= REPORT_INTERVAL:
            sent["at"] = now
            worker.log_event(topic, {"block": index, "attempt": attempt, "done": done, "planned": planned})

    report(0, block_windows(job, index))
    return run_block(
        job,
        index,
        is_cancelled=is_cancelled,
        report=report,
        torch_threads=threads.get(worker.address, 1),
        shipped_folder=worker.local_directory,
        given={key: output for part in shared for key, output in part.items()},
    )


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
        self.computed: dict[str, int] = {}  # "block N" / seam task name -> windows it ran through the model
        self.held: dict[int, list] = {}  # block index -> the seam and crop futures it takes, until it is done

    def on_event(self, event: tuple[float, dict]) -> None:  # the client's event loop thread
        self.messages.put(event[1])

    def drain(self) -> None:
        while True:
            try:
                message = self.messages.get_nowait()
            except queue.Empty:
                return
            if "seam" in message:
                self.computed[str(message["seam"])] = int(message["computed"])
                continue
            index = int(message["block"])
            if index not in self.records:
                self.attempts[index] = message["attempt"]
                self.done[index] = int(message["done"])
                self.planned[index] = int(message["planned"])

    def finish(self, index: int, outcome: BlockOutcome) -> None:
        self.records[index] = outcome.record
        self.done[index] = self.planned[index] = outcome.record.windows
        self.computed[f"block {index}"] = outcome.computed
        self.held.pop(index, None)  # its seams are released once every block that takes them is done

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
        probe: run on the worker at each progress step of a block, and as ``probe(-1, windows)`` before a seam task
            (tests).

    Returns:
        Block index -> record, for every block.

    Raises:
        InferenceCancelled: finished blocks are kept, nothing else is left.
        BlockFailedError: naming the block; the other blocks were stopped.
        VersionMismatchError: before anything ran.
    """
    check_workers(client, job)
    records = {index: record for index in range(len(job.layout)) if (record := read_record(job, index))}
    state = _Blocks(job, records)
    pending = [index for index in range(len(job.layout)) if index not in records]
    if records:
        callbacks.say(f"Resuming: {len(records)} of {len(job.layout)} block(s) already done.")
    if not pending:
        return records
    plugins = ship_model_files(client, job.model, ship_model)
    if plugins:
        callbacks.say("The model files were shipped to the workers (they cannot read them by their paths).")
    run_id = uuid.uuid4().hex[:12]
    event_name, topic = f"mcu-cancel-{run_id}", f"mcu-progress-{run_id}"
    client.subscribe_topic(topic, state.on_event)
    try:
        threads = torch_threads(client, exact)
        futures, state.held = _submit(client, job, pending, (event_name, topic, run_id), threads, probe, retries)

        def alone(index: int, attempt: int) -> Any:  # the block again, running its shared windows itself
            return client.submit(
                block_task,
                job,
                index,
                event_name,
                topic,
                threads,
                probe,
                retries=retries,
                pure=False,
                key=f"mcu-block-{job.tag}-{index}-{run_id}-alone{attempt}",
            )

        _follow(job, client, futures, state, callbacks, on_progress, event_name, retries, alone)
        state.drain()
        callbacks.say(_computed_line(state, len(pending)))
    finally:
        client.unsubscribe_topic(topic)
        for name in plugins:
            try:
                client.unregister_worker_plugin(name)
            except Exception:  # noqa: BLE001 - the scheduler may be gone; the copies die with the workers
                pass
        clean_everywhere(client, job)
    return state.records


def _submit(
    client: Any,
    job: Job,
    pending: list[int],
    names: tuple[str, str, str],
    threads: Mapping[str, int],
    probe: Callable[[int, int], None] | None,
    retries: int,
) -> tuple[dict, dict[int, list]]:
    """Submit the blocks in order, each just after the seam tasks it is the first to need (:mod:`.seams`).

    Returns:
        Block future -> index; and block index -> the seam and crop futures it takes, to hold until the block is
        done: a worker lost with a block's crops in memory makes the scheduler compute them again, which it can
        only while the seam task is still known (a released one would cancel the block).
    """
    event_name, topic, run_id = names
    plan = job.plan
    tasks = seam_tasks(plan.grid, job.layout, pending, plan.batch_size, worker_slots(client))
    needs: dict[int, list] = {}
    held: dict[int, list] = {}
    futures = {}
    for index in pending:
        for number, task in enumerate(tasks.get(index, [])):
            name = f"mcu-seam-{job.tag}-{index}-{number}-{run_id}"
            seam = client.submit(
                seam_task,
                job,
                task.windows,
                event_name,
                topic,
                name,
                threads,
                probe,
                retries=retries,
                pure=False,
                key=name,
            )
            for block in task.blocks:  # each block receives only its own pixels of the shared windows
                crop = client.submit(
                    crop_outputs,
                    seam,
                    job.layout.region(block),
                    retries=retries,
                    pure=False,
                    key=f"{name}-for-{block}",
                )
                needs.setdefault(block, []).append(crop)
                held.setdefault(block, []).extend((seam, crop))
        block = client.submit(
            block_task,
            job,
            index,
            event_name,
            topic,
            threads,
            probe,
            *needs.pop(index, []),
            retries=retries,
            pure=False,
            key=f"mcu-block-{job.tag}-{index}-{run_id}",
        )
        futures[block] = index
    return futures, held


def _computed_line(state: _Blocks, blocks: int) -> str:
    seams = sum(count for name, count in state.computed.items() if name.startswith("mcu-seam-"))
    return (
        f"{sum(state.computed.values()):,} window(s) ran through the model for {blocks} block(s), each once: "
        f"{seams:,} of them cross a cut between blocks and were shared by the blocks they touch."
    )


def _follow(
    job: Job,
    client: Any,
    futures: dict,
    state: _Blocks,
    callbacks: RunCallbacks,
    on_progress: Callable[[JobProgress], None] | None,
    event_name: str,
    retries: int,
    alone: Callable[[int, int], Any],
) -> None:
    """Wait for the blocks, reporting progress; stop everything on a cancel or a block that failed for good.

    A block the scheduler cancelled (it can, when a worker died with the results of seam tasks the block was
    waiting for) runs again without them, ``alone(index, attempt)``, up to ``retries`` times: same bits."""
    from distributed import as_completed

    remaining = as_completed(list(futures), loop=client.loop)
    last: JobProgress | None = None
    reruns: dict[int, int] = {}
    while True:
        for future in remaining.next_batch(block=False):
            index = futures[future]
            if future.status == "finished":
                outcome: BlockOutcome = future.result()
                state.finish(index, outcome)
                for message in outcome.messages:
                    callbacks.say(message)
                continue
            user_cancelled = callbacks.is_cancelled is not None and callbacks.is_cancelled()
            if future.status == "cancelled" and not user_cancelled and reruns.get(index, 0) < retries:
                reruns[index] = reruns.get(index, 0) + 1
                state.held.pop(index, None)
                rerun = alone(index, reruns[index])
                futures[rerun] = index
                remaining.add(rerun)
                callbacks.say(f"Block {index} was cancelled by the scheduler; it runs again, with its shared windows.")
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
    """Tell running blocks to stop (they remove their partial files), cancel the others, wait for the running:
    those that sent a message and those the scheduler gave to a worker (one that starts now sees the event)."""
    from distributed import Event

    Event(event_name, client=client).set()
    state.drain()
    try:  # given to a worker: it may have started without a message yet (a block starting as its seams arrive)
        assigned = {key for keys in client.processing().values() for key in keys}
    except Exception:  # noqa: BLE001 - the scheduler may be gone: the blocks' messages are all there is
        assigned = set()
    running = [f for f, index in futures.items() if not f.done() and (index in state.attempts or f.key in assigned)]
    waiting = [f for f in futures if not f.done() and f not in running]
    if waiting:
        client.cancel(waiting)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(not f.done() for f in running) and time.monotonic() < deadline:
        time.sleep(0.1)

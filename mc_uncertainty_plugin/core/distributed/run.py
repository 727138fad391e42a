"""One run over a raster on a Dask cluster, as a single-machine run reads: plan, blocks, outputs.

:func:`run_job` takes the steps in this order:

1. SCHEDULER and BLOCK_SIZE checked; the outputs checked (``.vrt`` or ``.tif``, not an input); the whole-input
   plan (bands, model probe, warnings, free space, output descriptions) — all before any cluster starts;
2. the cluster: ``local:N`` starts a helper process hosting N workers, an address connects to a running one;
3. the job: the block layout for the cluster's task slots, the model files and the fingerprint; written beside
   the OUTPUT's blocks (``{tag}_job.json``), so a rerun resumes;
4. the blocks on Dask (:func:`~.dask_driver.run_blocks_on_dask`);
5. :func:`finish_job`: the run's warnings, the VRTs / assembled GeoTIFFs published together, the blocks of
   earlier jobs (and of assembled outputs) removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from ..config import InferenceConfig
from ..errors import InferenceError, ParameterError
from ..inference.engine import RunCallbacks, RunResult
from ..inference.output_specs import OutputOptions
from ..inference.plan import RunPlan
from ..models.loading import LoadedModel
from .blocks import choose_layout, halo_overhead, parse_block_size
from .dask_driver import JobProgress, run_blocks_on_dask
from .job import BLOCK_FILE, BlockRecord, Job, ModelBundle, check_job_outputs, create_job, plan_job, read_record
from .local_cluster import LocalClusterProcess
from .mosaic import publish_outputs
from .workers import connect, worker_slots

__all__ = ["parse_scheduler", "run_job", "finish_job", "prepare_folders"]

_LOCAL = re.compile(r"^local:(\d+)$")
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://\S+$")
_SCHEDULER_REQUIREMENT = (
    "be empty (in this process), local:N (N worker processes on this machine) or the address "
    "of a Dask scheduler (tcp://host:8786 or tls://host:8786)"
)

_OUTPUT_KEYS = ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_CONFIDENCE", "OUTPUT_PROBABILITIES", "OUTPUT_CONFIDENT")


def parse_scheduler(value: object) -> tuple[str, int | str | None]:
    """SCHEDULER as ``("", None)`` (in-process), ``("local", N)`` or ``("address", "tcp://…")``.

    Raises:
        ParameterError: naming SCHEDULER and echoing the value.
    """
    text = "" if value is None else str(value).strip()
    if not text:
        return "", None
    local = _LOCAL.match(text.lower())
    if local:
        if int(local.group(1)) < 1:
            raise ParameterError("SCHEDULER", value, _SCHEDULER_REQUIREMENT)
        return "local", int(local.group(1))
    if _ADDRESS.match(text):
        return "address", text
    raise ParameterError("SCHEDULER", value, _SCHEDULER_REQUIREMENT)


@contextlib.contextmanager
def _scheduler(kind: str, target: int | str | None, python: str | None) -> Iterator[str]:
    if kind == "local":
        with LocalClusterProcess(int(target or 1), python) as address:
            yield address
    else:
        yield str(target)


def prepare_folders(job: Job) -> None:
    """Make the block folders and write the job beside the OUTPUT's blocks."""
    for spec in job.plan.outputs:
        os.makedirs(job.block_folder(spec.key), exist_ok=True)
    job.write(job.job_file)


class _ProgressLog:
    """Progress of the blocks as 0..``span`` percent, and a log line with the ETA every 10 %."""

    def __init__(self, callbacks: RunCallbacks, span: float, on_progress: Callable[[JobProgress], None] | None):
        self.callbacks, self.span, self.on_progress = callbacks, span, on_progress
        self.logged = -1

    def __call__(self, state: JobProgress) -> None:
        if self.on_progress is not None:
            self.on_progress(state)
        if self.callbacks.progress is not None:
            self.callbacks.progress(min(self.span, self.span * state.percent / 100.0))
        tenth = int(state.percent // 10)
        if tenth > self.logged:
            self.logged = tenth
            eta = f", about {state.eta:.0f} s left" if state.eta is not None and state.percent < 100 else ""
            self.callbacks.say(
                f"Blocks: {state.blocks_done} of {state.blocks_total} done; windows {state.windows_done} "
                f"of {state.windows_planned} ({state.percent:.0f} %){eta}."
            )


def run_job(
    model: LoadedModel,
    config: InferenceConfig,
    input_path: str,
    segmentation_path: str,
    uncertainty_path: str | None,
    *,
    scheduler: str,
    block_size: int | str = 0,
    confidence_path: str | None = None,
    probabilities_path: str | None = None,
    confident_path: str | None = None,
    output_options: OutputOptions | None = None,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    on_progress: Callable[[JobProgress], None] | None = None,
    retries: int = 2,
    exact: bool | None = None,
    ship_model: bool | None = None,
    keep_blocks: bool = False,
    python: str | None = None,
    probe: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Run the configured inference over ``input_path`` on a Dask cluster (module docstring).

    Args:
        model: loaded from a file (YAML config or TorchScript): workers load the same files.
        config: what the run computes.
        input_path: INPUT: a path or ``/vsicurl/``, ``/vsis3/`` … that every worker reads.
        segmentation_path, uncertainty_path, confidence_path, probabilities_path, confident_path: OUTPUT,
            OUTPUT_UNCERTAINTY, OUTPUT_CONFIDENCE, OUTPUT_PROBABILITIES, OUTPUT_CONFIDENT: ``.vrt`` (the blocks stay,
            in ``{stem}_blocks/`` beside it) or ``.tif`` (assembled).
        output_options: how the optional outputs are written (probabilities' data type, confident threshold).
        scheduler: SCHEDULER: ``local:N`` or ``tcp://host:port`` / ``tls://…``.
        block_size: BLOCK_SIZE: 0 chooses; else the block edge in px (rounded up to the alignment).
        progress: receives 0..100; is_cancelled: polled every 0.1 s; log, warn: one-line messages.
        on_progress: receives :class:`~.dask_driver.JobProgress` (windows done / planned, blocks, ETA).
        retries: extra attempts of a block that raised.
        exact: one torch thread per worker (default for ``local:N``; outputs bit for bit those of an in-process
            run with one torch thread); False gives workers' blocks their cores.
        ship_model: see :func:`~.dask_driver.run_blocks_on_dask`; keep_blocks: keep the block files of ``.tif``
            outputs after assembling them.
        python: the interpreter for ``local:N`` (default :func:`~.local_cluster.worker_python`); probe: run on the
            worker at each progress step of a block (tests).

    Raises:
        ParameterError, ModelLoadError, RasterIOError: bad input, before any cluster starts.
        InferenceError (BlockFailedError), VersionMismatchError, InferenceCancelled (finished blocks kept).
    """
    started = time.perf_counter()
    callbacks = RunCallbacks(progress, is_cancelled, log, warn)
    (kind, target), size = _cluster(scheduler), parse_block_size(block_size)
    outputs = (segmentation_path, uncertainty_path, confidence_path, probabilities_path, confident_path)
    finals = check_job_outputs(dict(zip(_OUTPUT_KEYS, outputs)), config, input_path, model)
    plan = plan_job(model, config, input_path, finals, callbacks.caution, output_options)
    assembles = any(not spec.path.lower().endswith(".vrt") for spec in plan.outputs)
    with _scheduler(kind, target, python) as address:
        client = connect(address)
        try:
            job, slots = _start_job(client, address, plan, size, ModelBundle.of(model), callbacks)
            records = run_blocks_on_dask(
                job,
                client,
                callbacks,
                _ProgressLog(callbacks, 95.0 if assembles else 99.0, on_progress),
                retries=retries,
                exact=kind == "local" if exact is None else exact,
                ship_model=ship_model,
                probe=probe,
            )
        finally:
            client.close()
    paths = finish_job(job, records, callbacks, keep_blocks=keep_blocks)
    if progress is not None:
        progress(100.0)
    return _result(job, records, paths, f"dask ({slots} slot(s))", time.perf_counter() - started, callbacks)


def _cluster(scheduler: str) -> tuple[str, int | str | None]:
    """:func:`parse_scheduler` of a SCHEDULER that names a cluster (an empty one is refused here)."""
    kind, target = parse_scheduler(scheduler)
    if not kind:
        raise ParameterError("SCHEDULER", scheduler, "name a cluster here (an empty SCHEDULER runs in this process)")
    return kind, target


def _start_job(
    client: Any, address: str, plan: RunPlan, size: int, bundle: ModelBundle, callbacks: RunCallbacks
) -> tuple[Job, int]:
    """The job laid out for the cluster's task slots, its folders made, and the log told where it runs."""
    slots = worker_slots(client)
    job = create_job(plan, choose_layout(plan.grid, size, slots), bundle)
    prepare_folders(job)
    (bh, bw), blocks = job.layout.block_shape, len(job.layout)
    callbacks.say(
        f"Dask at {address}: {slots} task slot(s); {blocks} block(s) of {bw}x{bh} px, halo overhead "
        f"{halo_overhead(plan.grid, job.layout):.3f} without sharing (here the windows crossing cuts run once); "
        f"job {job.tag} in {job.record_folder}."
    )
    return job, slots


def _report_validity(records: Mapping[int, BlockRecord], callbacks: RunCallbacks) -> None:
    """The whole run's warnings from the blocks' counts (a block alone does not warn)."""
    valid = sum(record.valid_pixels for record in records.values())
    nonfinite = sum(record.nonfinite_pixels for record in records.values())
    if valid == 0 and nonfinite:
        raise InferenceError(
            f"MODEL gave non-finite probabilities (NaN or inf) at every valid pixel of INPUT "
            f"({nonfinite:,}); nothing was written. Check the model's weights and the config's "
            "normalization."
        )
    if valid == 0:
        callbacks.caution("No pixel of INPUT was valid (all nodata, masked or NaN): the outputs hold nodata only.")
    elif nonfinite:
        callbacks.caution(
            f"MODEL gave non-finite probabilities (NaN or inf) at {nonfinite:,} pixel(s): they are "
            "nodata in every output."
        )


def finish_job(
    job: Job,
    records: Mapping[int, BlockRecord] | None = None,
    callbacks: RunCallbacks | None = None,
    *,
    keep_blocks: bool = False,
    span: tuple[float, float] = (95.0, 99.0),
) -> dict[str, str]:
    """Publish the outputs of a job whose blocks are all done, then remove block files no output needs.

    Args:
        job: the job.
        records: block index -> record (read from disk when None).
        callbacks: progress (``span`` percent while assembling), cancel, log and warnings.
        keep_blocks: keep the blocks of ``.tif`` outputs.

    Returns:
        Processing key -> final path.

    Raises:
        InferenceError: blocks are missing (naming the first ones), or the model predicted nothing finite.
    """
    callbacks = callbacks or RunCallbacks()
    records = (
        dict(records)
        if records is not None
        else {index: record for index in range(len(job.layout)) if (record := read_record(job, index))}
    )
    missing = [index for index in range(len(job.layout)) if index not in records]
    if missing:
        listed = ", ".join(str(index) for index in missing[:20]) + (" …" if len(missing) > 20 else "")
        raise InferenceError(f"{len(missing)} of {len(job.layout)} block(s) of job {job.tag} are not done: {listed}.")
    _report_validity(records, callbacks)
    low, high = span

    def assembled(fraction: float) -> None:
        if callbacks.progress is not None:
            callbacks.progress(low + (high - low) * fraction)

    paths = publish_outputs(job, records, progress=assembled, is_cancelled=callbacks.is_cancelled)
    _remove_unneeded_blocks(job, keep_blocks)
    callbacks.say("Written: " + ", ".join(paths.values()))
    return paths


def _remove_unneeded_blocks(job: Job, keep_blocks: bool) -> None:
    """Files of other jobs in this job's block folders; and, unless kept, the blocks of assembled outputs (with
    the records and the job when they are in such a folder)."""
    for spec in job.plan.outputs:
        folder = job.block_folder(spec.key)
        assembled = not keep_blocks and not spec.path.lower().endswith(".vrt")
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            match = BLOCK_FILE.match(name)
            if match is None:
                continue
            ours = match.group(1) == job.tag
            if not ours or (assembled and (f"_{spec.kind}_" in name or folder == job.record_folder)):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only when empty


def _result(
    job: Job,
    records: Mapping[int, BlockRecord],
    paths: Mapping[str, str],
    device: str,
    seconds: float,
    callbacks: RunCallbacks,
) -> RunResult:
    computed = [record for record in records.values() if record.passes_per_window]
    execution = next((record.execution_path for record in computed if record.execution_path), "")
    callbacks.say(f"Done in {seconds:.1f} s on {device}.")
    return RunResult(
        paths["OUTPUT"],
        paths.get("OUTPUT_UNCERTAINTY"),
        job.plan.num_classes,
        device,
        sum(record.windows for record in records.values()),
        max((record.passes_per_window for record in computed), default=0),
        seconds,
        execution,
        paths.get("OUTPUT_CONFIDENCE"),
        probabilities=paths.get("OUTPUT_PROBABILITIES"),
        confident=paths.get("OUTPUT_CONFIDENT"),
    )

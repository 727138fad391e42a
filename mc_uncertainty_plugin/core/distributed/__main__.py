"""``python -m mc_uncertainty_plugin.core.distributed COMMAND``: a job without a Dask scheduler (a job array).

::

    python -m mc_uncertainty_plugin.core.distributed plan --input mosaic.vrt --model model.yaml \\
        --output classes.vrt --set n_samples=10 --slots 64 --plan job.json      # prints the number of blocks
    python -m mc_uncertainty_plugin.core.distributed run-block --plan job.json --block $SLURM_ARRAY_TASK_ID
    python -m mc_uncertainty_plugin.core.distributed assemble --plan job.json   # once every block is done

``run-block`` skips a block already done (resume) and may run on any host that reads the input, the model
files and the output folder by the same paths; ``assemble`` publishes the VRTs / GeoTIFFs as a Dask run does.
``local-cluster`` is the helper process of ``SCHEDULER=local:N``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import McUncertaintyError

__all__ = ["main"]


def _value(text: str) -> Any:
    """``--set`` values: JSON when they read as JSON (numbers, true/false, lists), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _settings(pairs: Sequence[str]) -> dict[str, Any]:
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise McUncertaintyError(
                f"--set must be key=value (a processor argument, e.g. n_samples=10), got {pair!r}."
            )
        settings[key.strip()] = _value(value.strip())
    return settings


def _plan(args: argparse.Namespace) -> int:
    from ..inference.processors import MCDropoutInferenceProcessor, MultiClassInferenceProcessor
    from ..models.loading import load_model
    from .blocks import choose_layout, halo_overhead, parse_block_size
    from .job import ModelBundle, check_job_outputs, create_job, plan_job
    from .run import prepare_folders

    model = load_model(args.model, args.checkpoint)
    kind = MCDropoutInferenceProcessor if args.method == "mc_dropout" else MultiClassInferenceProcessor
    processor = kind(model, **_settings(args.set))
    uncertainty = args.output_uncertainty or processor.uncertainty_path_for(args.output)
    finals = check_job_outputs(
        {"OUTPUT": args.output, "OUTPUT_UNCERTAINTY": uncertainty, "OUTPUT_CONFIDENCE": args.output_confidence},
        processor.config,
        args.input,
        model,
    )
    plan = plan_job(model, processor.config, args.input, finals, lambda message: print(f"warning: {message}"))
    layout = choose_layout(plan.grid, parse_block_size(args.block_size), args.slots)
    job = create_job(plan, layout, ModelBundle.of(model))
    prepare_folders(job)
    job.write(args.plan)
    blocks = len(layout)
    print(
        f"{args.plan}: job {job.tag}, {blocks} block(s) of {layout.block_shape[1]}x{layout.block_shape[0]} px "
        f"(halo overhead {halo_overhead(plan.grid, layout):.3f})."
    )
    print(
        f"Run blocks 0..{blocks - 1}: python -m mc_uncertainty_plugin.core.distributed run-block --plan {args.plan} "
        f"--block N; then: python -m mc_uncertainty_plugin.core.distributed assemble --plan {args.plan}"
    )
    return 0


def _run_block(args: argparse.Namespace) -> int:
    from .block_task import run_block
    from .job import Job

    job = Job.read(args.plan)
    outcome = run_block(job, args.block, torch_threads=args.threads or None)
    record = outcome.record
    state = "already done" if outcome.resumed else f"done in {record.seconds:.1f} s"
    print(
        f"block {args.block} of {len(job.layout)}: {state} ({record.windows} windows, "
        f"{record.valid_pixels} valid pixels)."
    )
    return 0


def _assemble(args: argparse.Namespace) -> int:
    from ..inference.engine import RunCallbacks
    from .job import Job
    from .run import finish_job

    job = Job.read(args.plan)
    finish_job(
        job,
        callbacks=RunCallbacks(log=print, warn=lambda message: print(f"warning: {message}")),
        keep_blocks=args.keep_blocks,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mc_uncertainty_plugin.core.distributed",
        description="Run a segmentation job as independent blocks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="plan a job and write it as JSON")
    plan.add_argument("--input", required=True)
    plan.add_argument("--model", required=True)
    plan.add_argument("--checkpoint")
    plan.add_argument("--output", required=True, help="class raster: .vrt (blocks kept) or .tif (assembled)")
    plan.add_argument("--output-uncertainty")
    plan.add_argument("--output-confidence")
    plan.add_argument("--method", choices=("mc_dropout", "tta"), default="mc_dropout")
    plan.add_argument("--block-size", default="0", help="block edge in px; 0 chooses for --slots workers")
    plan.add_argument("--slots", type=int, default=1, help="blocks that will run at the same time")
    plan.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a processor argument, e.g. n_samples=10, tta_mode=flip, model_input_shape=512,512",
    )
    plan.add_argument("--plan", required=True, help="the job file to write")
    block = commands.add_parser("run-block", help="compute one block (skipped when already done)")
    block.add_argument("--plan", required=True)
    block.add_argument("--block", type=int, required=True)
    block.add_argument("--threads", type=int, default=1, help="torch threads (1: bit for bit the in-process run)")
    assemble = commands.add_parser("assemble", help="publish the outputs once every block is done")
    assemble.add_argument("--plan", required=True)
    assemble.add_argument("--keep-blocks", action="store_true", help="keep the blocks of .tif outputs")
    commands.add_parser("local-cluster", help="host a local Dask cluster (used by SCHEDULER=local:N)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["local-cluster"]:
        from .local_cluster import main as serve_main

        return serve_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return {"plan": _plan, "run-block": _run_block, "assemble": _assemble}[args.command](args)
    except McUncertaintyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

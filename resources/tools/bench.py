#!/usr/bin/env python3
"""`make bench`: MC dropout speed (naive T full passes vs the cached deterministic prefix) and memory.

Part 1, speed, measured side by side in one run: for FPN (dropout before the head), Unet with injected decoder
dropout and DeepLabV3+ (ASPP dropout), at T = 1, 10, 30, over the same raster and tiling:
- naive: T full forward passes per tile (what the reference trainer does);
- ours: the deterministic prefix once per tile, the stochastic suffix T times;
- the two alternate --repeat times and the fastest run of each is kept (this shared 2-core machine has slow
  spells of +-20 %);
- ideal speed-up T*F / (F_det + T*F_stoch), with F the mean full pass of the naive run, F_stoch the mean replayed
  pass (suffix only) of our run and F_det = F - F_stoch, all timed inside the runs;
- ours / model compute: our whole run over the time its forward passes took (the probe, the recording and
  verification passes and the replayed suffixes); then where the rest of our time goes, stage by stage;
- ours / in-memory inference: our whole run over its inference on tiles already in memory (the sampler stage:
  forward passes, probabilities and their running sums, plus the probe), i.e. what the streaming pipeline
  (reading, merging, writing, overviews, set-up) adds to the computation itself;
- naive / its model compute: the first ratio for the naive run (the same pipeline around T full passes).
Part 2, choices measured: full-pass time contiguous vs channels_last (and opt-in bfloat16 autocast), and the
stochastic suffix looped T times vs stacked as one batch of T.
Part 3, memory: peak RSS of `qgis_process` runs on a 16 MP and a ~150 MP raster.
Part 4, time to first window on the sample (resources/sample, T = 10, 256 px tiles, step 128, CPU): from "Run" until
the progress bar first moves (the first batch of windows went through a pass), the way the plugin starts a run
(import torch, lease the model from the session cache or load it, build the processor, run). Cold: a new process,
timed from its launch (interpreter, imports, building the model, reading weights); warm: a second run in that
process, with the model reused from the session cache (the fastest of 2 processes, and of 3 warm runs in each, is
kept). `--first-window-only` runs only this part (under a minute).

Prints Markdown tables (pasted into the README).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from osgeo import gdal, osr  # noqa: E402

from mc_uncertainty_plugin.core import LoadedModel, MCDropoutInferenceProcessor  # noqa: E402
from mc_uncertainty_plugin.core.models.dropout import MCDropoutHooks, find_dropout_layers  # noqa: E402
from mc_uncertainty_plugin.core.models.loading import _inject_decoder_dropout  # noqa: E402
from mc_uncertainty_plugin.core.models.prefix_cache import PrefixCache, _tensors  # noqa: E402


def write_raster(path: Path, size: int, bands: int = 3, seed: int = 0) -> str:
    """A synthetic RGB scene, written block by block (never the whole raster in memory)."""
    driver = gdal.GetDriverByName("GTiff")
    ds = driver.Create(str(path), size, size, bands, gdal.GDT_Byte, ["TILED=YES", "COMPRESS=DEFLATE"])
    ds.SetGeoTransform([500000, 0.5, 0, 4100000, 0, -0.5])
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(seed)
    block = 1024
    pattern = rng.integers(0, 255, (bands, block, block), dtype=np.uint8)
    for row in range(0, size, block):
        h = min(block, size - row)
        for col in range(0, size, block):
            w = min(block, size - col)
            ds.WriteRaster(col, row, w, h, np.roll(pattern, row // 7 + col // 13, axis=2)[:, :h, :w].tobytes())
    ds = None
    return str(path)


def architectures(only: list[str] | None = None) -> dict[str, torch.nn.Module]:
    """The three benchmark models (or those whose name starts with one of ``only``), built only when chosen."""
    import segmentation_models_pytorch as smp

    def unet() -> torch.nn.Module:
        net = smp.Unet("resnet34", encoder_weights=None, classes=5)
        _inject_decoder_dropout(net, 0.2)
        return net

    builders = {
        "FPN (decoder dropout)": lambda: smp.FPN("resnet34", encoder_weights=None, classes=5, decoder_dropout=0.2),
        "Unet (injected dropout)": unet,
        "DeepLabV3+ (ASPP dropout)": lambda: smp.DeepLabV3Plus("resnet34", encoder_weights=None, classes=5),
    }
    chosen = {}
    for name, build in builders.items():
        if not only or any(name.startswith(o) for o in only):
            torch.manual_seed(0)
            chosen[name] = build()
    return chosen


def speed(args: argparse.Namespace, work: Path) -> tuple[list[str], list[str]]:
    """Naive vs ours per architecture and T; the ideal speed-up uses pass times measured inside the runs."""
    image = write_raster(work / "speed.tif", args.size)
    tile = args.tile
    rows = [
        "| model | T | naive s | ours s | speed-up | ideal T·F/(F_det+T·F_stoch) | % of ideal | ours / model compute "
        "| ours / in-memory inference | naive / its model compute |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    stage_t = 10 if 10 in args.samples else max(args.samples)  # the stage table's T
    stages = [
        f"| model (T = {stage_t}, ours) | model passes | softmax + sums | read wait | merge | write + overviews | "
        "finish | setup (no probe) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, net in architectures(args.models).items():
        net.eval()
        model = LoadedModel(net, in_channels=3)
        MCDropoutInferenceProcessor(model, n_samples=2, model_input_shape=tile, step_shape=tile).process(
            image, output_path=str(work / "warm_up.tif")
        )  # first-call costs (allocations, kernels) not timed
        for t in args.samples:
            seconds = {"naive": float("inf"), "ours": float("inf")}
            runs = {}
            # alternate the two methods, keep the best of each; T = 1 is cheap and the same work for both: 3 rounds
            for _ in range(args.repeat if t > 1 else max(args.repeat, 3)):
                for label, cache in (("naive", False), ("ours", True)):
                    proc = MCDropoutInferenceProcessor(
                        model,
                        n_samples=t,
                        model_input_shape=tile,
                        step_shape=tile,
                        batch_size=1,
                        seed=0,
                        cache_prefix=cache,
                    )
                    start = time.perf_counter()
                    proc.process(image, output_path=str(work / f"out_{label}.tif"))
                    elapsed = time.perf_counter() - start
                    if elapsed < seconds[label]:
                        seconds[label], runs[label] = elapsed, proc.last_result
            full_n, full_s = runs["naive"].pass_seconds["full"]
            f_full = full_s / full_n  # F: one full pass of a tile
            replay_n, replay_s = runs["ours"].pass_seconds.get("replay", (0, 0.0))
            f_stoch = replay_s / replay_n if replay_n else f_full  # F_stoch: a replayed pass (suffix only)
            f_det = max(f_full - f_stoch, 0.0)
            ideal = t * f_full / (f_det + t * f_stoch)
            compute = sum(total for _, total in runs["ours"].pass_seconds.values())
            naive_compute = sum(total for _, total in runs["naive"].pass_seconds.values())
            inference = runs["ours"].stage_seconds["sampler"] + runs["ours"].pass_seconds["probe"][1]
            speedup = seconds["naive"] / seconds["ours"]
            rows.append(
                f"| {name} | {t} | {seconds['naive']:.1f} | {seconds['ours']:.1f} | {speedup:.2f}x | "
                f"{ideal:.2f}x | {100 * speedup / ideal:.0f} % | {seconds['ours'] / compute:.2f} | "
                f"{seconds['ours'] / inference:.2f} | {seconds['naive'] / naive_compute:.2f} |"
            )
            print(rows[-1], flush=True)
            if t == stage_t:
                stage = runs["ours"].stage_seconds
                probe = runs["ours"].pass_seconds["probe"][1]
                in_sampler = compute - probe
                stages.append(
                    f"| {name} | {compute:.2f} s | {stage['sampler'] - in_sampler:.2f} s | {stage['read']:.2f} s | "
                    f"{stage['merge']:.2f} s | {stage['write']:.2f} s | {stage['finish']:.2f} s | "
                    f"{stage['setup'] - probe:.2f} s |"
                )
    return rows, stages


def _best_ms(run, repeat: int = 5) -> float:
    run()
    run()  # first calls allocate and pick kernels
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def choices(args: argparse.Namespace) -> list[str]:
    """Full pass per layout / precision, and the suffix looped vs stacked, per architecture (one tile)."""
    tile, t = args.tile, 10
    rows = [
        "| model | full pass contiguous | channels_last | channels_last + bfloat16 (opt-in) | "
        f"suffix looped {t}x (batch 1) | suffix stacked (batch {t}) | + repeating the cached prefix outputs {t}x |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, net in architectures(args.models).items():
        net.eval()
        x = torch.randn(1, 3, tile, tile)
        with torch.inference_mode():
            contiguous = _best_ms(lambda: net(x), args.choice_runs)
            net.to(memory_format=torch.channels_last)
            xl = x.contiguous(memory_format=torch.channels_last)
            last = _best_ms(lambda: net(xl), args.choice_runs)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = _best_ms(lambda: net(xl), args.choice_runs)
        layers = find_dropout_layers(net)

        def suffix(batch: int) -> tuple[float, float]:
            """Replayed pass over a recorded batch, and the time to repeat its recorded outputs T times."""
            xb = torch.randn(batch, 3, tile, tile).contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), MCDropoutHooks(layers, 0) as hooks, PrefixCache(net, layers) as cache:
                hooks.set_keys([(0, b, 0, 0) for b in range(batch)])
                with cache.pass_(xb, recording=True):
                    net(xb)

                def replay() -> None:
                    with cache.pass_(xb, recording=False):
                        net(xb)

                recorded = [tensor for _, output, _ in cache._cache.values() for tensor in _tensors(output)]
                return _best_ms(replay, args.choice_runs), _best_ms(
                    lambda: [torch.cat([r] * t) for r in recorded], args.choice_runs
                )

        looped, copies = suffix(1)
        stacked, _ = suffix(t)  # a lower bound: the recorded batch is already T copies
        net.to(memory_format=torch.contiguous_format)
        rows.append(
            f"| {name} | {contiguous:.0f} ms | {last:.0f} ms | {bf16:.0f} ms | {t * looped:.1f} ms | "
            f"{stacked:.1f} ms | {stacked + copies:.1f} ms |"
        )
        print(rows[-1], flush=True)
    return rows


# Spawns the command from a small process and writes its peak RSS (KiB) to argv[1]. Measuring from bench.py itself
# would be wrong: a child's ru_maxrss includes the parent's resident memory shared before the exec (vfork).
_RSS_HELPER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def peak_rss_of(command: list[str], env: dict[str, str], work: Path) -> tuple[float, float]:
    """Peak resident memory (GiB) and seconds of one child process."""
    report = work / "peak_rss.txt"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _RSS_HELPER, str(report), *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout.decode(errors='replace')[-3000:]}")
    return int(report.read_text()) / 1024**2, seconds


def memory(args: argparse.Namespace, work: Path) -> list[str]:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout2d(0.2), torch.nn.Conv2d(16, 5, 1)
    ).eval()
    model_path = work / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(model_path))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    rows = ["| raster | pixels | peak RSS of qgis_process | time |", "|---|---:|---:|---:|"]
    for size in args.memory_sizes:
        image = write_raster(work / f"mem_{size}.tif", size)
        command = [
            "qgis_process.bin",
            "run",
            "mc_uncertainty:mc_dropout",
            "--",
            f"INPUT={image}",
            f"MODEL={model_path}",
            "N_SAMPLES=2",
            "MODEL_INPUT_SHAPE=512",
            "STEP_SHAPE=512",
            f"OUTPUT={work / f'mem_{size}_classes.tif'}",
        ]
        rss, seconds = peak_rss_of(command, env, work)
        rows.append(f"| {size} x {size} | {size * size / 1e6:.0f} MP | {rss:.2f} GiB | {seconds:.0f} s |")
        print(rows[-1], flush=True)
        for leftover in work.glob(f"mem_{size}*"):
            leftover.unlink()
    return rows


# Runs in a new process: argv = launch time (time.time() of the parent just before the launch), repository, image,
# model, output folder. Prints REPORT{json}: the cold run's stages and both runs' time to the first progress report.
_FIRST_WINDOW = r"""
import json, os, sys, time
launched, root, image, model, out = float(sys.argv[1]), *sys.argv[2:6]
started = time.time()
sys.path.insert(0, root)
import torch  # what the run's "Loading PyTorch…" stage does
torch_loaded = time.time()
from mc_uncertainty_plugin.core import InferenceCancelled, MCDropoutInferenceProcessor
from mc_uncertainty_plugin.core.models.cache import SESSION_MODELS, model_key
from mc_uncertainty_plugin.core.models.loading import load_model


def first_window(run_started, name):
    marks = {}
    loading = [None, time.time()]

    def stage(label):
        now = time.time()
        if loading[0]:
            marks[loading[0]] = now - loading[1]
        loading[:] = [label, now]

    first = []
    with SESSION_MODELS.lease(model_key(model, None, "cpu"), lambda: load_model(model, stage=stage)) as lease:
        if loading[0]:
            marks[loading[0]] = time.time() - loading[1]
        processor = MCDropoutInferenceProcessor(lease.value, n_samples=10, model_input_shape=(256, 256),
                                                step_shape=(128, 128), device="cpu", seed=0)
        set_up = time.time()
        try:
            processor.process(image, output_path=os.path.join(out, name), progress=lambda p: first.append(time.time()),
                              is_cancelled=lambda: bool(first))
        except InferenceCancelled:
            pass
    return {"total": first[0] - run_started, "reused": lease.reused, "to_first_pass": first[0] - set_up, **marks}


cold = first_window(launched, "cold.tif")
cold.update(interpreter=started - launched, torch=torch_loaded - started)
warm = [first_window(time.time(), f"warm_{i}.tif") for i in range(3)]
print("REPORT" + json.dumps({"cold": cold, "warm": warm}))
"""


def _first_window_process(work: Path) -> dict:
    """One new process: its cold run and three warm runs."""
    image, model = ROOT / "resources" / "sample" / "sample.tif", ROOT / "resources" / "sample" / "model.yaml"
    launched = time.time()
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_WINDOW, str(launched), str(ROOT), str(image), str(model), str(work)],
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"time to first window failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    report = json.loads(lines[-1][len("REPORT") :])
    if report["cold"]["reused"] or not all(run["reused"] for run in report["warm"]):
        raise RuntimeError(f"the warm runs did not reuse the cold run's model: {report}")
    return report


def first_window(work: Path, processes: int = 2) -> list[str]:
    """Time to the first window on the sample: cold runs in new processes (the fastest of ``processes`` is kept),
    then warm ones in those processes (the fastest of three per process is kept), as in the speed part."""
    reports = [_first_window_process(work) for _ in range(processes)]
    cold = min((report["cold"] for report in reports), key=lambda run: run["total"])
    warm = min((run for report in reports for run in report["warm"]), key=lambda run: run["total"])
    rows = [
        "| time to first window (sample, T = 10, 256 px tiles, CPU) | total | interpreter start | import torch "
        "| building the model | reading weights | set-up + first batch of passes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows.append(
        f"| cold (new process) | {cold['total']:.1f} s | {cold['interpreter']:.1f} s | {cold['torch']:.1f} s | "
        f"{cold.get('build', 0.0):.1f} s | {cold.get('weights', 0.0):.1f} s | {cold['to_first_pass']:.1f} s |"
    )
    rows.append(
        f"| warm (model reused) | {warm['total']:.2f} s | — | — | 0 (reused) | 0 (reused) | "
        f"{warm['to_first_pass']:.2f} s |"
    )
    for row in rows[2:]:
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per method and T, alternating (best is kept)")
    parser.add_argument("--size", type=int, default=1536, help="speed raster side (px)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[4096, 12288])
    parser.add_argument("--models", nargs="*", help="only these models (name prefixes: FPN, Unet, DeepLabV3+)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-first-window", action="store_true", help="leave out the time to first window")
    parser.add_argument(
        "--choice-runs", type=int, default=5, help="timed calls per cell of the choices table (best kept)"
    )
    parser.add_argument(
        "--first-window-only",
        action="store_true",
        help="only the time to first window on the sample, cold and warm (seconds)",
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="mc_bench_") as folder:
        work = Path(folder)
        print(
            f"# make bench — {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"CPU only\n"
        )
        if not args.skip_first_window:
            print("## Time to first window\n")
            rows = first_window(work)
            print("\n" + "\n".join(rows) + "\n")
        if args.first_window_only:
            return
        if not args.skip_speed:
            print(f"## Speed: {args.size}x{args.size} px raster, {args.tile}px tiles, batch 1, best of {args.repeat}\n")
            rows, stages = speed(args, work)
            print("\n" + "\n".join(rows) + "\n")
            print("Where our time goes:\n\n" + "\n".join(stages) + "\n")
            print(f"## Choices: one {args.tile}px tile, best of {args.choice_runs}\n")
            print("\n" + "\n".join(choices(args)) + "\n")
        if args.memory_sizes:
            print("## Memory: qgis_process mc_dropout, tiny TorchScript model, 512 px tiles\n")
            rows = memory(args, work)
            print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""`make bench-pointwise`: 1x1 convolutions in their input's layout, at one torch thread, on and off.

What a run does per batch, timed in the sampler itself: 4 tiles of 512 px, MC dropout T = 10 with the cached
prefix (one full pass, nine replayed suffixes, the probabilities and their running sums), channels_last weights,
one torch thread (the exact mode of distributed runs, and any run with THREADS = 1). Both settings hold the
weights in channels_last, as a CPU run does; "on" adds the adapter, so nothing else differs. The two settings alternate --repeat times per
model and the fastest batch of each is kept (this shared VM has slow spells of +-15 %).

Prints a Markdown table (pasted into the README).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mc_uncertainty_plugin.core.inference.pointwise import PointwiseInInputLayout  # noqa: E402
from mc_uncertainty_plugin.core.inference.sampler import EnsembleSampler  # noqa: E402
from mc_uncertainty_plugin.core.inference.transforms import transforms_for  # noqa: E402
from mc_uncertainty_plugin.core.models.dropout import find_dropout_layers  # noqa: E402
from mc_uncertainty_plugin.core.models.loading import LoadedModel, as_loaded_model, load_model  # noqa: E402


def models() -> dict[str, Any]:
    import segmentation_models_pytorch as smp

    return {
        "sample FPN (mobilenetv2_050)": lambda: load_model(str(ROOT / "resources" / "sample" / "model.yaml")),
        "FPN (resnet34)": lambda: smp.FPN("resnet34", encoder_weights=None, classes=5, decoder_dropout=0.2),
        "DeepLabV3+ (resnet34)": lambda: smp.DeepLabV3Plus("resnet34", encoder_weights=None, classes=5),
    }


def one_batch(model: LoadedModel, tiles: np.ndarray, adapted: bool, warm_up: bool) -> tuple[float, float, float]:
    """Seconds of one sampler batch, and its mean full and replayed pass (ms)."""
    cpu = torch.device("cpu")
    model.module.eval().to(memory_format=torch.channels_last)
    sampler = EnsembleSampler(
        model.module,
        cpu,
        n_samples=10,
        mc_dropout=True,
        transforms=transforms_for("none"),
        dropout_layers=find_dropout_layers(model.module),
        seed=0,
        need_expected_entropy=False,
        need_mutual_information=True,
        memory_format=torch.channels_last,
    )
    keys = [(0, i) for i in range(len(tiles))]
    with PointwiseInInputLayout(model.module) if adapted else contextlib.nullcontext(), sampler:
        if warm_up:
            sampler(tiles, keys)
        sampler.pass_seconds = {}
        start = time.perf_counter()
        sampler(tiles, keys)
        seconds = time.perf_counter() - start
    (full_n, full_s), (replay_n, replay_s) = sampler.pass_seconds["full"], sampler.pass_seconds["replay"]
    return seconds, 1000 * full_s / full_n, 1000 * replay_s / replay_n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="alternating batches per setting (best is kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tiles = np.random.default_rng(0).standard_normal((4, 3, 512, 512)).astype(np.float32)
    print(f"# make bench-pointwise — {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, 1 thread, CPU\n")
    rows = [
        "| model | batch: PyTorch's path | ours | speed-up | full pass: PyTorch's / ours | replayed pass: PyTorch's / ours |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, build in models().items():
        torch.manual_seed(0)
        model = as_loaded_model(build())
        best: dict[str, tuple[float, float, float]] = {}
        for round_ in range(args.repeat):
            for setting in ("off", "on"):
                timing = one_batch(model, tiles, setting == "on", warm_up=round_ == 0)
                best[setting] = min(best.get(setting, timing), timing)
        off, on = best["off"], best["on"]
        rows.append(
            f"| {name} | {off[0]:.2f} s | {on[0]:.2f} s | {off[0] / on[0]:.2f}x | {off[1]:.0f} / {on[1]:.0f} ms | "
            f"{off[2]:.1f} / {on[2]:.1f} ms |"
        )
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()

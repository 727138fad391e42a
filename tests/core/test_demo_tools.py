"""The demo's preview figure and the sample's files (resources/)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from core_fixtures import random_image, write_geotiff

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "resources" / "tools"))


def test_preview_has_three_panels(tmp_path):
    pytest.importorskip("matplotlib")
    from preview import write_preview

    image = write_geotiff(tmp_path / "in.tif", random_image((60, 80)))
    classes = write_geotiff(tmp_path / "c.tif", (random_image((60, 80), bands=1) % 3).astype(np.uint8))
    uncertainty = write_geotiff(tmp_path / "u.tif", np.random.default_rng(0).random((1, 60, 80)).astype(np.float32))
    png = write_preview(image, classes, uncertainty, tmp_path / "p.png", class_names=["a", "b", "c"], num_classes=3)
    data = Path(png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError):
        small = write_geotiff(tmp_path / "s.tif", random_image((10, 10), bands=1))
        write_preview(image, small, uncertainty, tmp_path / "q.png")


def test_sample_model_is_small_and_loads_with_dropout():
    from mc_uncertainty_plugin.core import load_model
    from mc_uncertainty_plugin.core.models.dropout import find_dropout_layers

    config = yaml.safe_load((ROOT / "resources/sample/model.yaml").read_text())
    assert (ROOT / "resources/sample" / config["checkpoint_path"]).stat().st_size < 5 * 2**20
    model = load_model(str(ROOT / "resources/sample/model.yaml"))
    assert model.num_classes == 5 and len(config["class_names"]) == 5
    assert [layer.kind for layer in find_dropout_layers(model.module)] == ["channel"]


@pytest.mark.slow
def test_bench_runs_and_prints_its_tables():
    """`make bench` in miniature: one model, a 256 px raster, T = 2 (the real run takes half an hour)."""
    script = Path(__file__).resolve().parents[2] / "resources" / "tools" / "bench.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--models",
            "FPN",
            "--size",
            "256",
            "--tile",
            "128",
            "--samples",
            "2",
            "--repeat",
            "1",
            "--memory-sizes",
            "--skip-first-window",
            "--choice-runs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    speed = [line for line in lines if line.startswith("| FPN (decoder dropout) | 2 |")]
    assert speed, done.stdout
    cells = [cell.strip() for cell in speed[-1].strip("|").split("|")]
    assert len(cells) == 10 and cells[4].endswith("x") and cells[6].endswith("%")
    assert 0.5 < float(cells[7]) < 10 and 0.5 < float(cells[8]) <= float(cells[7]) and 0.5 < float(cells[9]) < 10
    assert any(line.startswith("| FPN (decoder dropout) | ") and " s |" in line for line in lines)  # stages
    assert any("full pass contiguous" in line for line in lines)


def test_bench_pointwise_times_both_settings_and_leaves_the_model_plain():
    import torch
    from bench_pointwise import ROOT as BENCH_ROOT
    from bench_pointwise import one_batch

    from mc_uncertainty_plugin.core import load_model

    model = load_model(str(BENCH_ROOT / "resources" / "sample" / "model.yaml"))
    tiles = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for adapted in (False, True):
            seconds, full_ms, replay_ms = one_batch(model, tiles, adapted, warm_up=False)
            assert seconds > 0 and full_ms > 0 and replay_ms > 0
    finally:
        torch.set_num_threads(threads)
    assert not any("_conv_forward" in m.__dict__ for m in model.module.modules())  # the adapter is removed

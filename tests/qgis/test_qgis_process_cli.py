"""Deploy with resources/tools/deploy.py into a temporary profile, then `qgis_process.bin run` in a new process.

The plugin finds torch through the python_env.txt written by deploy.py (QGIS's own Python has no torch here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

REPO_ROOT = Path(__file__).resolve().parents[2]
QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")


def _clean_env(config_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MC_UNCERTAINTY_PYTHON_ENV", "PYTHONPATH")}
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(config_root)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return env


def _deploy_command(config_root: Path) -> list[str]:
    profile = config_root / "profiles" / "default"
    return [sys.executable, str(REPO_ROOT / "resources" / "tools" / "deploy.py"), "--profile-dir", str(profile)]


@pytest.mark.slow
@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_deploy_then_qgis_process_run_with_tta_seed_and_optional_outputs(
    raster_path: str, torchscript_model: str, tmp_path: Path
) -> None:
    config_root = tmp_path / "qgis"
    profile = config_root / "profiles" / "default"
    env = _clean_env(config_root)
    deploy = _deploy_command(config_root)
    enabled = subprocess.run(deploy + ["--enable"], env=env, capture_output=True, text=True, timeout=180)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    plugin_dir = profile / "python" / "plugins" / "mc_uncertainty_plugin"
    assert (plugin_dir / "metadata.txt").is_file() and (plugin_dir / "icon.svg").is_file()
    assert (plugin_dir / "core" / "inference" / "processors.py").is_file()
    assert not list(plugin_dir.rglob("__pycache__")) and not list(plugin_dir.rglob("tests"))
    assert Path((plugin_dir / "python_env.txt").read_text().strip()) == (REPO_ROOT / ".venv").resolve()
    assert "mc_uncertainty_plugin=true" in (profile / "QGIS" / "QGIS3.ini").read_text()

    out = tmp_path / "out"
    out.mkdir()
    command = [
        QGIS_PROCESS,
        "--json",
        "run",
        "mc_uncertainty:mc_dropout",
        "--",
        f"INPUT={raster_path}",
        f"MODEL={torchscript_model}",
        "MODEL_INPUT_SHAPE=64",
        "STEP_SHAPE=32",
        "N_SAMPLES=2",
        "TILE_WEIGHT=pyramid",
        "BANDS=3,2,1",
        f"SEED={2**40 + 3}",  # beyond 32 bits: runs as given
        "TTA_MODE=identity,hflip",
        "UNCERTAINTY_MODE=normalized_entropy",
    ]
    optional = [
        "CONFIDENT_THRESHOLD=0.95",
        "PROBABILITIES_DATA_TYPE=uint8",
        f"OUTPUT_PROBABILITIES={out / 'probabilities.tif'}",
        f"OUTPUT_CONFIDENT={out / 'confident.tif'}",
    ]
    run = subprocess.run(
        command + optional + [f"OUTPUT={out / 'classes.tif'}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(run.stdout)["results"]
    assert results["OUTPUT"] == str(out / "classes.tif")
    assert results["OUTPUT_UNCERTAINTY"] == str(out / "classes_mc_uncertainty.tif")
    assert results["OUTPUT_CONFIDENCE"] is None  # optional output, not asked for
    assert results["OUTPUT_PROBABILITIES"] == str(out / "probabilities.tif")
    assert results["OUTPUT_CONFIDENT"] == str(out / "confident.tif")
    for path in (results["OUTPUT"], results["OUTPUT_UNCERTAINTY"]):
        dataset = gdal.Open(path)
        assert (dataset.RasterXSize, dataset.RasterYSize) == (100, 80)
    uncertainty = gdal.Open(results["OUTPUT_UNCERTAINTY"])
    assert uncertainty.GetMetadataItem("MC_TILE_WEIGHT") == "pyramid"
    assert uncertainty.GetMetadataItem("MC_SEED") == str(2**40 + 3)
    assert uncertainty.GetMetadataItem("MC_TTA_MODE") == "identity,hflip"
    assert uncertainty.GetMetadataItem("MC_UNCERTAINTY_MODE") == "normalized_entropy"
    probabilities = gdal.Open(results["OUTPUT_PROBABILITIES"])
    assert (probabilities.RasterCount, probabilities.GetRasterBand(1).DataType) == (3, gdal.GDT_Byte)
    classes = gdal.Open(results["OUTPUT"]).ReadAsArray()
    confident = gdal.Open(results["OUTPUT_CONFIDENT"]).ReadAsArray()
    unsure = uncertainty.ReadAsArray() > np.float32(0.95)
    assert (confident == np.where(unsure, 255, classes)).all()

    # two qgis_process runs at once give the same outputs as the sequential run above
    children = [
        subprocess.Popen(
            command + [f"OUTPUT={out / f'parallel{i}.tif'}"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for child in children:
        stdout, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stdout[-2000:] + stderr[-2000:]
    for i in range(2):
        for suffix in ("", "_mc_uncertainty"):
            same = gdal.Open(str(out / f"parallel{i}{suffix}.tif")).ReadAsArray()
            first = gdal.Open(str(out / f"classes{suffix}.tif")).ReadAsArray()
            assert (same == first).all(), f"parallel run {i} differs from the sequential one ({suffix or 'classes'})"

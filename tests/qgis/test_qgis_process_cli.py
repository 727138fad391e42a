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
def test_deploy_then_qgis_process_run(raster_path: str, torchscript_model: str, tmp_path: Path) -> None:
    config_root = tmp_path / "qgis"
    profile = config_root / "profiles" / "default"
    env = _clean_env(config_root)
    deploy = _deploy_command(config_root)
    copied = subprocess.run(deploy, env=env, capture_output=True, text=True, timeout=180)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    plugin_dir = profile / "python" / "plugins" / "mc_uncertainty_plugin"
    assert (plugin_dir / "metadata.txt").is_file() and (plugin_dir / "icon.svg").is_file()
    assert (plugin_dir / "core" / "inference" / "processors.py").is_file()
    assert not list(plugin_dir.rglob("__pycache__")) and not list(plugin_dir.rglob("tests"))
    assert Path((plugin_dir / "python_env.txt").read_text().strip()) == (REPO_ROOT / ".venv").resolve()

    enabled = subprocess.run(deploy + ["--enable"], env=env, capture_output=True, text=True, timeout=180)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    assert "mc_uncertainty_plugin=true" in (profile / "QGIS" / "QGIS3.ini").read_text()

    output = tmp_path / "out" / "classes.tif"
    output.parent.mkdir()
    run = subprocess.run(
        [
            QGIS_PROCESS,
            "--json",
            "run",
            "mc_uncertainty:mc_dropout",
            "--",
            f"INPUT={raster_path}",
            f"MODEL={torchscript_model}",
            f"OUTPUT={output}",
            "MODEL_INPUT_SHAPE=64",
            "STEP_SHAPE=32",
            "N_SAMPLES=2",
            "TILE_WEIGHT=pyramid",
            "BANDS=3,2,1",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(run.stdout)["results"]
    assert results["OUTPUT"] == str(output)
    assert results["OUTPUT_UNCERTAINTY"] == str(tmp_path / "out" / "classes_mc_uncertainty.tif")
    assert results["OUTPUT_CONFIDENCE"] is None  # optional output, not asked for
    for path in (results["OUTPUT"], results["OUTPUT_UNCERTAINTY"]):
        dataset = gdal.Open(path)
        assert (dataset.RasterXSize, dataset.RasterYSize) == (100, 80)
    assert gdal.Open(results["OUTPUT_UNCERTAINTY"]).GetMetadataItem("MC_TILE_WEIGHT") == "pyramid"

    # a bad parameter: a one-line error naming it, non-zero exit
    bad = subprocess.run(
        [
            QGIS_PROCESS,
            "run",
            "mc_uncertainty:mc_dropout",
            "--",
            f"INPUT={raster_path}",
            f"MODEL={torchscript_model}",
            f"OUTPUT={tmp_path / 'bad.tif'}",
            "MODEL_INPUT_SHAPE=64",
            "STEP_SHAPE=65",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "STEP_SHAPE" in bad.stdout + bad.stderr
    assert not (tmp_path / "bad.tif").exists()

    # two qgis_process runs at once give the same outputs as the sequential run above
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
    ]
    children = [
        subprocess.Popen(
            command + [f"OUTPUT={tmp_path / 'out' / f'parallel{i}.tif'}"],
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
            same = gdal.Open(str(tmp_path / "out" / f"parallel{i}{suffix}.tif")).ReadAsArray()
            first = gdal.Open(str(tmp_path / "out" / f"classes{suffix}.tif")).ReadAsArray()
            assert (same == first).all(), f"parallel run {i} differs from the sequential one ({suffix or 'classes'})"


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_with_a_tta_subset_and_the_optional_outputs(
    raster_path: str, torchscript_model: str, tmp_path: Path
) -> None:
    env = _clean_env(tmp_path / "qgis")
    deployed = subprocess.run(
        _deploy_command(tmp_path / "qgis") + ["--enable"], env=env, capture_output=True, text=True, timeout=180
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run(
        [
            QGIS_PROCESS,
            "--json",
            "run",
            "mc_uncertainty:mc_dropout",
            "--",
            f"INPUT={raster_path}",
            f"MODEL={torchscript_model}",
            f"OUTPUT={out / 'classes.tif'}",
            "MODEL_INPUT_SHAPE=64",
            "STEP_SHAPE=32",
            "N_SAMPLES=2",
            "TTA_MODE=identity,hflip",
            "UNCERTAINTY_MODE=normalized_entropy",
            "CONFIDENT_THRESHOLD=0.95",
            "PROBABILITIES_DATA_TYPE=uint8",
            f"OUTPUT_PROBABILITIES={out / 'probabilities.tif'}",
            f"OUTPUT_CONFIDENT={out / 'confident.tif'}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(run.stdout)["results"]
    assert results["OUTPUT_PROBABILITIES"] == str(out / "probabilities.tif")
    assert results["OUTPUT_CONFIDENT"] == str(out / "confident.tif")
    uncertainty = gdal.Open(results["OUTPUT_UNCERTAINTY"])
    assert uncertainty.GetMetadataItem("MC_TTA_MODE") == "identity,hflip"
    assert uncertainty.GetMetadataItem("MC_UNCERTAINTY_MODE") == "normalized_entropy"
    probabilities = gdal.Open(results["OUTPUT_PROBABILITIES"])
    assert (probabilities.RasterCount, probabilities.GetRasterBand(1).DataType) == (3, gdal.GDT_Byte)
    classes = gdal.Open(results["OUTPUT"]).ReadAsArray()
    confident = gdal.Open(results["OUTPUT_CONFIDENT"]).ReadAsArray()
    unsure = uncertainty.ReadAsArray() > np.float32(0.95)
    assert (confident == np.where(unsure, 255, classes)).all()

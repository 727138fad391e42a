"""`qgis_process.bin` as a pipeline meets it: numbers taken as given, one error line, Ctrl+C, outputs guarded.

The plugin is deployed once into a temporary profile (resources/tools/deploy.py) and run in new processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
pytestmark = pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of qgis_process runs with the plugin deployed and enabled in a fresh profile."""
    config_root = tmp_path_factory.mktemp("qgis_profile")
    env = {k: v for k, v in os.environ.items() if k not in ("MC_UNCERTAINTY_PYTHON_ENV", "PYTHONPATH")}
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(config_root)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    deploy = [
        sys.executable,
        str(REPO_ROOT / "resources" / "tools" / "deploy.py"),
        "--profile-dir",
        str(config_root / "profiles" / "default"),
        "--enable",
    ]
    done = subprocess.run(deploy, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def qgis_process(env: dict[str, str], *arguments: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([QGIS_PROCESS, *arguments], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# one case under qgis_process (the message printed once); the others, in-process, in test_qgis_mc_dropout.py
@pytest.mark.parametrize("argument,message", [("N_SAMPLES=2.5", "N_SAMPLES must be an integer >= 1, got '2.5'.")])
@pytest.mark.slow
def test_bad_numbers_are_refused_as_given_and_the_error_is_printed_once(
    deployed, raster_path, torchscript_model, tmp_path, argument, message
):
    run = qgis_process(
        deployed,
        "run",
        "mc_uncertainty:mc_dropout",
        "--",
        f"INPUT={raster_path}",
        f"MODEL={torchscript_model}",
        f"OUTPUT={tmp_path / 'c.tif'}",
        "MODEL_INPUT_SHAPE=64",
        "STEP_SHAPE=64",
        argument,
        cwd=tmp_path,
    )
    assert run.returncode != 0
    assert (run.stdout + run.stderr).count(message) == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"ERROR:\t{message}" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_cancels_cleanly_with_a_failing_exit_status(deployed, raster_path, tmp_path):
    """SIGINT mid-run: the run stops at the next pass, removes its temporaries and exits non-zero."""
    config = tmp_path / "sleepy.yaml"
    config.write_text(
        "model:\n  _target_: qgis_test_models.SleepyNet\n  in_channels: 3\n  classes: 3\n  sleep_s: 0.3\n",
        encoding="utf-8",
    )
    env = {**deployed, "PYTHONPATH": str(Path(__file__).parent), "MC_UNCERTAINTY_ALLOWED_TARGETS": "qgis_test_models."}
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen(
        [
            QGIS_PROCESS,
            "run",
            "mc_uncertainty:mc_dropout",
            "--",
            f"INPUT={raster_path}",
            f"MODEL={config}",
            f"OUTPUT={out / 'c.tif'}",
            "MODEL_INPUT_SHAPE=64",
            "STEP_SHAPE=32",
            "N_SAMPLES=200",
            "BATCH_SIZE=1",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(p.name.startswith(".mcu-") for p in out.iterdir()):
            assert child.poll() is None, child.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        interrupted = time.time()
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert time.time() - interrupted < 20
    assert child.returncode not in (0, None), stdout[-2000:] + stderr[-2000:]
    assert "cancelled" in (stdout + stderr).lower()
    assert list(out.iterdir()) == []  # no output, no temporary

"""python_env: how the plugin finds torch in a configured virtual environment."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from qgis.core import QgsSettings

from mc_uncertainty_plugin import python_env

PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def fake_venv(root: Path, python: str = PY, package: str | None = None) -> Path:
    """A venv skeleton with ``lib/<python>/site-packages`` (and an importable ``package`` in it)."""
    site_packages = root / "lib" / python / "site-packages"
    site_packages.mkdir(parents=True)
    if package:
        (site_packages / package).mkdir()
        (site_packages / package / "__init__.py").write_text("FOUND = True\n")
    return root


@pytest.fixture
def no_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No env var, no setting; returns an empty plugin folder (no python_env.txt)."""
    monkeypatch.delenv(python_env.ENV_VAR, raising=False)
    QgsSettings().remove(python_env.SETTINGS_KEY)
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    return plugin_dir


def test_sources_in_priority_order(no_configuration: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plugin_dir = no_configuration
    assert python_env.configured_environments(plugin_dir) == []
    (plugin_dir / "python_env.txt").write_text(f"{tmp_path / 'from_file'}\n")
    QgsSettings().setValue(python_env.SETTINGS_KEY, str(tmp_path / "from_setting"))
    monkeypatch.setenv(python_env.ENV_VAR, str(tmp_path / "from_env"))
    try:
        sources = python_env.configured_environments(plugin_dir)
    finally:
        QgsSettings().remove(python_env.SETTINGS_KEY)
    assert [Path(path).name for _source, path in sources] == ["from_env", "from_setting", "from_file"]
    assert sources[0][0] == "MC_UNCERTAINTY_PYTHON_ENV"


def test_site_packages_must_match_the_running_python(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path / "venv")
    assert python_env.site_packages_dirs(venv) == [venv / "lib" / PY / "site-packages"]
    # a site-packages folder may be given directly
    assert python_env.site_packages_dirs(venv / "lib" / PY / "site-packages") == [venv / "lib" / PY / "site-packages"]
    other = fake_venv(tmp_path / "old", python="python3.7")
    assert python_env.site_packages_dirs(other) == []


def test_ensure_adds_the_configured_site_packages(
    no_configuration: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = "mc_fake_torch_for_test"
    venv = fake_venv(tmp_path / "venv", package=package)
    monkeypatch.setattr(python_env, "REQUIRED_MODULES", (package,))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, package, raising=False)
    assert python_env.ensure_torch(no_configuration) is False

    (no_configuration / "python_env.txt").write_text(f"{venv}\n")
    assert python_env.ensure_torch(no_configuration) is True
    # first: the environment's packages (torch's newer sympy ...) win over the system's dist-packages
    assert sys.path[0] == str(venv / "lib" / PY / "site-packages")
    assert sys.modules[package].FOUND
    monkeypatch.delitem(sys.modules, package)


def test_missing_message_explains_what_is_wrong(
    no_configuration: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = python_env.missing_torch_message(no_configuration)
    assert "No Python environment is configured" in message
    assert python_env.INSTALL_COMMAND in message and python_env.INSTALL_MENU in message

    monkeypatch.setenv(python_env.ENV_VAR, str(tmp_path / "nowhere"))
    assert "does not exist" in python_env.missing_torch_message(no_configuration)
    old = fake_venv(tmp_path / "old", python="python3.7")
    monkeypatch.setenv(python_env.ENV_VAR, str(old))
    message = python_env.missing_torch_message(no_configuration)
    assert f"no site-packages for {PY}" in message and "python3.7" in message


def _run_python(script: str, tmp_path: Path, **env_extra: str) -> dict:
    import json
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != python_env.ALLOW_TRITON_ENV_VAR}
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1][len("REPORT") :])


LLVM_MAPS = "7f0000000000-7f0000001000 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed: nothing to keep out")
def test_triton_is_kept_out_of_a_process_with_llvm(tmp_path: Path) -> None:
    """QGIS Desktop (Mesa) has libLLVM loaded; triton's own LLVM crashes it on import. With the guard,
    segmentation-models-pytorch (which imports torch._dynamo, which imports triton) still imports, without triton."""
    maps = tmp_path / "maps"
    maps.write_text(LLVM_MAPS, encoding="utf-8")
    repo = str(Path(__file__).resolve().parents[2])
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {repo!r})\n"
        "from mc_uncertainty_plugin import python_env\n"
        f"active = python_env.guard_against_llvm_clash({str(maps)!r})\n"
        "import segmentation_models_pytorch, torch\n"
        "print('REPORT' + json.dumps({'active': active, 'triton': 'triton' in sys.modules,\n"
        "                             'again': python_env.guard_against_llvm_clash()}))\n"
    )
    assert _run_python(script, tmp_path) == {"active": True, "triton": False, "again": True}
    allowed = script.replace("import segmentation_models_pytorch, torch\n", "")
    report = _run_python(allowed, tmp_path, **{python_env.ALLOW_TRITON_ENV_VAR: "1"})
    assert report["active"] is False


def test_llvm_detection(tmp_path: Path) -> None:
    with_llvm, without = tmp_path / "with", tmp_path / "without"
    with_llvm.write_text(LLVM_MAPS, encoding="utf-8")
    without.write_text(LLVM_MAPS.replace("libLLVM-15", "libz"), encoding="utf-8")
    assert python_env._llvm_loaded(str(with_llvm)) is True
    assert python_env._llvm_loaded(str(without)) is False
    assert python_env._llvm_loaded(str(tmp_path / "missing")) is False

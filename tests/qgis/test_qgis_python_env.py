"""python_env: how the plugin finds torch in a configured virtual environment."""

from __future__ import annotations

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


def test_missing_message_explains_what_is_wrong(no_configuration: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = python_env.missing_torch_message(no_configuration)
    assert "No Python environment is configured" in message
    assert python_env.INSTALL_COMMAND in message and "make install" in message

    monkeypatch.setenv(python_env.ENV_VAR, str(tmp_path / "nowhere"))
    assert "does not exist" in python_env.missing_torch_message(no_configuration)
    old = fake_venv(tmp_path / "old", python="python3.7")
    monkeypatch.setenv(python_env.ENV_VAR, str(old))
    message = python_env.missing_torch_message(no_configuration)
    assert f"no site-packages for {PY}" in message and "python3.7" in message

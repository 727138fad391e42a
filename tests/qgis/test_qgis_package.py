"""The plugin ZIP of ``make package`` (built here by the script the Makefile calls) and the shipped .qml styles."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from qgis.core import Qgis, QgsPalettedRasterRenderer, QgsRasterLayer, QgsSingleBandPseudoColorRenderer

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / "resources" / "tools"
STYLES = REPO_ROOT / "resources" / "styles"
QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")


def load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mc_tool_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def package_tool() -> ModuleType:
    return load_tool("package")


@pytest.fixture(scope="module")
def plugin_zip(package_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # make sure there is a cache to leave out
    (REPO_ROOT / "mc_uncertainty_plugin" / "__pycache__").mkdir(exist_ok=True)
    return package_tool.build_package(tmp_path_factory.mktemp("dist"))


def archive_license(plugin_zip: Path) -> bytes:
    with zipfile.ZipFile(plugin_zip) as archive:
        return archive.read("mc_uncertainty_plugin/LICENSE")


def test_zip_holds_the_plugin_folder_only(package_tool: ModuleType, plugin_zip: Path) -> None:
    version = package_tool.read_metadata()["version"]
    assert plugin_zip.name == f"mc_uncertainty_plugin-{version}.zip"
    with zipfile.ZipFile(plugin_zip) as archive:
        names = archive.namelist()
        assert archive.read("mc_uncertainty_plugin/metadata.txt") == (REPO_ROOT / "metadata.txt").read_bytes()
    assert {name.split("/")[0] for name in names} == {"mc_uncertainty_plugin"}
    # the licence travels with the plugin: GPL v2 or later, as QGIS itself
    assert archive_license(plugin_zip) == (REPO_ROOT / "LICENSE").read_bytes()
    assert (
        b"GNU GENERAL PUBLIC LICENSE" in archive_license(plugin_zip)[:200]
        and b"Version 2" in archive_license(plugin_zip)[:200]
    )
    for expected in (
        "__init__.py",
        "plugin.py",
        "python_env.py",
        "installer.py",
        "icon.svg",
        "metadata.txt",
        "LICENSE",
        "core/__init__.py",
        "core/inference/engine.py",
        "processing_provider/provider.py",
        "gui/task.py",
        "styles/uncertainty_viridis.qml",
        "styles/sample_classes.qml",
    ):
        assert f"mc_uncertainty_plugin/{expected}" in names, expected
    for name in names:
        parts = name.split("/")
        assert "__pycache__" not in parts and not name.endswith((".pyc", ".pyo")), name
        assert not {"tests", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache"} & set(parts), name
        assert parts[-1] != "python_env.txt", name
    # every module of the package is in it
    sources = {
        p.relative_to(REPO_ROOT).as_posix()
        for p in (REPO_ROOT / "mc_uncertainty_plugin").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources <= set(names)


def test_same_sources_give_the_same_zip(package_tool: ModuleType, plugin_zip: Path, tmp_path: Path) -> None:
    again = package_tool.build_package(tmp_path)
    assert again.read_bytes() == plugin_zip.read_bytes()


def test_metadata_is_complete_and_checked(package_tool: ModuleType, tmp_path: Path) -> None:
    metadata = package_tool.read_metadata()
    assert package_tool.check_metadata(metadata) == []
    assert metadata["qgisMinimumVersion"] == "3.22" and metadata["hasProcessingProvider"] == "yes"
    broken = {
        **metadata,
        "email": "",
        "hasProcessingProvider": "no",
        "icon": "missing.svg",
        "qgisMinimumVersion": "3.40",
    }
    problems = "\n".join(package_tool.check_metadata(broken))
    for word in ("email", "hasProcessingProvider", "missing.svg", "qgisMinimumVersion"):
        assert word in problems
    repo = tmp_path / "repo"
    shutil.copytree(
        REPO_ROOT / "mc_uncertainty_plugin",
        repo / "mc_uncertainty_plugin",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (repo / "metadata.txt").write_text("[general]\nname=x\nversion=1\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="incomplete metadata"):
        package_tool.build_package(tmp_path / "dist", repo)
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_installed_zip_loads_in_qgis(plugin_zip: Path, tmp_path: Path) -> None:
    """What "Install from ZIP" does: unpack into the profile's plugin folder and enable it; QGIS (qgis_process,
    with its own Python, where torch is missing) then lists the algorithms."""
    profile = tmp_path / "qgis" / "profiles" / "default"
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(profile / "python" / "plugins")
    (profile / "QGIS").mkdir(parents=True)
    (profile / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\nmc_uncertainty_plugin=true\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("MC_UNCERTAINTY_PYTHON_ENV", "PYTHONPATH")}
    env.update(QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "qgis"), QT_QPA_PLATFORM=env.get("QT_QPA_PLATFORM", "offscreen"))
    done = subprocess.run(
        [QGIS_PROCESS, "help", "mc_uncertainty:mc_dropout"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "MC Dropout segmentation with uncertainty" in done.stdout and "N_SAMPLES" in done.stdout


def test_shipped_styles_match_the_sample_and_the_plugin(qgis_app: Any, tmp_path: Path) -> None:
    make_styles = load_tool("make_styles")
    names, colors = make_styles.sample_legend()

    uncertainty = QgsRasterLayer(str(REPO_ROOT / "resources" / "sample" / "sample.tif"), "u")
    message, ok = uncertainty.loadNamedStyle(str(STYLES / "uncertainty_viridis.qml"))
    assert ok, message
    renderer = uncertainty.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    assert (renderer.classificationMin(), renderer.classificationMax()) == (0, pytest.approx(math.log(5)))
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert (items[0].color.name(), items[-1].color.name()) == ("#440154", "#fde725")

    classes = QgsRasterLayer(str(REPO_ROOT / "resources" / "sample" / "sample.tif"), "c")
    message, ok = classes.loadNamedStyle(str(STYLES / "sample_classes.qml"))
    assert ok, message
    assert isinstance(classes.renderer(), QgsPalettedRasterRenderer)
    assert [(c.label, c.color.name()) for c in classes.renderer().classes()] == list(zip(names, colors))

    # the script writes the same styles (rerun it after changing the sample's classes or the styling); the
    # files name the QGIS that wrote them, so another QGIS version compares only what is checked above
    written = make_styles.write_styles(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in STYLES.glob("*.qml"))
    for path in written:
        shipped = (STYLES / path.name).read_text(encoding="utf-8")
        if f'version="{Qgis.QGIS_VERSION}"' in shipped:
            assert path.read_text(encoding="utf-8") == shipped, path.name

"""Plugins ▸ MC Uncertainty ▸ Install PyTorch…: finding QGIS's Python, the pip plan, and a real installation,
offline (a tiny wheel built here, --no-index --find-links) into an environment of a temporary profile."""

from __future__ import annotations

import base64
import hashlib
import importlib
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from qgis.core import Qgis, QgsSettings
from qgis.PyQt.QtCore import QEventLoop, QTimer
from qgis.PyQt.QtWidgets import QPushButton

from mc_uncertainty_plugin import installer, python_env
from mc_uncertainty_plugin.gui.install_dialog import InstallDialog, offer_install

PACKAGE = "mc_tiny_pkg_for_test"


def build_wheel(folder: Path, version: str = "1.0") -> Path:
    """A pure-Python wheel of one module ``mc_tiny_pkg_for_test`` (``VALUE = 42``), written by hand."""
    dist = f"{PACKAGE}-{version}.dist-info"
    files = {
        f"{PACKAGE}/__init__.py": b"VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE.replace('_', '-')}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: mc-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},{digest(data)},{len(data)}\n" for name, data in files.items()) + f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{PACKAGE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}/RECORD", record)
    return wheel


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch) -> Any:
    """sys.path, the tiny package and the installer's settings as they were, after the test."""
    keys = (python_env.INSTALLED_ENV_KEY, installer.WHEEL_FOLDER_KEY)
    for key in keys:
        QgsSettings().remove(key)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, PACKAGE, raising=False)
    yield
    for key in keys:
        QgsSettings().remove(key)
    sys.modules.pop(PACKAGE, None)
    importlib.invalidate_caches()


def wait_for(runner: Any, timeout_s: float = 120.0) -> tuple[bool, str]:
    """Run the event loop until the runner is done; its (ok, message)."""
    ended: list[tuple[bool, str]] = []
    loop = QEventLoop()
    runner.done.connect(lambda ok, message: (ended.append((ok, message)), loop.quit()))
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    if not runner.finished:
        loop.exec_()
    assert ended, "the installation did not end in time"
    return ended[0]


def test_find_qgis_python_next_to_the_qgis_program(tmp_path: Path) -> None:
    """Inside QGIS sys.executable is QGIS itself: the interpreter is found under sys.base_prefix."""
    linux = tmp_path / "usr"
    (linux / "bin").mkdir(parents=True)
    for name in ("qgis", "python3.11"):
        (linux / "bin" / name).touch()
    assert installer.find_python(str(linux / "bin" / "qgis"), [str(linux)], (3, 11), verify=False) == str(
        linux / "bin" / "python3.11"
    )
    osgeo = tmp_path / "OSGeo4W"  # Windows: bin/qgis-bin.exe, sys.base_prefix = apps/Python39
    (osgeo / "bin").mkdir(parents=True)
    (osgeo / "bin" / "qgis-bin.exe").touch()
    (osgeo / "apps" / "Python39").mkdir(parents=True)
    (osgeo / "apps" / "Python39" / "python.exe").touch()
    assert installer.find_python(
        str(osgeo / "bin" / "qgis-bin.exe"), [str(osgeo / "apps" / "Python39")], (3, 9), verify=False
    ) == str(osgeo / "apps" / "Python39" / "python.exe")
    # a candidate must report QGIS's Python version
    assert installer.find_python(str(linux / "bin" / "qgis"), [str(linux)], (3, 99)) is None
    found = installer.find_python()
    assert found is not None and installer._same_version(found, tuple(sys.version_info[:2]))


def test_the_plan_pins_picks_wheels_and_keeps_qgis_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy

    plan = installer.InstallPlan(python="/usr/bin/python3", environment=tmp_path / "env")
    command = plan.pip_command()
    assert command[:4] == (plan.env_python, "-m", "pip", "install")
    assert command[-len(installer.PINNED_PACKAGES) :] == installer.PINNED_PACKAGES
    assert f"numpy=={numpy.__version__}" in plan.constraints and "timm==1.0.31" in plan.constraints
    if sys.platform.startswith("linux"):
        assert "--index-url" in command and installer.CPU_INDEX in command  # CPU wheels by default
        assert "--index-url" not in installer.InstallPlan("py", tmp_path, variant=installer.CUDA).pip_command()
    offline = installer.InstallPlan("py", tmp_path / "env", wheel_folder="/wheels").pip_command()
    assert "--no-index" in offline and "/wheels" in offline and "--index-url" not in offline
    assert "--index-url" not in installer.InstallPlan("py", tmp_path, variant=installer.DEFAULT_INDEX).pip_command()
    steps = plan.steps()
    assert [step.argv[0] for step in steps] == ["/usr/bin/python3", plan.env_python, plan.env_python]
    with pytest.raises(ValueError, match="variant"):
        installer.InstallPlan("py", tmp_path, variant="rocm")
    # QGIS's PYTHONHOME would make the environment's Python ignore the environment
    monkeypatch.setenv("PYTHONHOME", "/osgeo/apps/Python39")
    assert "PYTHONHOME" not in plan.process_environment()


def test_nvidia_driver_selects_cuda_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 19:51:16 UTC 2024\n")
    assert installer.nvidia_driver_version(str(proc)) == "550.54.15"
    monkeypatch.setattr(installer.shutil, "which", lambda name: None)
    assert installer.nvidia_driver_version(str(tmp_path / "missing")) is None
    assert installer.default_variant("550.54.15") == (installer.CPU if sys.platform == "darwin" else installer.CUDA)
    assert installer.default_variant(None) == installer.CPU


def test_qgis_proxy_is_passed_to_pip() -> None:
    settings = QgsSettings()
    values = {
        "proxy/proxyEnabled": "true",
        "proxy/proxyType": "HttpProxy",
        "proxy/proxyHost": "proxy.example",
        "proxy/proxyPort": "3128",
        "proxy/proxyUser": "me",
        "proxy/proxyPassword": "p@ss",
    }
    try:
        for key, value in values.items():
            settings.setValue(key, value)
        assert installer.qgis_proxy() == "http://me:p%40ss@proxy.example:3128"
        settings.setValue("proxy/proxyType", "DefaultProxy")  # the system's: pip reads HTTPS_PROXY itself
        assert installer.qgis_proxy() is None
    finally:
        for key in values:
            settings.remove(key)


def test_offline_install_into_a_profile_works_without_restart(qgis_app: Any, tmp_path: Path, isolated: None) -> None:
    wheels = tmp_path / "wheels"
    build_wheel(wheels)
    profile = tmp_path / "profile"
    dialog = InstallDialog(
        profile_dir=profile, packages=(f"{PACKAGE.replace('_', '-')}==1.0",), check_modules=(PACKAGE,)
    )
    dialog.wheel_folder.setFilePath(str(wheels))
    assert "--no-index" in dialog.command.text() and str(wheels) in dialog.command.text()
    assert dialog.install_button.isEnabled()
    with pytest.raises(ImportError):
        importlib.import_module(PACKAGE)
    dialog.start()
    assert dialog.close_button.text() == "Cancel"  # while it runs
    ok, message = wait_for(dialog.runner)
    log = dialog.log.toPlainText()
    assert ok, log[-3000:]
    assert dialog.succeeded and dialog.bar.value() == 100
    assert f"Successfully installed {PACKAGE.replace('_', '-')}-1.0" in log and f"{PACKAGE}  OK" in log
    environment = installer.environment_dir(profile)
    assert environment.is_relative_to(profile) and (environment / "pyvenv.cfg").is_file()
    # usable at once, in this session: recorded for the next start, and on sys.path now
    assert QgsSettings().value(python_env.INSTALLED_ENV_KEY) == str(environment)
    assert ("Install PyTorch…", str(environment)) in python_env.configured_environments()
    assert importlib.import_module(PACKAGE).VALUE == 42
    assert "no restart needed" in dialog.stage.text()
    assert QgsSettings().value(installer.WHEEL_FOLDER_KEY) == str(wheels)  # remembered for the next time
    dialog.close()


def test_cancel_stops_pip_and_records_nothing(qgis_app: Any, tmp_path: Path, isolated: None) -> None:
    build_wheel(tmp_path / "wheels")
    dialog = InstallDialog(
        profile_dir=tmp_path / "profile", packages=(f"{PACKAGE.replace('_', '-')}==1.0",), check_modules=(PACKAGE,)
    )
    dialog.wheel_folder.setFilePath(str(tmp_path / "wheels"))
    dialog.start()
    dialog.close_button.click()  # "Cancel"
    ok, message = wait_for(dialog.runner)
    assert not ok and "Cancelled" in message and not dialog.succeeded
    assert dialog.runner.process is None or dialog.runner.process.state() == dialog.runner.process.NotRunning
    assert QgsSettings().value(python_env.INSTALLED_ENV_KEY, "") in ("", None)
    assert dialog.install_button.isEnabled() and dialog.close_button.text() == "Close"
    dialog.close()


def test_a_failing_pip_is_reported(qgis_app: Any, tmp_path: Path, isolated: None) -> None:
    (tmp_path / "empty").mkdir()
    dialog = InstallDialog(profile_dir=tmp_path / "profile", packages=("mc-not-there==1.0",), check_modules=())
    dialog.wheel_folder.setFilePath(str(tmp_path / "empty"))
    dialog.start()
    ok, message = wait_for(dialog.runner)
    assert not ok and "Installing with pip… failed" in message and "see the log" in message
    assert "mc-not-there" in dialog.log.toPlainText()
    assert QgsSettings().value(python_env.INSTALLED_ENV_KEY, "") in ("", None)


def test_the_menu_and_the_error_message_open_the_installer(
    mc_plugin: Any, qgis_iface: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert mc_plugin.install_action is not None and mc_plugin.install_action.text() == "Install PyTorch…"
    import mc_uncertainty_plugin.gui.install_dialog as install_dialog

    opened: list[Any] = []
    monkeypatch.setattr(install_dialog, "show_install_dialog", lambda parent=None: opened.append(parent))
    mc_plugin.install_action.trigger()
    assert len(opened) == 1
    bar = qgis_iface.messageBar()
    button = offer_install(bar, python_env.missing_torch_message())
    assert isinstance(button, QPushButton) and button.text() == "Install PyTorch…"
    assert bar.currentItem() is not None and bar.currentItem().level() == Qgis.Critical
    button.click()
    assert len(opened) == 2
    bar.clearWidgets()


def test_missing_torch_stops_before_the_run_and_offers_the_installer(
    run_mc_dropout: Any, qgis_iface: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Toolbox path: prepareAlgorithm (main thread) finds no torch, puts the button into the message bar and
    fails with the message, before any import or file."""
    from conftest import RecordingFeedback
    from qgis.core import QgsProcessingException

    class ErrorFeedback(RecordingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.errors: list[str] = []

        def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803
            self.errors.append(error)
            super().reportError(error, fatalError)

    monkeypatch.setattr(python_env, "torch_findable", lambda plugin_dir=None: False)
    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    feedback = ErrorFeedback()
    with pytest.raises(QgsProcessingException):
        run_mc_dropout(OUTPUT=str(tmp_path / "classes.tif"), feedback=feedback)
    assert any("Plugins ▸ MC Uncertainty ▸ Install PyTorch…" in error for error in feedback.errors), feedback.errors
    assert not any("Loading PyTorch" in line for line in feedback.infos)  # stopped before the run
    button = bar.currentItem().findChild(QPushButton, "mcUncertaintyInstallButton")
    assert button is not None and button.text() == "Install PyTorch…"
    assert not (tmp_path / "classes.tif").exists()
    bar.clearWidgets()


def test_a_task_without_torch_offers_the_installer(
    mc_plugin: Any,
    qgis_iface: Any,
    raster_path: str,
    torchscript_model: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_project: Any,
) -> None:
    from test_qgis_task import TaskWatch

    from mc_uncertainty_plugin.gui.task import TaskRequest, output_paths

    monkeypatch.setattr(python_env, "ensure_torch", lambda plugin_dir=None: False)
    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    classes, uncertainty = output_paths(str(tmp_path), "scene", "mc_dropout")
    task = mc_plugin.start_task(TaskRequest(raster_path, "scene", torchscript_model, classes, uncertainty))
    TaskWatch(task).wait()
    assert task.missing_dependencies and "Install PyTorch…" in task.error
    assert bar.currentItem().findChild(QPushButton, "mcUncertaintyInstallButton") is not None
    bar.clearWidgets()

"""*Plugins ▸ MC Uncertainty ▸ Install PyTorch…*: installs PyTorch for the plugin, from inside QGIS.

:class:`InstallRunner` runs the commands of an :class:`~mc_uncertainty_plugin.installer.InstallPlan` one after
the other in ``QProcess`` es (QGIS stays responsive), passes pip's output on line by line with a progress
estimate, and can be cancelled (the running command is killed; the environment is then not used). On success
the environment is recorded and put on ``sys.path``: the algorithms work without restarting QGIS.
:func:`offer_install` puts an "Install PyTorch…" button into an error message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from qgis.core import Qgis, QgsApplication, QgsSettings
from qgis.gui import QgsFileWidget, QgsMessageBar
from qgis.PyQt.QtCore import QObject, QProcess, QProcessEnvironment, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import installer, python_env
from ..i18n import tr

__all__ = ["InstallRunner", "InstallDialog", "show_install_dialog", "offer_install"]

# Share of the progress bar per step (creating the environment, pip, the import check).
_STEP_SPANS = ((0, 5), (5, 92), (92, 100))


class InstallRunner(QObject):
    """Runs an install plan's steps in sequence.

    Signals:
        output(str): a line of a command's output (pip's log).
        progress(int, str): an estimate 0..100 and what is going on.
        done(bool, str): the end: success, and a one-line summary.
    """

    output = pyqtSignal(str)
    progress = pyqtSignal(int, str)
    done = pyqtSignal(bool, str)

    def __init__(self, plan: installer.InstallPlan, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.plan = plan
        self.steps = plan.steps()
        self.index = -1
        self.process: QProcess | None = None
        self.cancelled = False
        self.finished = False
        self._buffer = ""
        self._percent = 0

    def start(self) -> None:
        """Start the first step (returns at once)."""
        try:
            self.plan.prepare()
        except OSError as error:
            self._finish(False, tr("Cannot create {}: {}").format(self.plan.environment, error.strerror))
            return
        self._next()

    def cancel(self) -> None:
        """Stop: kill the running command; ``done(False, ...)`` follows."""
        self.cancelled = True
        if self.process is not None and self.process.state() != QProcess.NotRunning:
            self.process.kill()
        elif not self.finished:
            self._finish(False, tr("Cancelled."))

    def _next(self) -> None:
        self.index += 1
        if self.index == len(self.steps):
            self._finish(True, tr("Installed into {}.").format(self.plan.environment))
            return
        step = self.steps[self.index]
        self._set_progress(_STEP_SPANS[min(self.index, 2)][0], tr(step.label))
        self.output.emit("$ " + " ".join(step.argv))
        process = QProcess(self)
        environment = QProcessEnvironment()
        for key, value in self.plan.process_environment().items():
            environment.insert(key, value)
        process.setProcessEnvironment(environment)
        process.setProcessChannelMode(QProcess.MergedChannels)
        process.readyReadStandardOutput.connect(self._read)
        process.finished.connect(self._step_finished)
        process.errorOccurred.connect(self._failed_to_start)
        self.process = process
        process.start(step.argv[0], list(step.argv[1:]))

    def _read(self) -> None:
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput()).decode("utf-8", errors="replace")
        *lines, self._buffer = self._buffer.replace("\r", "\n").split("\n")
        for line in lines:
            if line.strip():
                self._line(line.rstrip())

    def _line(self, line: str) -> None:
        self.output.emit(line)
        if self.index != 1:
            return
        start, end = _STEP_SPANS[1]
        text = line.strip()
        if text.startswith(("Collecting ", "Processing ")):
            self._set_progress(min(self._percent + 2, start + (end - start) // 3), text)
        elif text.startswith("Downloading "):
            self._set_progress(min(self._percent + 4, start + 3 * (end - start) // 4), text)
        elif text.startswith("Installing collected packages"):
            self._set_progress(start + 4 * (end - start) // 5, tr("Installing the packages…"))
        elif text.startswith("Successfully installed"):
            self._set_progress(end, text)

    def _set_progress(self, percent: int, text: str) -> None:
        self._percent = max(self._percent, int(percent))
        self.progress.emit(self._percent, text)

    def _failed_to_start(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.FailedToStart and not self.finished:
            program = self.steps[self.index].argv[0]
            self._finish(False, tr("Cannot start {}.").format(program))

    def _step_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        if self.finished:
            return
        if self._buffer.strip():
            self._line(self._buffer.rstrip())
        self._buffer = ""
        step = self.steps[self.index]
        if self.cancelled:
            self._finish(False, tr("Cancelled; the environment is incomplete and not used. Install again to resume."))
        elif exit_status != QProcess.NormalExit or exit_code != 0:
            self._finish(False, tr("{} failed (exit code {}); see the log above.").format(tr(step.label), exit_code))
        else:
            self._next()

    def _finish(self, ok: bool, message: str) -> None:  # noqa: FBT001
        if self.finished:
            return
        self.finished = True
        if ok:
            self._set_progress(100, message)
        self.done.emit(ok, message)


def _variant_label(variant: str, driver: str | None) -> str:
    if variant == installer.CUDA:
        found = tr("NVIDIA driver {} found").format(driver) if driver else tr("no NVIDIA driver found")
        return tr("CUDA wheels, for an NVIDIA GPU ({})").format(found)
    if variant == installer.CPU:
        return tr("CPU wheels (work on every machine)")
    return tr("pip's own configuration (pip.conf, PIP_INDEX_URL: a mirror)")


class InstallDialog(QDialog):
    """The installer's window: what will be installed where, pip's progress and log, Install / Cancel.

    Args:
        parent: parent widget.
        profile_dir: the QGIS profile holding the environment (default: the running profile).
        packages: requirements to install (default: the pinned torch, torchvision, SMP, safetensors).
        check_modules: modules that must import afterwards.
    """

    installed = pyqtSignal(str)  # the environment, after a successful installation

    def __init__(
        self,
        parent: QWidget | None = None,
        profile_dir: str | os.PathLike[str] | None = None,
        packages: tuple[str, ...] = installer.PINNED_PACKAGES,
        check_modules: tuple[str, ...] = installer.CHECK_MODULES,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("Install PyTorch for MC Uncertainty"))
        self.resize(760, 560)
        profile = Path(profile_dir) if profile_dir is not None else Path(QgsApplication.qgisSettingsDirPath())
        self.environment = installer.environment_dir(profile)
        self.packages = packages
        self.check_modules = check_modules
        self.python = installer.find_python()
        self.driver = installer.nvidia_driver_version()
        self.runner: InstallRunner | None = None
        self.succeeded = False
        self._build()
        self._update()

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        intro = QLabel(
            tr(
                "MC Uncertainty runs PyTorch models. This installs {} with pip into a Python environment of its own "
                "in your QGIS profile (QGIS's own Python packages stay as they are). It downloads several hundred MB "
                "and works without restarting QGIS."
            ).format(", ".join(self.packages))
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.python_label = QLabel(self.python or tr("not found: QGIS's Python interpreter is missing"))
        form.addRow(tr("QGIS's Python"), self.python_label)
        form.addRow(tr("Environment"), QLabel(str(self.environment)))
        self.variant = QComboBox()
        for variant in installer.VARIANTS:
            self.variant.addItem(_variant_label(variant, self.driver), variant)
        self.variant.setCurrentIndex(self.variant.findData(installer.default_variant(self.driver)))
        form.addRow(tr("Wheels"), self.variant)
        self.wheel_folder = QgsFileWidget()
        self.wheel_folder.setStorageMode(QgsFileWidget.GetDirectory)
        self.wheel_folder.setFilePath(installer.wheel_folder_setting())
        self.wheel_folder.setToolTip(
            tr(
                "Offline or behind a firewall: a folder of .whl files (made elsewhere with "
                "pip download); pip then installs from it only (--no-index)."
            )
        )
        form.addRow(tr("Wheel folder (offline, optional)"), self.wheel_folder)
        self.command = QLineEdit()
        self.command.setReadOnly(True)
        form.addRow(tr("pip command"), self.command)
        layout.addLayout(form)
        self.stage = QLabel("")
        self.stage.setWordWrap(True)
        layout.addWidget(self.stage)
        self.bar = QProgressBar()
        self.bar.setRange(0, 100)
        layout.addWidget(self.bar)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        layout.addWidget(self.log, 1)
        self.buttons = QDialogButtonBox()
        self.install_button = self.buttons.addButton(tr("Install"), QDialogButtonBox.AcceptRole)
        self.close_button = self.buttons.addButton(QDialogButtonBox.Close)
        self.install_button.clicked.connect(self.start)
        self.close_button.clicked.connect(self._close_or_cancel)
        layout.addWidget(self.buttons)
        self.variant.currentIndexChanged.connect(self._update)
        self.wheel_folder.fileChanged.connect(self._update)

    def plan(self) -> installer.InstallPlan:
        """The installation the dialog describes now."""
        folder = self.wheel_folder.filePath().strip()
        return installer.InstallPlan(
            python=self.python or "",
            environment=self.environment,
            packages=self.packages,
            check_modules=self.check_modules,
            variant=self.variant.currentData(),
            wheel_folder=folder or None,
            proxy=installer.qgis_proxy(),
        )

    def _running(self) -> bool:
        return self.runner is not None and not self.runner.finished

    def _update(self, *_args: Any) -> None:
        folder = self.wheel_folder.filePath().strip()
        self.variant.setEnabled(not folder and not self._running())
        self.command.setText(self.plan().describe())
        self.install_button.setEnabled(
            bool(self.python) and not self._running() and (not folder or os.path.isdir(folder))
        )
        self.close_button.setText(tr("Cancel") if self._running() else tr("Close"))

    def start(self) -> None:
        """Run the installation (returns at once; ``runner.done`` tells the end)."""
        if self._running() or not self.python:
            return
        QgsSettings().setValue(installer.WHEEL_FOLDER_KEY, self.wheel_folder.filePath().strip())
        self.log.clear()
        self.runner = InstallRunner(self.plan(), self)
        self.runner.output.connect(self.log.appendPlainText)
        self.runner.progress.connect(self._progress)
        self.runner.done.connect(self._done)
        self._update()
        self.runner.start()

    def cancel(self) -> None:
        if self._running():
            self.runner.cancel()  # type: ignore[union-attr]

    def _progress(self, percent: int, text: str) -> None:
        self.bar.setValue(percent)
        self.stage.setText(text)

    def _done(self, ok: bool, message: str) -> None:  # noqa: FBT001
        if ok:
            QgsSettings().setValue(python_env.INSTALLED_ENV_KEY, str(self.environment))
            python_env.activate_environment(self.environment)
            missing = [name for name in self.check_modules if not python_env._module_found(name)]
            if missing:
                ok, message = False, tr("Installed, but QGIS's Python cannot find {}.").format(", ".join(missing))
            else:
                message = tr("PyTorch is installed; the algorithms work now (no restart needed).")
        self.succeeded = ok
        self.stage.setText(message)
        self.log.appendPlainText(message)
        self._update()
        if ok:
            self.installed.emit(str(self.environment))

    def _close_or_cancel(self) -> None:
        if self._running():
            self.cancel()
        else:
            self.reject()

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self.cancel()
        super().closeEvent(event)


_open_dialog: list[InstallDialog] = []  # the dialog shown by show_install_dialog (kept alive while open)


def show_install_dialog(parent: QWidget | None = None) -> InstallDialog:
    """Show the installer (non-modal; one at a time) and return it."""
    if _open_dialog and _open_dialog[0].isVisible():
        dialog = _open_dialog[0]
    else:
        dialog = InstallDialog(parent)
        _open_dialog[:] = [dialog]
    dialog.show()
    dialog.raise_()
    return dialog


def offer_install(bar: QgsMessageBar, message: str, open_installer: Callable[[], Any] | None = None) -> QPushButton:
    """Show ``message`` in ``bar`` as an error with an "Install PyTorch…" button; returns the button."""
    item = bar.createMessage("MC Uncertainty", message)
    button = QPushButton(tr("Install PyTorch…"), item)
    button.setObjectName("mcUncertaintyInstallButton")
    button.clicked.connect(open_installer or (lambda: show_install_dialog(bar.window())))
    item.layout().addWidget(button)
    bar.pushWidget(item, Qgis.Critical, 0)
    return button

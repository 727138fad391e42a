"""The QGIS plugin object: registers the Processing provider (desktop QGIS and qgis_process) and, on the desktop,
the "MC uncertainty on the active layer…" action, which runs the core in a background ``QgsTask``, and
*Plugins ▸ MC Uncertainty ▸ Install PyTorch…*, which installs what the algorithms need."""

from __future__ import annotations

from typing import Any

from qgis.core import Qgis, QgsApplication, QgsRasterLayer
from qgis.PyQt.QtWidgets import QAction, QDialog

from .i18n import tr
from .icons import plugin_icon
from .processing_provider.provider import McUncertaintyProvider

__all__ = ["McUncertaintyPlugin"]

MENU = "&MC Uncertainty"


class McUncertaintyPlugin:
    """Plugin with ``hasProcessingProvider=yes``.

    qgis_process calls only :meth:`initProcessing` (``iface`` is None there); desktop QGIS calls
    :meth:`initGui`, which registers the provider too and adds the action to the Raster menu and the Plugins
    toolbar.
    """

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: McUncertaintyProvider | None = None
        self.action: QAction | None = None
        self.install_action: QAction | None = None
        self.tasks: set[Any] = set()  # running tasks: a Python QgsTask must be referenced until it ends

    def initProcessing(self) -> None:  # noqa: N802
        """Register the provider once."""
        if self.provider is None:
            self.provider = McUncertaintyProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        """Desktop start-up: the provider, and the action that runs a task on the active layer."""
        self.initProcessing()
        if self.iface is None:
            return
        self.action = QAction(plugin_icon(), tr("MC uncertainty on the active layer…"), self.iface.mainWindow())
        self.action.setObjectName("mcUncertaintyOnActiveLayer")
        self.action.setToolTip(
            tr(
                "Segment the active raster layer with a model and map its uncertainty "
                "(MC Dropout or TTA), in the background"
            )
        )
        self.action.triggered.connect(self.run_on_active_layer)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.iface.addToolBarIcon(self.action)
        self.install_action = QAction(plugin_icon(), tr("Install PyTorch…"), self.iface.mainWindow())
        self.install_action.setObjectName("mcUncertaintyInstallPyTorch")
        self.install_action.setToolTip(
            tr(
                "Install PyTorch and segmentation-models-pytorch for MC Uncertainty, "
                "into a Python environment of its own in the QGIS profile"
            )
        )
        self.install_action.triggered.connect(self.show_installer)
        self.iface.addPluginToMenu(MENU, self.install_action)

    def unload(self) -> None:
        """Remove the action and the provider; running tasks are cancelled."""
        for task in list(self.tasks):
            try:
                task.cancel()
            except RuntimeError:  # already deleted by the task manager
                pass
        if self.action is not None and self.iface is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.install_action is not None and self.iface is not None:
            self.iface.removePluginMenu(MENU, self.install_action)
            self.install_action.deleteLater()
            self.install_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        from .core.models.cache import SESSION_MODELS  # pure Python: no torch import

        SESSION_MODELS.clear()

    def show_installer(self) -> Any:
        """Open the *Install PyTorch…* dialog (non-modal); returns it."""
        from .gui.install_dialog import show_install_dialog

        return show_install_dialog(self.iface.mainWindow() if self.iface is not None else None)

    def run_on_active_layer(self) -> Any:
        """Ask for a model (dialog) and start a task on the active raster layer; returns the task or None."""
        from .gui.task_dialog import TaskDialog

        layer = self.iface.activeLayer()
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid() or layer.providerType() != "gdal":
            self.iface.messageBar().pushWarning(
                "MC Uncertainty", tr("Select a raster layer read from a file in the Layers panel first.")
            )
            return None
        dialog = TaskDialog(layer, parent=self.iface.mainWindow())
        if dialog.exec_() != QDialog.Accepted:
            return None
        return self.start_task(dialog.request())

    def start_task(self, request: Any) -> Any:
        """Run ``request`` (a :class:`~.gui.task.TaskRequest`) in QGIS's task manager; returns the task."""
        from .gui.task import McUncertaintyTask

        task = McUncertaintyTask(request)
        self.tasks.add(task)
        task.taskCompleted.connect(lambda: self._task_ended(task))
        task.taskTerminated.connect(lambda: self._task_ended(task))
        QgsApplication.taskManager().addTask(task)
        return task

    def _task_ended(self, task: Any) -> None:
        """Main thread, after the task's ``finished()``: tell the user how it went."""
        self.tasks.discard(task)
        if self.iface is None:
            return
        bar = self.iface.messageBar()
        if task.layers:
            names = ", ".join(layer.name() for layer in task.layers)
            bar.pushMessage("MC Uncertainty", tr("Added {}.").format(names), Qgis.Success, 8)
        elif task.error and task.missing_dependencies:
            from .gui.install_dialog import offer_install

            offer_install(bar, task.error, self.show_installer)
        elif task.error:
            bar.pushMessage("MC Uncertainty", task.error, Qgis.Critical, 0)
        else:
            bar.pushMessage("MC Uncertainty", tr("Cancelled; no output was written."), Qgis.Info, 5)

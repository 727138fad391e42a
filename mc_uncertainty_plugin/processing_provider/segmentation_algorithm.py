"""What the two segmentation algorithms (``mc_dropout``, ``tta``) share: identity, parameters, the core call.

A subclass sets the class attributes and, if it has parameters of its own, :meth:`extra_processor_kwargs`.
"""

from __future__ import annotations

from typing import Any

from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback
from qgis.PyQt.QtWidgets import QWidget

from .. import python_env
from ..map_layers.result_layers import Method
from .parameters import STRETCH_UNCERTAINTY, compose_help, read_common_values
from .plugin_algorithm import PluginAlgorithm
from .segmentation_parameters import add_common_parameters
from .segmentation_run import run_processor

__all__ = ["SegmentationAlgorithm", "offer_install_on_main_thread"]


def offer_install_on_main_thread(message: str) -> bool:
    """In QGIS Desktop, on the main thread: show ``message`` in the message bar with an "Install PyTorch…"
    button; True when shown (False under qgis_process, in scripts without a GUI, or from a worker thread)."""
    from qgis.PyQt.QtCore import QCoreApplication, QThread

    try:
        from qgis.utils import iface
    except ImportError:
        return False
    app = QCoreApplication.instance()
    if iface is None or app is None or QThread.currentThread() != app.thread():
        return False
    from ..gui.install_dialog import offer_install

    offer_install(iface.messageBar(), message)
    return True


class SegmentationAlgorithm(PluginAlgorithm):
    """Base of the segmentation-with-uncertainty algorithms; no run state on ``self``."""

    HELP = ""  # one paragraph per line: the Toolbox shows each line as a paragraph
    COMMAND_LINE = ""  # the last paragraph of the help: a qgis_process example (the only place keys appear)
    UNCERTAINTY_SUFFIX = ""
    WITH_N_SAMPLES = False
    TTA_DEFAULT = "none"
    METHOD: Method

    def shortHelpString(self) -> str:  # noqa: N802
        return compose_help(self, self.HELP, self.COMMAND_LINE)

    def createCustomParametersWidget(self, parent: QWidget | None = None) -> QWidget | None:  # noqa: N802
        """The Toolbox dialog, saying what an empty "Uncertainty raster" does (see :mod:`.algorithm_dialog`)."""
        try:
            from .algorithm_dialog import SegmentationDialog
        except ImportError:  # the Processing plugin's GUI is not there
            return None
        return SegmentationDialog(self.create(), self.UNCERTAINTY_SUFFIX, parent)

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        add_common_parameters(
            self,
            with_n_samples=self.WITH_N_SAMPLES,
            tta_default=self.TTA_DEFAULT,
            uncertainty_suffix=self.UNCERTAINTY_SUFFIX,
        )

    def extra_processor_kwargs(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """Keyword arguments of this algorithm's processor beyond the common ones."""
        return {}

    def prepareAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> bool:
        """Before the run (on the main thread in the Toolbox): without torch, stop at once, and offer the
        installer in the message bar. Imports nothing (cheap)."""
        if not python_env.torch_findable():
            message = python_env.missing_torch_message()
            offer_install_on_main_thread(message)
            raise QgsProcessingException(message)
        return True

    def processAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        values = read_common_values(self, parameters, context)
        stretch = self.parameterAsBoolean(parameters, STRETCH_UNCERTAINTY, context)
        settings = self.extra_processor_kwargs(parameters, context)
        return run_processor(self.METHOD, settings, values, context, feedback, stretch=stretch)

"""What the two segmentation algorithms (``mc_dropout``, ``tta``) share: identity, parameters, the core call.

A subclass sets the class attributes and, if it has parameters of its own, :meth:`extra_processor_kwargs`.
"""

from __future__ import annotations

from typing import Any

from qgis.core import QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingFeedback
from qgis.PyQt.QtGui import QIcon

from .core_runner import run_processor
from .parameters import add_common_parameters, read_common_values, tr
from .provider_icon import plugin_icon
from .result_layers import Method

__all__ = ["SegmentationAlgorithm"]


class SegmentationAlgorithm(QgsProcessingAlgorithm):
    """Base of the segmentation-with-uncertainty algorithms; no run state on ``self``."""

    ALGORITHM_ID = ""
    DISPLAY_NAME = ""
    SHORT_DESCRIPTION = ""
    TAGS: tuple[str, ...] = ()
    HELP = ""  # one paragraph per line: the Toolbox shows each line as a paragraph
    UNCERTAINTY_SUFFIX = ""
    WITH_N_SAMPLES = False
    TTA_DEFAULT = "none"
    PROCESSOR = ""  # class name in mc_uncertainty_plugin.core
    METHOD: Method

    def name(self) -> str:
        return self.ALGORITHM_ID

    def displayName(self) -> str:  # noqa: N802
        return tr(self.DISPLAY_NAME)

    def shortDescription(self) -> str:  # noqa: N802
        return tr(self.SHORT_DESCRIPTION)

    def tags(self) -> list[str]:
        return [tr(t) for t in self.TAGS]

    def shortHelpString(self) -> str:  # noqa: N802
        return tr(self.HELP)

    def icon(self) -> QIcon:
        return plugin_icon()

    def createInstance(self) -> SegmentationAlgorithm:  # noqa: N802
        return type(self)()

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802
        add_common_parameters(self, with_n_samples=self.WITH_N_SAMPLES, tta_default=self.TTA_DEFAULT,
                              uncertainty_suffix=self.UNCERTAINTY_SUFFIX)

    def extra_processor_kwargs(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """Keyword arguments of this algorithm's processor beyond the common ones."""
        return {}

    def processAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        values = read_common_values(self, parameters, context)
        return run_processor(self.PROCESSOR, self.extra_processor_kwargs(parameters, context), values, self.METHOD,
                             context, feedback)

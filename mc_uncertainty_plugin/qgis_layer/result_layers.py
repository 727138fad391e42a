"""The outputs as map layers: their names, their group, and their styling when they are loaded.

One run gives one layer group, named after the input and the method, holding the uncertainty layer above the
class layer::

    scene — MC Dropout
        scene — MC uncertainty (entropy)       singleband pseudocolor, viridis, 0 .. ln C
        scene — MC classes                      paletted, class names and colours of the config

In Processing (Toolbox, batch, ``processing.runAndLoadResults``) a :class:`ResultLayerPostProcessor` per output
does this when QGIS loads the layer, on the main thread; :class:`~.task.McUncertaintyTask` calls
:func:`add_result_layers` from its ``finished()``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from qgis.core import (
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProject,
    QgsRasterLayer,
)

from .styling import read_class_legend, style_class_layer, style_uncertainty_layer, uncertainty_maximum, uncertainty_mode

__all__ = [
    "CLASSES",
    "UNCERTAINTY",
    "Method",
    "MC_DROPOUT",
    "TTA",
    "ResultNames",
    "ResultGroup",
    "result_names",
    "style_result_layer",
    "place_in_group",
    "add_result_layers",
    "ResultLayerPostProcessor",
]

CLASSES = "classes"
UNCERTAINTY = "uncertainty"
RUN_PROPERTY = "mc_uncertainty/run"  # custom property of a result group: the run it belongs to
_MODE_LABELS = {"entropy": "entropy", "mutual_information": "mutual information",
                "expected_entropy": "expected entropy", "variation_ratio": "variation ratio"}


@dataclass(frozen=True)
class Method:
    """How the uncertainty was sampled, as layer names say it.

    Attributes:
        key: algorithm name (``mc_dropout``, ``tta``).
        short: prefix of the layer names (``MC``).
        title: suffix of the group name (``MC Dropout``).
    """

    key: str
    short: str
    title: str


MC_DROPOUT = Method("mc_dropout", "MC", "MC Dropout")
TTA = Method("tta", "TTA", "TTA")


@dataclass(frozen=True)
class ResultNames:
    """Names of a run's group and layers."""

    group: str
    classes: str
    uncertainty: str


@dataclass(frozen=True)
class ResultGroup:
    """The group a run's layers go to: its name, and an id that tells it from earlier runs' groups of that name."""

    name: str
    run_id: str

    @classmethod
    def new(cls, name: str) -> ResultGroup:
        return cls(name, uuid.uuid4().hex)


def result_names(input_name: str, method: Method, mode: str | None) -> ResultNames:
    """``"scene — MC Dropout"``, ``"scene — MC classes"``, ``"scene — MC uncertainty (entropy)"``.

    Args:
        input_name: the input layer's name (a file's stem when INPUT was a path).
        method: :data:`MC_DROPOUT` or :data:`TTA`.
        mode: the uncertainty measure (``entropy``, ``mutual_information``), None when unknown.
    """
    label = _MODE_LABELS.get(mode or "", (mode or "").replace("_", " "))
    uncertainty = f"{input_name} — {method.short} uncertainty" + (f" ({label})" if label else "")
    return ResultNames(f"{input_name} — {method.title}", f"{input_name} — {method.short} classes", uncertainty)


def style_result_layer(layer: QgsRasterLayer, role: str) -> None:
    """Style a loaded output from what its file says: ``role`` is :data:`CLASSES` or :data:`UNCERTAINTY`."""
    if role == UNCERTAINTY:
        style_uncertainty_layer(layer, uncertainty_maximum(layer.source()))
    elif role == CLASSES:
        style_class_layer(layer, read_class_legend(layer.source()))
    else:
        raise ValueError(f"role must be {CLASSES!r} or {UNCERTAINTY!r}, got {role!r}.")


def _find_run_group(group: QgsLayerTreeGroup, run_id: str) -> QgsLayerTreeGroup | None:
    for child in group.children():
        if isinstance(child, QgsLayerTreeGroup):
            if child.customProperty(RUN_PROPERTY) == run_id:
                return child
            found = _find_run_group(child, run_id)
            if found is not None:
                return found
    return None


def place_in_group(project: QgsProject, layer: QgsMapLayer, group: ResultGroup, on_top: bool) -> QgsLayerTreeGroup:
    """Move ``layer`` (already in ``project``) into the run's group, creating the group where the layer was.

    Args:
        project: the project holding the layer.
        layer: the loaded output.
        group: the run's group; layers of one run share it, another run gets a new group even with the same name.
        on_top: first in the group (the uncertainty layer) or last (the class layer).

    Returns:
        The group.
    """
    root = project.layerTreeRoot()
    node = root.findLayer(layer.id())
    parent = node.parent() if node is not None else None
    if not isinstance(parent, QgsLayerTreeGroup):
        parent = root
    target = _find_run_group(root, group.run_id)
    if target is None:
        index = next((i for i, child in enumerate(parent.children()) if child == node), 0)
        target = parent.insertGroup(index, group.name)
        target.setCustomProperty(RUN_PROPERTY, group.run_id)
    moved = node.clone() if node is not None else QgsLayerTreeLayer(layer)
    if on_top:
        target.insertChildNode(0, moved)
    else:
        target.addChildNode(moved)
    if node is not None:
        parent.removeChildNode(node)
    return target


def add_result_layers(
    project: QgsProject,
    class_path: str,
    uncertainty_path: str | None,
    input_name: str,
    method: Method,
) -> list[QgsRasterLayer]:
    """Load a run's outputs into ``project``, styled, in a new group at the top of the layer tree.

    Call on the main thread. Returns the layers added (uncertainty first when there is one).
    """
    names = result_names(input_name, method, uncertainty_mode(uncertainty_path) if uncertainty_path else None)
    outputs = [(uncertainty_path, names.uncertainty, UNCERTAINTY), (class_path, names.classes, CLASSES)]
    layers: list[QgsRasterLayer] = []
    for path, name, role in outputs:
        if not path:
            continue
        layer = QgsRasterLayer(path, name, "gdal")
        if not layer.isValid():
            raise ValueError(f"output raster cannot be loaded: {path!r}.")
        style_result_layer(layer, role)
        layers.append(layer)
    group = project.layerTreeRoot().insertGroup(0, names.group)
    for layer in layers:
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    return layers


class ResultLayerPostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles, names and groups one output when Processing loads it (``postProcessLayer`` runs on the main thread).

    One instance per output (layer id = output path) is kept in a class-level dict: Processing holds only a C++
    pointer to it, and a Python object nobody references would be collected before the layer is loaded.
    """

    _instances: dict[str, ResultLayerPostProcessor] = {}

    def __init__(self, role: str, name: str, group: ResultGroup) -> None:
        super().__init__()
        self.role = role
        self.name = name
        self.group = group

    @classmethod
    def attach(cls, context: QgsProcessingContext, layer_id: str, role: str, name: str, group: ResultGroup) -> bool:
        """Attach a post-processor to output ``layer_id`` if it will be loaded on completion; True when attached."""
        if not context.willLoadLayerOnCompletion(layer_id):
            return False
        processor = cls(role, name, group)
        cls._instances[layer_id] = processor
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(processor)
        return True

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> None:  # noqa: N802
        """Style ``layer``, give it its name and move it into the run's group."""
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            return
        style_result_layer(layer, self.role)
        layer.setName(self.name)
        project = layer.project() or context.project() or QgsProject.instance()
        place_in_group(project, layer, self.group, on_top=self.role == UNCERTAINTY)

"""The outputs as map layers: their names, their group, and their styling when they are loaded.

One run gives one layer group, named after the input, the method and what tells the run from others (T, the
transforms, the measure), holding the uncertainty layer above the class layer::

    scene — MC Dropout (T = 10, MI)
        scene — MC uncertainty (mutual information, T = 10)     singleband pseudocolor, viridis, 0 .. ln C
        scene — MC classes (T = 10)                             paletted, class names and colours of the config

and, when they are written, "scene — MC confident classes (T = 10, MI ≤ 0.05)" (paletted like the classes) and
"scene — MC class probabilities (T = 10)" (singleband gray, one band per class). The margin's layer says
"margin, low = unsure" and is coloured with viridis reversed.

A run whose names equal an earlier run's gets a number: "scene — MC Dropout (T = 10, MI) #2", and its layers
"… #2" too. A result group never goes inside another result group: when QGIS would load the outputs into an
earlier run's group (it loads new layers where the current layer is, and after a run that is the run's group),
the new group is created beside it.

In Processing (Toolbox, batch, ``processing.runAndLoadResults``) a :class:`ResultLayerPostProcessor` per output
does this when QGIS loads the layer, on the main thread; :class:`~.task.McUncertaintyTask` calls
:func:`add_result_layers` from its ``finished()``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from osgeo import gdal
from qgis.core import (
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsLayerTreeNode,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProject,
    QgsRasterLayer,
)

from .styling import (
    low_means_unsure,
    read_class_legend,
    scale_maximum,
    style_class_layer,
    style_probability_layer,
    style_uncertainty_layer,
    uncertainty_mode,
    uncertainty_stretch,
)

__all__ = [
    "CLASSES",
    "UNCERTAINTY",
    "CONFIDENT",
    "PROBABILITIES",
    "Method",
    "MC_DROPOUT",
    "TTA",
    "RunDetails",
    "ResultNames",
    "ResultGroup",
    "result_names",
    "numbered",
    "run_number",
    "style_result_layer",
    "place_in_group",
    "add_result_layers",
    "ResultLayerPostProcessor",
]

CLASSES = "classes"
UNCERTAINTY = "uncertainty"
CONFIDENT = "confident"
PROBABILITIES = "probabilities"
RUN_PROPERTY = "mc_uncertainty/run"  # custom property of a result group: the run it belongs to
BASE_NAME_PROPERTY = "mc_uncertainty/base_name"  # the group's name without its run number
NUMBER_PROPERTY = "mc_uncertainty/number"  # the run number (1 = the first run of that name)
STRETCH_NOTE = "colours stretched 2–98 %"
_MODE_LABELS = {
    "entropy": "entropy",
    "mutual_information": "mutual information",
    "expected_entropy": "expected entropy",
    "variation_ratio": "variation ratio",
    "normalized_entropy": "normalized entropy",
    "margin": "margin, low = unsure",
}
_MODE_SHORT = {
    "entropy": "entropy",
    "mutual_information": "MI",
    "expected_entropy": "expected entropy",
    "variation_ratio": "variation ratio",
    "normalized_entropy": "normalized entropy",
    "margin": "margin",
}


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
class RunDetails:
    """What tells one run from another, read back from its outputs' metadata.

    Attributes:
        mode: the uncertainty measure (``entropy`` ...), or None when unknown.
        n_samples: T, the stochastic passes (MC dropout), or None.
        tta_mode: the transforms (``none``, ``flip``, ``d4``), or None.
        stretched: the uncertainty's colours are stretched to the data (2–98 %) instead of 0 .. maximum.
        threshold: the confident class raster's threshold, or None.
    """

    mode: str | None = None
    n_samples: int | None = None
    tta_mode: str | None = None
    stretched: bool = False
    threshold: float | None = None

    @classmethod
    def from_outputs(cls, class_path: str | None, *others: str | None, stretched: bool = False) -> RunDetails:
        """Read ``MC_UNCERTAINTY_MODE``, ``MC_N_SAMPLES``, ``MC_TTA_MODE`` and ``MC_CONFIDENT_THRESHOLD`` from
        the written rasters (the class raster and any ``others``: uncertainty, confident classes)."""
        metadata: dict[str, str] = {}
        for path in (class_path, *others):
            dataset = gdal.Open(path) if path else None
            if dataset is not None:
                metadata.update(dataset.GetMetadata() or {})

        def number(key: str, kind: type) -> Any:
            try:
                return kind(metadata[key])
            except (KeyError, ValueError):
                return None

        return cls(
            metadata.get("MC_UNCERTAINTY_MODE") or None,
            number("MC_N_SAMPLES", int),
            metadata.get("MC_TTA_MODE") or None,
            stretched,
            number("MC_CONFIDENT_THRESHOLD", float),
        )

    def sampling(self, method: Method) -> str:
        """``"T = 10"``, ``"T = 10 × flip"`` (MC dropout), ``"d4"`` (TTA); "" when unknown."""
        transforms = self.tta_mode if self.tta_mode and self.tta_mode != "none" else ""
        if method.key == MC_DROPOUT.key:
            if self.n_samples is None:
                return transforms
            return f"T = {self.n_samples}" + (f" × {transforms}" if transforms else "")
        return transforms


@dataclass(frozen=True)
class ResultNames:
    """Names of a run's group and layers (before a run number is added: :func:`numbered`)."""

    group: str
    classes: str
    uncertainty: str
    confident: str = ""
    probabilities: str = ""


@dataclass(frozen=True)
class ResultGroup:
    """The group a run's layers go to: its name, and an id that tells it from earlier runs' groups of that name."""

    name: str
    run_id: str

    @classmethod
    def new(cls, name: str) -> ResultGroup:
        return cls(name, uuid.uuid4().hex)


def _parenthesis(*parts: str) -> str:
    text = ", ".join(part for part in parts if part)
    return f" ({text})" if text else ""


def result_names(input_name: str, method: Method, details: RunDetails | str | None = None) -> ResultNames:
    """``"scene — MC Dropout (T = 10, MI)"``, ``"scene — MC classes (T = 10)"``,
    ``"scene — MC uncertainty (mutual information, T = 10)"``.

    Args:
        input_name: the input layer's name (a file's stem when INPUT was a path).
        method: :data:`MC_DROPOUT` or :data:`TTA`.
        details: what the outputs say about the run (:meth:`RunDetails.from_outputs`); a mode name alone, or
            None when unknown.
    """
    if not isinstance(details, RunDetails):
        details = RunDetails(mode=details)
    mode = details.mode or ""
    label = _MODE_LABELS.get(mode, mode.replace("_", " "))
    sampling = details.sampling(method)
    uncertainty = f"{input_name} — {method.short} uncertainty" + _parenthesis(label, sampling)
    if details.stretched:
        uncertainty = (
            uncertainty[:-1] + f"; {STRETCH_NOTE})" if uncertainty.endswith(")") else f"{uncertainty} ({STRETCH_NOTE})"
        )
    short = _MODE_SHORT.get(mode, label)
    kept = ""
    if details.threshold is not None:
        kept = f"{short} {'≥' if low_means_unsure(mode) else '≤'} {details.threshold:g}"
    return ResultNames(
        f"{input_name} — {method.title}" + _parenthesis(sampling, short),
        f"{input_name} — {method.short} classes" + _parenthesis(sampling),
        uncertainty,
        f"{input_name} — {method.short} confident classes" + _parenthesis(sampling, kept),
        f"{input_name} — {method.short} class probabilities" + _parenthesis(sampling),
    )


def numbered(name: str, number: int) -> str:
    """``name`` with the run number: unchanged for the first run, ``"name #2"`` for the second."""
    return name if number <= 1 else f"{name} #{number}"


def run_number(group: QgsLayerTreeGroup) -> int:
    """The run number of a result group (1 when it has none)."""
    try:
        return int(group.customProperty(NUMBER_PROPERTY) or 1)
    except (TypeError, ValueError):
        return 1


def _result_groups(group: QgsLayerTreeGroup) -> list[QgsLayerTreeGroup]:
    found = []
    for child in group.children():
        if isinstance(child, QgsLayerTreeGroup):
            if child.customProperty(RUN_PROPERTY):
                found.append(child)
            found += _result_groups(child)
    return found


def _new_result_group(
    root: QgsLayerTreeGroup, parent: QgsLayerTreeGroup, index: int, group: ResultGroup
) -> QgsLayerTreeGroup:
    """Insert the run's group into ``parent`` at ``index``, numbered after the project's groups of that name."""
    number = 1 + sum(1 for g in _result_groups(root) if g.customProperty(BASE_NAME_PROPERTY) == group.name)
    target = parent.insertGroup(index, numbered(group.name, number))
    target.setCustomProperty(RUN_PROPERTY, group.run_id)
    target.setCustomProperty(BASE_NAME_PROPERTY, group.name)
    target.setCustomProperty(NUMBER_PROPERTY, number)
    return target


def style_result_layer(layer: QgsRasterLayer, role: str, stretch: bool = False) -> None:
    """Style a loaded output from what its file says: ``role`` is :data:`CLASSES`, :data:`UNCERTAINTY`,
    :data:`CONFIDENT` or :data:`PROBABILITIES`; ``stretch`` spreads the uncertainty's colours over its 2–98 %
    range instead of 0 .. maximum. A margin (low = unsure) is coloured with the ramp reversed."""
    if role == UNCERTAINTY:
        reverse = low_means_unsure(uncertainty_mode(layer.source()))
        if stretch:
            style_uncertainty_layer(layer, *uncertainty_stretch(layer), reverse=reverse)
        else:
            style_uncertainty_layer(layer, scale_maximum(layer.source()), reverse=reverse)
    elif role in (CLASSES, CONFIDENT):
        style_class_layer(layer, read_class_legend(layer.source()))
    elif role == PROBABILITIES:
        style_probability_layer(layer)
    else:
        roles = (CLASSES, UNCERTAINTY, CONFIDENT, PROBABILITIES)
        raise ValueError(f"role must be one of {', '.join(roles)}, got {role!r}.")


def _find_run_group(group: QgsLayerTreeGroup, run_id: str) -> QgsLayerTreeGroup | None:
    for child in group.children():
        if isinstance(child, QgsLayerTreeGroup):
            if child.customProperty(RUN_PROPERTY) == run_id:
                return child
            found = _find_run_group(child, run_id)
            if found is not None:
                return found
    return None


def _outside_result_groups(root: QgsLayerTreeGroup, node: QgsLayerTreeNode | None) -> tuple[QgsLayerTreeGroup, int]:
    """Where a new result group goes for a layer loaded at ``node``: the layer's place, or, when that is inside
    result groups, beside the outermost of them (a result group never goes inside another)."""
    anchor = node
    parent = node.parent() if node is not None else None
    if not isinstance(parent, QgsLayerTreeGroup):
        return root, 0
    while parent is not root and parent.customProperty(RUN_PROPERTY) and isinstance(parent.parent(), QgsLayerTreeGroup):
        anchor, parent = parent, parent.parent()
    index = next((i for i, child in enumerate(parent.children()) if child == anchor), 0)
    return parent, index


def place_in_group(project: QgsProject, layer: QgsMapLayer, group: ResultGroup, on_top: bool) -> QgsLayerTreeGroup:
    """Move ``layer`` (already in ``project``) into the run's group, creating the group where the layer was
    loaded (beside a result group the layer was loaded into, never inside it).

    Args:
        project: the project holding the layer.
        layer: the loaded output.
        group: the run's group; layers of one run share it, another run gets a new group even with the same name.
        on_top: first in the group (the uncertainty layer) or last (the class layer).

    Returns:
        The group (its :func:`run_number` numbers the layers' names).
    """
    root = project.layerTreeRoot()
    node = root.findLayer(layer.id())
    target = next((g for g in _result_groups(root) if g.customProperty(RUN_PROPERTY) == group.run_id), None)
    if target is None:
        parent, index = _outside_result_groups(root, node)
        target = _new_result_group(root, parent, index, group)
    moved = node.clone() if node is not None else QgsLayerTreeLayer(layer)
    if on_top:
        target.insertChildNode(0, moved)
    else:
        target.addChildNode(moved)
    if node is not None and isinstance(node.parent(), QgsLayerTreeGroup):
        node.parent().removeChildNode(node)
    return target


def add_result_layers(
    project: QgsProject,
    class_path: str,
    uncertainty_path: str | None,
    input_name: str,
    method: Method,
    stretch: bool = False,
) -> list[QgsRasterLayer]:
    """Load a run's outputs into ``project``, styled, in a new group at the top of the layer tree.

    Call on the main thread. ``stretch`` stretches the uncertainty's colours to the data (2–98 %). Returns the
    layers added (uncertainty first when there is one).
    """
    names = result_names(input_name, method, RunDetails.from_outputs(class_path, uncertainty_path, stretched=stretch))
    outputs = [(uncertainty_path, names.uncertainty, UNCERTAINTY), (class_path, names.classes, CLASSES)]
    layers: list[QgsRasterLayer] = []
    for path, name, role in outputs:
        if not path:
            continue
        layer = QgsRasterLayer(path, name, "gdal")
        if not layer.isValid():
            raise ValueError(f"output raster cannot be loaded: {path!r}.")
        style_result_layer(layer, role, stretch)
        layers.append(layer)
    root = project.layerTreeRoot()
    group = _new_result_group(root, root, 0, ResultGroup.new(names.group))
    for layer in layers:
        layer.setName(numbered(layer.name(), run_number(group)))
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    return layers


class ResultLayerPostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles, names and groups one output when Processing loads it (``postProcessLayer`` runs on the main thread).

    One instance per output (layer id = output path) is kept in a class-level dict: Processing holds only a C++
    pointer to it, and a Python object nobody references would be collected before the layer is loaded.
    """

    _instances: dict[str, ResultLayerPostProcessor] = {}

    def __init__(self, role: str, name: str, group: ResultGroup, stretch: bool = False) -> None:
        super().__init__()
        self.role = role
        self.name = name
        self.group = group
        self.stretch = stretch

    @classmethod
    def attach(
        cls,
        context: QgsProcessingContext,
        layer_id: str,
        role: str,
        name: str,
        group: ResultGroup,
        stretch: bool = False,
    ) -> bool:
        """Attach a post-processor to output ``layer_id`` if it will be loaded on completion; True when attached."""
        if not context.willLoadLayerOnCompletion(layer_id):
            return False
        processor = cls(role, name, group, stretch)
        cls._instances[layer_id] = processor
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(processor)
        return True

    def postProcessLayer(
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:  # noqa: N802
        """Style ``layer``, give it its name and move it into the run's group."""
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            return
        style_result_layer(layer, self.role, self.stretch)
        project = layer.project() or context.project() or QgsProject.instance()
        group = place_in_group(project, layer, self.group, on_top=self.role == UNCERTAINTY)
        layer.setName(numbered(self.name, run_number(group)))

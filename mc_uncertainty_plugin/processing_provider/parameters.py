"""Processing parameters shared by the provider's algorithms, and reading them back.

Keys, kinds and defaults follow the parameter table of the README. Help texts name parameters by the labels users
see in the dialog (keys appear only in command-line examples). Enum parameters store option *names*
(``usesStaticStrings``) and accept an option index too, so ``qgis_process run ... -- TILE_WEIGHT=pyramid``,
``TILE_WEIGHT=1`` and ``processing.run(..., {"TILE_WEIGHT": "pyramid"})`` (or ``1``) all work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProperty,
)
from qgis.PyQt.QtCore import QVariant

# The core's choices: core.config needs no torch, so the provider still loads without it.
from ..core.config import DEVICES, TILE_WEIGHTS, TTA_MODES, TTA_TRANSFORMS, UNCERTAINTY_MODES
from ..i18n import tr
from .run_guards import processing_error, raw_number

__all__ = [
    "INPUT",
    "MODEL",
    "CHECKPOINT",
    "BANDS",
    "NUM_CLASSES",
    "MODEL_INPUT_SHAPE",
    "STEP_SHAPE",
    "TILE_WEIGHT",
    "UNCERTAINTY_MODE",
    "EXPORT_UNCERTAINTY_MAP",
    "N_SAMPLES",
    "TTA_MODE",
    "SEED",
    "BATCH_SIZE",
    "DEVICE",
    "OUTPUT",
    "OUTPUT_UNCERTAINTY",
    "OUTPUT_CONFIDENCE",
    "OUTPUT_PROBABILITIES",
    "OUTPUT_CONFIDENT",
    "CONFIDENT_THRESHOLD",
    "PROBABILITIES_DATA_TYPE",
    "STRETCH_UNCERTAINTY",
    "SCHEDULER",
    "BLOCK_SIZE",
    "TILE_WEIGHTS",
    "UNCERTAINTY_MODES",
    "TTA_MODES",
    "TTA_TRANSFORMS",
    "PROBABILITY_DTYPES",
    "TTA_HELP",
    "tta_help",
    "DEVICES",
    "MODEL_FILE_FILTER",
    "CHECKPOINT_FILE_FILTER",
    "tr",
    "NamedEnumParameter",
    "TtaModeParameter",
    "read_enum",
    "read_tta_mode",
    "read_bands",
    "choices_help",
    "named_enum",
    "CommonValues",
    "read_common_values",
    "given",
    "output_given",
    "with_help",
    "parameters_help",
    "compose_help",
]

INPUT = "INPUT"
MODEL = "MODEL"
CHECKPOINT = "CHECKPOINT"
BANDS = "BANDS"
NUM_CLASSES = "NUM_CLASSES"
MODEL_INPUT_SHAPE = "MODEL_INPUT_SHAPE"
STEP_SHAPE = "STEP_SHAPE"
TILE_WEIGHT = "TILE_WEIGHT"
UNCERTAINTY_MODE = "UNCERTAINTY_MODE"
EXPORT_UNCERTAINTY_MAP = "EXPORT_UNCERTAINTY_MAP"
N_SAMPLES = "N_SAMPLES"
TTA_MODE = "TTA_MODE"
SEED = "SEED"
BATCH_SIZE = "BATCH_SIZE"
DEVICE = "DEVICE"
OUTPUT = "OUTPUT"
OUTPUT_UNCERTAINTY = "OUTPUT_UNCERTAINTY"
OUTPUT_CONFIDENCE = "OUTPUT_CONFIDENCE"
OUTPUT_PROBABILITIES = "OUTPUT_PROBABILITIES"
OUTPUT_CONFIDENT = "OUTPUT_CONFIDENT"
CONFIDENT_THRESHOLD = "CONFIDENT_THRESHOLD"
PROBABILITIES_DATA_TYPE = "PROBABILITIES_DATA_TYPE"
STRETCH_UNCERTAINTY = "STRETCH_UNCERTAINTY"
SCHEDULER = "SCHEDULER"
BLOCK_SIZE = "BLOCK_SIZE"

PROBABILITY_DTYPES = ("float32", "uint8")

_TTA_TRANSFORMS = (
    "flip = 4 transforms that keep the tile's shape: identity, horizontal flip, vertical flip and both (= rotation "
    "by 180°), exact for any tile; d4 = the 8 symmetries of the square: those 4 plus the rotations by 90° and "
    "270° and the two transposes. These 4 turn an H x W tile into a W x H one, which is fed to the model as is "
    "(no padding, no resampling), so d4 stays exact on non-square tiles; the model must accept both "
    "orientations (SMP models: both sides multiples of 32). Run time grows with the number of transforms. "
    "From the command line and scripts, any subset of the 8 by name, comma-separated, in any order: "
    + ",".join(TTA_TRANSFORMS)
    + " (e.g. identity,hflip,rot90; hflip = left-right, vflip = up-down)."
)
TTA_HELP = (  # the TTA algorithm's meaning: without transforms, one deterministic pass
    "none = one deterministic pass (the uncertainty is that pass's entropy; mutual information is 0); "
    + _TTA_TRANSFORMS
)
_MC_TTA_HELP = (
    "none = no augmentation: the T dropout passes only (the default); "
    + _TTA_TRANSFORMS
    + " Combined with MC dropout: T x K samples, each transform with its own dropout masks."
)


def tta_help(with_n_samples: bool) -> str:
    """The help of TTA_MODE: in MC dropout "none" means no augmentation (the T passes still run); in TTA, one
    deterministic pass."""
    return _MC_TTA_HELP if with_n_samples else TTA_HELP


MODEL_FILE_FILTER = "Model config or TorchScript (*.yaml *.yml *.pt *.torchscript *.jit);;All files (*.*)"
CHECKPOINT_FILE_FILTER = "Checkpoint (*.pth *.pt *.ckpt *.safetensors);;All files (*.*)"


def with_help(
    parameter: QgsProcessingParameterDefinition, help_text: str, advanced: bool = False
) -> QgsProcessingParameterDefinition:
    parameter.setHelp(tr(help_text))
    if advanced:
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def _as_index(value: Any) -> int | None:
    """``value`` as an option index (``1``, ``"1"``), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class NamedEnumParameter(QgsProcessingParameterEnum):
    """A single-choice enum whose value is the option name; an option index is accepted as well.

    QGIS 3.22 enums take either indices or (``usesStaticStrings``) names; this one takes both, so the
    ``qgis_process help`` text ("Number of selected option") and the names in our help both work.
    """

    def __init__(self, name: str, description: str, options: list[str], default: str) -> None:
        super().__init__(name, description, options, False, default, False, True)

    def clone(self) -> NamedEnumParameter:
        copy = NamedEnumParameter(self.name(), self.description(), self.options(), self.defaultValue())
        copy.setFlags(self.flags())
        copy.setHelp(self.help())
        copy.setMetadata(self.metadata())
        return copy

    def checkValueIsAcceptable(self, value: Any, context: QgsProcessingContext | None = None) -> bool:  # noqa: N802
        index = _as_index(value)
        if index is not None:
            return 0 <= index < len(self.options())
        return super().checkValueIsAcceptable(value, context)


class TtaModeParameter(NamedEnumParameter):
    """TTA_MODE: a named set (``none``, ``flip``, ``d4``, or its index), or a comma-separated subset of the eight
    transforms (``identity,hflip,rot90``) from the command line and scripts; the dialog offers the named sets.

    A value made of transform names is accepted here and checked by the core, whose error names TTA_MODE and
    says what is wrong (a repeated or unknown name).
    """

    def clone(self) -> TtaModeParameter:
        copy = TtaModeParameter(self.name(), self.description(), self.options(), self.defaultValue())
        copy.setFlags(self.flags())
        copy.setHelp(self.help())
        copy.setMetadata(self.metadata())
        return copy

    def checkValueIsAcceptable(self, value: Any, context: QgsProcessingContext | None = None) -> bool:  # noqa: N802
        if (isinstance(value, str) and "," in value) or str(value).strip().lower() in TTA_TRANSFORMS:
            return True
        return super().checkValueIsAcceptable(value, context)


def choices_help(options: tuple[str, ...]) -> str:
    """``'Name or index: a (0), b (1)'`` for the help of an enum parameter."""
    return "Name or index: " + ", ".join(f"{name} ({i})" for i, name in enumerate(options))


def named_enum(key: str, description: str, options: tuple[str, ...], default: str) -> QgsProcessingParameterEnum:
    return NamedEnumParameter(key, tr(description), list(options), default)


def read_enum(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], key: str, context: QgsProcessingContext
) -> str:
    """The option name of enum ``key``, given as a name or an index (QGIS's reader would drop indices).

    Raises:
        QgsProcessingException: the value is neither an option name nor an index, naming the key and the value.
    """
    definition = algorithm.parameterDefinition(key)
    options = definition.options()
    text = algorithm.parameterAsString(parameters, key, context).strip()
    if not text:
        return str(definition.defaultValue())
    if text in options:
        return text
    index = _as_index(text)
    if index is not None and 0 <= index < len(options):
        return options[index]
    raise processing_error(
        tr("{} must be one of {} (or 0..{}), got {!r}.").format(key, ", ".join(options), len(options) - 1, text)
    )


def read_tta_mode(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
    """TTA_MODE: a named set given as a name or an index, or a subset of transform names passed on as given
    (the core checks it and names TTA_MODE in its error)."""
    text = algorithm.parameterAsString(parameters, TTA_MODE, context).strip()
    if "," in text or text.lower() in TTA_TRANSFORMS:
        return text
    return read_enum(algorithm, parameters, TTA_MODE, context)


def read_bands(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext
) -> list[int]:
    """BANDS as a list of band numbers: a list, ``"3,2,1"`` or ``"3;2;1"`` (QGIS itself reads ``;`` only, and
    reads a word as band 0).

    Raises:
        QgsProcessingException: an item is not a whole number, naming BANDS and the value given.
    """
    raw = parameters.get(BANDS)
    if raw is None or isinstance(raw, (str, list, tuple)) and not raw:
        return []
    items = (
        raw.replace(";", ",").split(",") if isinstance(raw, str) else raw if isinstance(raw, (list, tuple)) else None
    )
    if items is None:  # an expression or a model input: QGIS evaluates it
        return algorithm.parameterAsInts(parameters, BANDS, context)
    bands = []
    for item in items:
        text = str(item).strip()
        if not text.isdigit():
            raise processing_error(tr("BANDS must list band numbers (e.g. 3,2,1), got {!r}.").format(raw))
        bands.append(int(text))
    return bands


def parameters_help(algorithm: QgsProcessingAlgorithm) -> str:
    """One paragraph per visible parameter, by the label users see: ``"• Label: help"`` (hidden ones left out)."""
    lines = []
    for definition in algorithm.parameterDefinitions():
        if definition.flags() & QgsProcessingParameterDefinition.FlagHidden:
            continue
        help_text = definition.help() or ""
        lines.append(f"• {definition.description()}" + (f": {help_text}" if help_text else ""))
    return "\n".join(lines)


def compose_help(algorithm: QgsProcessingAlgorithm, intro: str, command_line: str) -> str:
    """The help panel of ``algorithm``: ``intro``, every parameter by its label (:func:`parameters_help`), then
    ``command_line`` (the only place keys appear). One paragraph per line."""
    return "\n".join((tr(intro), tr("Parameters:"), parameters_help(algorithm), tr(command_line)))


@dataclass(frozen=True)
class CommonValues:
    """The parameter values every algorithm passes to the core.

    Attributes:
        input_path: GDAL source of INPUT.
        input_name: INPUT's layer name (a file's stem when INPUT was a path), for the result layers' names.
        model_path: MODEL file.
        checkpoint_path: CHECKPOINT file, or None.
        output_path: OUTPUT file (temporary outputs already resolved).
        uncertainty_path: OUTPUT_UNCERTAINTY file, or None to let the core write it beside OUTPUT.
        confidence_path: OUTPUT_CONFIDENCE file, or None (not written).
        processor_kwargs: keyword arguments of the core processors shared by all algorithms.
        probabilities_path: OUTPUT_PROBABILITIES file, or None (not written).
        probabilities_dtype: PROBABILITIES_DATA_TYPE, ``float32`` or ``uint8``.
        confident_path: OUTPUT_CONFIDENT file, or None (not written).
        confident_threshold: CONFIDENT_THRESHOLD as given (the core checks it against the measure's range).
    """

    input_path: str
    input_name: str
    model_path: str
    checkpoint_path: str | None
    output_path: str
    uncertainty_path: str | None
    processor_kwargs: dict[str, Any]
    confidence_path: str | None = None
    probabilities_path: str | None = None
    probabilities_dtype: str = "float32"
    confident_path: str | None = None
    confident_threshold: Any = 0.5


def given(parameters: dict[str, Any], key: str) -> bool:
    """Whether the caller gave ``key`` (the Toolbox gives all; qgis_process and processing.run may not)."""
    return parameters.get(key) not in (None, "")


def output_given(parameters: dict[str, Any], key: str) -> bool:
    """Whether the caller gave a destination for output ``key``.

    An empty definition means "not given": the Batch dialog passes ``QgsProcessingOutputLayerDefinition("")``
    for every output left blank (taking it as given would queue an empty path to load).
    """
    value = parameters.get(key)
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink
    if isinstance(value, QgsProperty):
        if value.propertyType() != QgsProperty.StaticProperty:
            return True  # an expression: only the run can tell
        value = value.staticValue()
    if isinstance(value, QVariant):
        value = None if value.isNull() else value.value()
    return value is not None and str(value).strip() != ""


def read_common_values(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext
) -> CommonValues:
    """Read the parameters added by :func:`~.segmentation_parameters.add_common_parameters` (without ``N_SAMPLES``).

    Raises:
        QgsProcessingException: INPUT is not a GDAL raster, or MODEL is missing.
    """
    layer = algorithm.parameterAsRasterLayer(parameters, INPUT, context)
    if layer is None:
        raise processing_error(algorithm.invalidRasterError(parameters, INPUT))
    if layer.providerType() != "gdal":
        raise processing_error(
            tr("INPUT must be a GDAL raster (a file), got a '{}' layer: {!r}.").format(
                layer.providerType(), layer.source()
            )
        )
    model_path = algorithm.parameterAsFile(parameters, MODEL, context)
    if not model_path:
        raise processing_error(
            tr("MODEL must be a model config YAML or a TorchScript file, got {!r}.").format(model_path)
        )
    checkpoint_path = algorithm.parameterAsFile(parameters, CHECKPOINT, context) or None
    bands = read_bands(algorithm, parameters, context)
    export_uncertainty = algorithm.parameterAsBoolean(parameters, EXPORT_UNCERTAINTY_MAP, context)
    output_path = algorithm.parameterAsOutputLayer(parameters, OUTPUT, context)
    # Only resolved when written: resolving registers the layer for loading in the Toolbox.
    uncertainty_path = None
    if export_uncertainty and output_given(parameters, OUTPUT_UNCERTAINTY):
        uncertainty_path = algorithm.parameterAsOutputLayer(parameters, OUTPUT_UNCERTAINTY, context) or None
    confidence_path, probabilities_path, confident_path = (
        _optional_output(algorithm, parameters, key, context)
        for key in (OUTPUT_CONFIDENCE, OUTPUT_PROBABILITIES, OUTPUT_CONFIDENT)
    )
    processor_kwargs: dict[str, Any] = {
        "uncertainty_mode": read_enum(algorithm, parameters, UNCERTAINTY_MODE, context),
        "export_uncertainty_map": export_uncertainty,
        "num_classes": raw_number(algorithm, parameters, NUM_CLASSES, context),
        "model_input_shape": algorithm.parameterAsString(parameters, MODEL_INPUT_SHAPE, context),
        "step_shape": algorithm.parameterAsString(parameters, STEP_SHAPE, context),
        "tile_weight": read_enum(algorithm, parameters, TILE_WEIGHT, context),
        "tta_mode": read_tta_mode(algorithm, parameters, context),
        "seed": raw_number(algorithm, parameters, SEED, context),
        "batch_size": raw_number(algorithm, parameters, BATCH_SIZE, context),
        "device": read_enum(algorithm, parameters, DEVICE, context),
        "bands": tuple(bands) if bands else None,
        "scheduler": algorithm.parameterAsString(parameters, SCHEDULER, context).strip(),
        "block_size": raw_number(algorithm, parameters, BLOCK_SIZE, context) if given(parameters, BLOCK_SIZE) else 0,
    }
    # Left out (qgis_process, processing.run): the model config's inference_processor section decides, then
    # the built-in default. The Toolbox dialog always passes every value.
    config_keys = {
        UNCERTAINTY_MODE: "uncertainty_mode",
        NUM_CLASSES: "num_classes",
        MODEL_INPUT_SHAPE: "model_input_shape",
        STEP_SHAPE: "step_shape",
        TILE_WEIGHT: "tile_weight",
        TTA_MODE: "tta_mode",
        SEED: "seed",
        BATCH_SIZE: "batch_size",
        DEVICE: "device",
    }
    for key, name in config_keys.items():
        if not given(parameters, key):
            processor_kwargs[name] = None
    return CommonValues(
        input_path=layer.source(),
        input_name=layer.name(),
        model_path=model_path,
        checkpoint_path=checkpoint_path,
        output_path=output_path,
        uncertainty_path=uncertainty_path,
        processor_kwargs=processor_kwargs,
        confidence_path=confidence_path,
        probabilities_path=probabilities_path,
        probabilities_dtype=read_enum(algorithm, parameters, PROBABILITIES_DATA_TYPE, context),
        confident_path=confident_path,
        confident_threshold=raw_number(algorithm, parameters, CONFIDENT_THRESHOLD, context),
    )


def _optional_output(
    algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], key: str, context: QgsProcessingContext
) -> str | None:
    """An optional output's file, or None when not given (resolving registers the layer for loading)."""
    if not output_given(parameters, key):
        return None
    return algorithm.parameterAsOutputLayer(parameters, key, context) or None

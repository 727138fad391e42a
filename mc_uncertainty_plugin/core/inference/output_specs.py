"""What each output raster of a run holds and how it is written: :class:`OutputSpec`, made by
:func:`describe_outputs` once the model's class count is known.

The outputs, by Processing key (``kind`` = the field of the merger's finished rows each one takes):

- ``OUTPUT`` (``classes``): uint8 class index, 255 = nodata, the config's colour table and class names;
- ``OUTPUT_UNCERTAINTY`` (``uncertainty``): float32, the measure of UNCERTAINTY_MODE, -1 = nodata;
- ``OUTPUT_CONFIDENCE`` (``confidence``): float32 ``max_c p̄_c``, -1 = nodata;
- ``OUTPUT_PROBABILITIES`` (``probabilities``): one band per class, p̄ as float32 (-1 = nodata) or as uint8
  ``round(254 p̄)`` (255 = nodata), band descriptions = class names;
- ``OUTPUT_CONFIDENT`` (``confident``): the class raster with the pixels whose uncertainty is above
  CONFIDENT_THRESHOLD (margin: below it) set to 255.

Plain data only (strings, numbers, tuples): a spec travels with the :class:`~.plan.RunPlan` to other threads or
processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import InferenceConfig
from ..errors import ParameterError
from ..io.conventions import CLASS_NODATA, PROBABILITY_SCALE_UINT8, UNCERTAINTY_NODATA, parse_colour
from ..models.loading import LoadedModel
from .uncertainty import low_means_unsure, uncertainty_maximum

__all__ = [
    "UNCERTAINTY_DESCRIPTIONS",
    "PROBABILITY_DTYPES",
    "CONFIDENT_THRESHOLD_DEFAULT",
    "OutputSpec",
    "OutputOptions",
    "check_threshold",
    "describe_outputs",
]

UNCERTAINTY_DESCRIPTIONS = {
    "entropy": "predictive entropy H[mean p] (nats)",
    "mutual_information": "mutual information / BALD (nats)",
    "expected_entropy": "expected entropy mean H[p] (aleatoric, nats)",
    "variation_ratio": "variation ratio 1 - modal vote share",
    "normalized_entropy": "normalized entropy H[mean p] / ln C (0..1)",
    "margin": "margin p1 - p2 of the two largest mean p (0..1, low = unsure)",
}
PROBABILITY_DTYPES = ("float32", "uint8")  # PROBABILITIES_DATA_TYPE
CONFIDENT_THRESHOLD_DEFAULT = 0.5  # in range for every mode and every C >= 2


@dataclass(frozen=True)
class OutputSpec:
    """One output raster: which Processing key and blend result it holds, and how it is written.

    ``bands`` bands (``(bands, h, w)`` rows when more than one), named by ``band_descriptions``. With ``scale``,
    the float values ``v`` of the rows are written as ``round(scale * v)`` (``nodata`` where ``v`` is the float
    nodata -1).
    """

    key: str  # OUTPUT, OUTPUT_UNCERTAINTY, OUTPUT_CONFIDENCE, OUTPUT_PROBABILITIES, OUTPUT_CONFIDENT
    kind: str  # the field of the merger's finished rows: classes, uncertainty, confidence, probabilities, confident
    path: str
    dtype: str
    nodata: float
    description: str
    metadata: tuple[tuple[str, str], ...]
    overview_resampling: str
    color_table: tuple[tuple[int, int, int, int], ...] | None = None
    category_names: tuple[str, ...] | None = None
    bands: int = 1
    band_descriptions: tuple[str, ...] | None = None
    scale: float | None = None
    threshold: float | None = None  # confident classes: CONFIDENT_THRESHOLD, in the units of the mode


@dataclass(frozen=True)
class OutputOptions:
    """How the optional outputs are written.

    Attributes:
        probabilities_dtype: ``float32`` (p̄) or ``uint8`` (``round(254 p̄)``, 255 = nodata)
            (``PROBABILITIES_DATA_TYPE``).
        confident_threshold: pixels whose uncertainty is above it (margin: below it) are nodata in the confident
            classes (``CONFIDENT_THRESHOLD``); in the units of the uncertainty mode, checked against its range
            once the class count is known.
    """

    probabilities_dtype: str = "float32"
    confident_threshold: float = CONFIDENT_THRESHOLD_DEFAULT

    def __post_init__(self) -> None:
        dtype = str(self.probabilities_dtype).strip().lower()
        if dtype not in PROBABILITY_DTYPES:
            raise ParameterError("PROBABILITIES_DATA_TYPE", self.probabilities_dtype, "be float32 or uint8")
        object.__setattr__(self, "probabilities_dtype", dtype)
        value = self.confident_threshold
        try:
            threshold = float(str(value).strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            threshold = math.nan
        if isinstance(value, bool) or not math.isfinite(threshold):
            raise ParameterError("CONFIDENT_THRESHOLD", value, "be a number")
        object.__setattr__(self, "confident_threshold", threshold)


def _colour(value: object, index: int) -> tuple[int, int, int, int]:
    try:
        return parse_colour(value, f"class_colors[{index}]")
    except ValueError:
        raise ParameterError(f"class_colors[{index}]", value, 'be "#rrggbb" or [r, g, b]') from None


def check_threshold(threshold: float, mode: str, num_classes: int) -> None:
    """CONFIDENT_THRESHOLD must lie in the range of the mode's values, ``[0, maximum]``.

    Raises:
        ParameterError: naming CONFIDENT_THRESHOLD, the mode and its range.
    """
    maximum = uncertainty_maximum(mode, num_classes)
    if not 0.0 <= threshold <= maximum:
        raise ParameterError(
            "CONFIDENT_THRESHOLD",
            threshold,
            f"lie in the range of UNCERTAINTY_MODE {mode}: 0..{maximum:.6g} (with {num_classes} classes)",
        )


def describe_outputs(
    paths: Mapping[str, str],
    model: LoadedModel,
    config: InferenceConfig,
    num_classes: int,
    options: OutputOptions | None = None,
) -> tuple[OutputSpec, ...]:
    """Data type, nodata, band description and metadata of each output (the ``MC_*`` items record the run).

    Raises:
        ParameterError: CONFIDENT_THRESHOLD outside the range of the uncertainty mode (OUTPUT_CONFIDENT given).
    """
    options = options or OutputOptions()
    tile, step = config.model_input_shape, config.step_shape
    metadata = {
        "MC_MODEL": os.path.basename(model.source),
        "MC_NUM_CLASSES": num_classes,
        "MC_N_SAMPLES": config.n_samples if config.mc_dropout else 1,
        "MC_DROPOUT": "on" if config.mc_dropout else "off",
        "MC_TTA_MODE": config.tta_mode,
        "MC_SEED": config.seed,
        "MC_TILE": f"{tile[0]},{tile[1]}",
        "MC_STEP": f"{step[0]},{step[1]}",
        "MC_TILE_WEIGHT": config.tile_weight,
        "MC_PRECISION": "float32" if config.autocast == "off" else f"autocast {config.autocast}",
    }

    def items(extra: Mapping[str, Any] | None = None) -> tuple[tuple[str, str], ...]:
        return tuple((k, str(v)) for k, v in {**metadata, **(extra or {})}.items())

    mode = config.uncertainty_mode
    mode_items = {"MC_UNCERTAINTY_MODE": mode, "MC_UNCERTAINTY_MAX": f"{uncertainty_maximum(mode, num_classes):.6f}"}
    colours = tuple(_colour(c, i) for i, c in enumerate(model.class_colors or ())) or None
    names = tuple(model.class_names) if model.class_names else None
    specs = [
        OutputSpec(
            "OUTPUT",
            "classes",
            paths["OUTPUT"],
            "uint8",
            CLASS_NODATA,
            "class index",
            items(),
            "NEAREST",
            colours,
            names,
        )
    ]
    if paths.get("OUTPUT_UNCERTAINTY"):
        specs.append(
            OutputSpec(
                "OUTPUT_UNCERTAINTY",
                "uncertainty",
                paths["OUTPUT_UNCERTAINTY"],
                "float32",
                UNCERTAINTY_NODATA,
                UNCERTAINTY_DESCRIPTIONS[mode],
                items(mode_items),
                "AVERAGE",
            )
        )
    if paths.get("OUTPUT_CONFIDENCE"):
        specs.append(
            OutputSpec(
                "OUTPUT_CONFIDENCE",
                "confidence",
                paths["OUTPUT_CONFIDENCE"],
                "float32",
                UNCERTAINTY_NODATA,
                "confidence max_c mean p (calibration)",
                items(),
                "AVERAGE",
            )
        )
    if paths.get("OUTPUT_PROBABILITIES"):
        specs.append(_probabilities(paths["OUTPUT_PROBABILITIES"], options, num_classes, names, items))
    if paths.get("OUTPUT_CONFIDENT"):
        check_threshold(options.confident_threshold, mode, num_classes)
        specs.append(_confident(paths["OUTPUT_CONFIDENT"], options, mode, colours, names, items(mode_items)))
    return tuple(specs)


def _probabilities(
    path: str, options: OutputOptions, num_classes: int, names: tuple[str, ...] | None, items: Any
) -> OutputSpec:
    """p̄, one band per class named after it; uint8 holds ``round(254 p̄)`` with 255 = nodata."""
    labels = tuple(
        names[c] if names is not None and c < len(names) and names[c] else f"class {c}" for c in range(num_classes)
    )
    if options.probabilities_dtype == "uint8":
        scale: float | None = float(PROBABILITY_SCALE_UINT8)
        nodata: float = CLASS_NODATA
        encoding = f"uint8 = round({PROBABILITY_SCALE_UINT8} * p), {CLASS_NODATA} = nodata"
    else:
        scale, nodata, encoding = None, UNCERTAINTY_NODATA, "float32 p, -1 = nodata"
    return OutputSpec(
        "OUTPUT_PROBABILITIES",
        "probabilities",
        path,
        options.probabilities_dtype,
        nodata,
        "mean probability p of the class",
        items({"MC_PROBABILITY_ENCODING": encoding}),
        "AVERAGE",
        bands=num_classes,
        band_descriptions=labels,
        scale=scale,
    )


def _confident(
    path: str,
    options: OutputOptions,
    mode: str,
    colours: tuple[tuple[int, int, int, int], ...] | None,
    names: tuple[str, ...] | None,
    metadata: tuple[tuple[str, str], ...],
) -> OutputSpec:
    """The class raster, 255 where the uncertainty is above the threshold (margin: below it)."""
    threshold = options.confident_threshold
    kept = f"{mode} >= {threshold:g}" if low_means_unsure(mode) else f"{mode} <= {threshold:g}"
    return OutputSpec(
        "OUTPUT_CONFIDENT",
        "confident",
        path,
        "uint8",
        CLASS_NODATA,
        f"class index where {kept} (255 elsewhere)",
        metadata + (("MC_CONFIDENT_THRESHOLD", repr(threshold)),),
        "NEAREST",
        colours,
        names,
        threshold=threshold,
    )

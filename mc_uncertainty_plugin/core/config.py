"""The run configuration: one frozen dataclass, validated on construction.

Field names are the settings of the Python API (docs/contract.md); error messages name the Processing keys users
see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ParameterError

__all__ = [
    "InferenceConfig",
    "UNCERTAINTY_MODES",
    "TILE_WEIGHTS",
    "TTA_MODES",
    "TTA_TRANSFORMS",
    "normalize_tta_mode",
    "tta_transform_names",
    "DEVICES",
    "MEMORY_FORMATS",
    "AUTOCAST_DTYPES",
    "parse_shape",
    "SEED_MAX",
]

UNCERTAINTY_MODES = (
    "entropy",
    "mutual_information",
    "expected_entropy",
    "variation_ratio",
    "normalized_entropy",
    "margin",
)
TILE_WEIGHTS = ("gaussian", "pyramid", "mean")
TTA_MODES = ("none", "flip", "d4")  # the named sets; TTA_MODE also takes any subset of TTA_TRANSFORMS
# The 8 symmetries of the square, in the order the transforms run (and their dropout keys are numbered).
TTA_TRANSFORMS = ("identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose")
_TTA_PRESETS = {"none": TTA_TRANSFORMS[:1], "flip": TTA_TRANSFORMS[:4], "d4": TTA_TRANSFORMS}
DEVICES = ("auto", "cpu", "cuda")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
AUTOCAST_DTYPES = ("off", "bfloat16", "float16")


def parse_shape(value: Any, parameter: str) -> tuple[int, int]:
    """Parse a tile shape given as ``"H,W"``, ``"N"``, an int or a pair of ints.

    Raises:
        ParameterError: naming ``parameter`` when the value is not one or two positive integers.
    """
    original = value
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").replace(";", ",").split(",") if p.strip()]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise ParameterError(parameter, original, 'be "H,W" or one integer (e.g. "512,512")') from None
    elif isinstance(value, bool):
        raise ParameterError(parameter, original, 'be "H,W" or one integer (e.g. "512,512")')
    elif isinstance(value, int):
        value = [value]
    try:
        dims = [int(v) for v in value]
        if any(int(v) != v for v in value):
            raise ValueError
    except (TypeError, ValueError):
        raise ParameterError(parameter, original, 'be "H,W" or one integer (e.g. "512,512")') from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2:
        raise ParameterError(parameter, original, 'be "H,W" or one integer (e.g. "512,512")')
    if dims[0] <= 0 or dims[1] <= 0:
        raise ParameterError(parameter, original, "be positive")
    return dims[0], dims[1]


def _choice(value: str, choices: Sequence[str], parameter: str) -> str:
    if value not in choices:
        raise ParameterError(parameter, value, f"be one of {', '.join(choices)}")
    return value


def normalize_tta_mode(value: Any) -> str:
    """TTA_MODE in its one spelling: ``none``, ``flip``, ``d4``, or a comma-separated subset of
    :data:`TTA_TRANSFORMS` in their canonical order (``"rot90, identity"`` -> ``"identity,rot90"``; a list of
    names is taken too).

    A subset equal to a named set is that name (``identity`` -> ``none``, the four shape-keeping transforms ->
    ``flip``, all eight -> ``d4``), so one set of transforms has one name and gives the same bits.

    Raises:
        ParameterError: naming TTA_MODE: an unknown or repeated transform, or an empty list.
    """
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    text = text.strip().lower()
    if text in _TTA_PRESETS:
        return text
    requirement = f"be one of {', '.join(TTA_MODES)} or a comma-separated subset of {','.join(TTA_TRANSFORMS)}"
    names = [part.strip() for part in text.split(",")]
    unknown = [name for name in names if name not in TTA_TRANSFORMS]
    if not text or unknown:
        detail = f" (unknown: {', '.join(repr(n) for n in unknown)})" if text and unknown else ""
        raise ParameterError("TTA_MODE", value, requirement + detail)
    repeated = sorted({name for name in names if names.count(name) > 1}, key=TTA_TRANSFORMS.index)
    if repeated:
        raise ParameterError("TTA_MODE", value, f"name each transform once (repeated: {', '.join(repeated)})")
    chosen = tuple(name for name in TTA_TRANSFORMS if name in names)
    for preset, members in _TTA_PRESETS.items():
        if chosen == members:
            return preset
    return ",".join(chosen)


def tta_transform_names(mode: str) -> tuple[str, ...]:
    """The transforms of a TTA_MODE (any spelling :func:`normalize_tta_mode` takes), in canonical order."""
    normalized = normalize_tta_mode(mode)
    return _TTA_PRESETS.get(normalized) or tuple(normalized.split(","))


SEED_MAX = 2**64 - 1  # seeds are unsigned 64-bit integers


def _integer(value: Any, parameter: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int: ints, integral floats and integer text (``" 12 "``); anything else (``2.5``,
    ``"a"``, ``True``) is an error naming ``parameter``, never rounded."""
    requirement = f"be an integer >= {minimum}" if maximum is None else f"be an integer in {minimum}..{maximum}"
    if isinstance(value, bool):
        raise ParameterError(parameter, value, requirement)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        as_int = int(value)
    else:
        try:
            as_int = int(str(value).strip())
        except ValueError:
            raise ParameterError(parameter, value, requirement) from None
    if as_int < minimum or (maximum is not None and as_int > maximum):
        raise ParameterError(parameter, value, requirement)
    return as_int


@dataclass(frozen=True)
class InferenceConfig:
    """Everything that decides what a run computes.

    Attributes:
        n_samples: T, stochastic passes per tile and augmentation (``N_SAMPLES``). 1 for plain TTA.
        mc_dropout: keep dropout sampling during inference (MC dropout) or run the model deterministically.
        tta_mode: ``none``, ``flip``, ``d4`` or a comma-separated subset of :data:`TTA_TRANSFORMS`, e.g.
            ``"identity,hflip,rot90"`` (``TTA_MODE``); stored as :func:`normalize_tta_mode` spells it.
        uncertainty_mode: ``entropy``, ``mutual_information``, ``expected_entropy``, ``variation_ratio``,
            ``normalized_entropy`` or ``margin`` (``UNCERTAINTY_MODE``; see :mod:`.inference.uncertainty`).
        export_uncertainty_map: write the uncertainty raster (``EXPORT_UNCERTAINTY_MAP``).
        num_classes: expected number of classes; ``None``/0 takes the model's output channels (``NUM_CLASSES``).
        model_input_shape: tile (H, W) (``MODEL_INPUT_SHAPE``).
        step_shape: tile stride (H, W), each at most the tile size (``STEP_SHAPE``).
        tile_weight: ``gaussian``, ``pyramid`` or ``mean`` (``TILE_WEIGHT``).
        seed: dropout masks are drawn from this seed, the tile position and the sample index (``SEED``); an
            integer in 0..2^64-1.
        batch_size: tiles per forward pass; 0 chooses automatically (``BATCH_SIZE``). The dropout masks do not
            depend on it; the outputs are equal up to float32 rounding (a batch of one tile runs other kernels).
        device: ``auto``, ``cpu`` or ``cuda`` (``DEVICE``).
        bands: 1-based input bands in model order; ``None`` = the first ``in_channels`` bands (``BANDS``).
        panel_width: widest column panel processed at once; bounds memory for very wide rasters. A multiple
            of 256; results do not depend on it.
        cache_prefix: run the deterministic prefix of the network once per tile batch (results are equal;
            False forces T full passes, for comparison).
        memory_format: ``auto`` (channels_last for convolutional networks on CPU, where it is faster: see the
            README's benchmark; contiguous on GPU), ``channels_last`` or ``contiguous``. Results equal to float
            rounding.
        autocast: ``off`` (default, float32), ``bfloat16`` or ``float16``: mixed precision, opt-in only; it
            changes probabilities by about 1e-2 and may flip a class where two are nearly tied.
    """

    n_samples: int = 10
    mc_dropout: bool = True
    tta_mode: str = "none"
    uncertainty_mode: str = "entropy"
    export_uncertainty_map: bool = True
    num_classes: int | None = None
    model_input_shape: tuple[int, int] = (512, 512)
    step_shape: tuple[int, int] = (256, 256)
    tile_weight: str = "gaussian"
    seed: int = 0
    batch_size: int = 0
    device: str = "auto"
    bands: tuple[int, ...] | None = None
    panel_width: int = 8192
    cache_prefix: bool = True
    memory_format: str = "auto"
    autocast: str = "off"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "n_samples", _integer(self.n_samples, "N_SAMPLES", 1))
        set_(self, "tta_mode", normalize_tta_mode(self.tta_mode))
        set_(
            self, "uncertainty_mode", _choice(str(self.uncertainty_mode).lower(), UNCERTAINTY_MODES, "UNCERTAINTY_MODE")
        )
        set_(self, "tile_weight", _choice(str(self.tile_weight).lower(), TILE_WEIGHTS, "TILE_WEIGHT"))
        set_(self, "device", _choice(str(self.device).lower(), DEVICES, "DEVICE"))
        set_(self, "memory_format", _choice(str(self.memory_format).lower(), MEMORY_FORMATS, "memory_format"))
        autocast = "off" if self.autocast in (False, None) else str(self.autocast).lower()
        set_(self, "autocast", _choice(autocast, AUTOCAST_DTYPES, "autocast"))
        num_classes = self.num_classes
        if num_classes is not None:
            num_classes = _integer(num_classes, "NUM_CLASSES", 0) or None
            if num_classes is not None and num_classes > 255:
                raise ParameterError(
                    "NUM_CLASSES", self.num_classes, "be <= 255 (the class raster is uint8, 255 = nodata)"
                )
        set_(self, "num_classes", num_classes)
        tile = parse_shape(self.model_input_shape, "MODEL_INPUT_SHAPE")
        step = parse_shape(self.step_shape, "STEP_SHAPE")
        if step[0] > tile[0] or step[1] > tile[1]:
            raise ParameterError(
                "STEP_SHAPE",
                f"{step[0]},{step[1]}",
                f"be at most MODEL_INPUT_SHAPE ({tile[0]},{tile[1]}) in each dimension",
            )
        set_(self, "model_input_shape", tile)
        set_(self, "step_shape", step)
        set_(self, "seed", _integer(self.seed, "SEED", 0, SEED_MAX))
        set_(self, "batch_size", _integer(self.batch_size, "BATCH_SIZE", 0))
        if self.bands is not None:
            bands: tuple[int, ...] | None = tuple(self.bands)
            if not bands:
                bands = None
            else:
                try:
                    bands = tuple(_integer(b, "BANDS", 1) for b in bands)
                except ParameterError:
                    raise ParameterError("BANDS", list(self.bands), "list band numbers starting at 1") from None
            set_(self, "bands", bands)
        width = _integer(self.panel_width, "panel_width", 256)
        if width % 256:
            raise ParameterError("panel_width", width, "be a multiple of 256")
        set_(self, "panel_width", width)

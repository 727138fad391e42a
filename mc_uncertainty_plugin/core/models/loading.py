"""Loading models without executing code from files.

- A trainer-style YAML (``model:`` with ``_target_``) builds an architecture resolved only from an allowlist
  of module prefixes (``segmentation_models_pytorch.`` by default); ``encoder_weights`` is forced to ``None``
  (weights come from the checkpoint; nothing is downloaded).
- Checkpoints are read with ``torch.load(weights_only=True)`` (no arbitrary unpickling) or safetensors, and
  loaded with strict key matching.
- TorchScript files (``.pt``, ``.torchscript``, ``.jit``) are loaded with ``torch.jit.load``; a YAML beside
  them with the same stem may give ``normalization``, ``class_names`` and ``class_colors``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import ModelLoadError, ParameterError
from .yaml_config import Interpolator, read_config, resolve_interpolations

__all__ = [
    "Normalization",
    "LoadedModel",
    "load_model",
    "as_loaded_model",
    "DEFAULT_ALLOWED_PREFIXES",
    "ALLOWED_TARGETS_ENV",
    "resolve_interpolations",
    "TORCHSCRIPT_SUFFIXES",
    "STAGE_BUILD",
    "STAGE_WEIGHTS",
]

LOGGER = logging.getLogger(__name__)
DEFAULT_ALLOWED_PREFIXES = ("segmentation_models_pytorch.", "torch.nn.", "mc_uncertainty_plugin.")
ALLOWED_TARGETS_ENV = "MC_UNCERTAINTY_ALLOWED_TARGETS"  # extra comma-separated prefixes the user trusts
TORCHSCRIPT_SUFFIXES = (".pt", ".torchscript", ".jit")
CONFIG_SUFFIXES = (".yaml", ".yml")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGE_BUILD = "build"  # load_model's stages, as passed to its ``stage`` callback: building the architecture,
STAGE_WEIGHTS = "weights"  # then reading the weights (a checkpoint, or a TorchScript file)


@dataclass(frozen=True)
class Normalization:
    """``x' = (x - mean * max_pixel_value) / (std * max_pixel_value)`` per band (albumentations' Normalize)."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    max_pixel_value: float = 255.0

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> Normalization:
        if not section:
            return cls()
        if not isinstance(section, Mapping):
            raise ParameterError("normalization", section, "be a mapping with mean, std, max_pixel_value")
        mean = section.get("mean", IMAGENET_MEAN)
        std = section.get("std", IMAGENET_STD)
        mean = tuple(float(v) for v in (mean if isinstance(mean, Sequence) else [mean]))
        std = tuple(float(v) for v in (std if isinstance(std, Sequence) else [std]))
        if len(mean) != len(std):
            raise ParameterError("normalization", dict(section), "give mean and std of the same length")
        if not all(math.isfinite(v) for v in mean):
            raise ParameterError("normalization.mean", list(mean), "be finite numbers")
        if not all(math.isfinite(v) and v > 0 for v in std):
            raise ParameterError("normalization.std", list(std), "be positive finite numbers")
        scale = float(section.get("max_pixel_value", 255.0))
        if not (math.isfinite(scale) and scale > 0):
            raise ParameterError("normalization.max_pixel_value", scale, "be a positive finite number")
        return cls(mean, std, scale)

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Normalise ``(B, bands, H, W)`` or ``(bands, H, W)`` float32 in place-safe fashion."""
        bands = data.shape[-3]
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        if mean.size == 1:
            mean, std = np.repeat(mean, bands), np.repeat(std, bands)
        if mean.size != bands:
            raise ParameterError(
                "normalization", f"{mean.size} means", f"have one mean/std per input band ({bands} bands)"
            )
        scale = np.float32(self.max_pixel_value)
        return (data - (mean * scale)[:, None, None]) / (std * scale)[:, None, None]


@dataclass
class LoadedModel:
    """A network plus what the config says about its input and output."""

    module: nn.Module
    normalization: Normalization = field(default_factory=Normalization)
    in_channels: int | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    class_colors: tuple[str, ...] | None = None
    source: str = "<in-memory module>"
    checkpoint: str | None = None
    inference_defaults: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def is_scripted(self) -> bool:
        return isinstance(self.module, torch.jit.ScriptModule)


def as_loaded_model(model: LoadedModel | nn.Module) -> LoadedModel:
    """Accept a bare ``nn.Module`` wherever a :class:`LoadedModel` is expected (ImageNet normalisation)."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return LoadedModel(module=model, in_channels=_first_conv_in_channels(model))
    raise TypeError(f"model must be a LoadedModel or torch.nn.Module, got {type(model).__name__}.")


def _first_conv_in_channels(module: nn.Module) -> int | None:
    for parameter in module.parameters():
        if parameter.dim() == 4:
            return int(parameter.shape[1])
    return None


def allowed_prefixes_from_environment() -> tuple[str, ...]:
    """Extra trusted ``_target_`` prefixes from ``MC_UNCERTAINTY_ALLOWED_TARGETS`` (comma-separated)."""
    return tuple(p.strip() for p in os.environ.get(ALLOWED_TARGETS_ENV, "").split(",") if p.strip())


def _resolve_target(target: Any, allowed_prefixes: Sequence[str]) -> type:
    if not isinstance(target, str) or not target:
        raise ModelLoadError(f"MODEL: model._target_ must be a dotted class name, got {target!r}.")
    if not any(target.startswith(prefix) for prefix in allowed_prefixes):
        raise ModelLoadError(
            f"MODEL: model._target_ {target!r} is not allowed; allowed prefixes: {', '.join(allowed_prefixes)} "
            "(add the module prefix to the allowlist setting to trust it)."
        )
    module_name, _, attribute = target.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"MODEL: cannot import {module_name!r} for _target_ {target!r}: {exc}.") from None
    obj = getattr(obj, attribute, None)
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise ModelLoadError(f"MODEL: _target_ {target!r} is not a torch.nn.Module class.")
    return obj


def _explicit_parameters(cls: type) -> set[str]:
    return {
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }


def _inject_decoder_dropout(model: nn.Module, p: float) -> str:
    """Insert ``Dropout2d(p)`` on the decoder output, before the segmentation head.

    The dropout is registered as the submodule ``mc_decoder_dropout`` (no parameters, so state_dict keys are
    unchanged) and applied by a forward pre-hook of ``segmentation_head``.
    """
    head = getattr(model, "segmentation_head", None)
    if not isinstance(head, nn.Module):
        raise ModelLoadError(
            f"MODEL: decoder_dropout is not supported by {type(model).__name__} (no segmentation_head)."
        )
    dropout = nn.Dropout2d(p)
    model.mc_decoder_dropout = dropout  # a registered submodule: found by the dropout search, moved with the model

    def apply_dropout(module: nn.Module, args: tuple) -> tuple:
        return (dropout(args[0]),) + tuple(args[1:])

    head.register_forward_pre_hook(apply_dropout)
    return f"decoder_dropout={p}: inserted Dropout2d before segmentation_head of {type(model).__name__}"


def _build_from_config(section: Mapping[str, Any], allowed_prefixes: Sequence[str], notes: list[str]) -> nn.Module:
    kwargs = dict(section)
    target = kwargs.pop("_target_", None)
    cls = _resolve_target(target, allowed_prefixes)
    accepted = _explicit_parameters(cls)
    if "encoder_weights" in kwargs or "encoder_weights" in accepted:
        kwargs["encoder_weights"] = None  # weights come from the checkpoint; never download
    dropout = kwargs.pop("decoder_dropout", None)
    if dropout is not None:
        try:
            dropout = float(dropout)
        except (TypeError, ValueError):
            raise ParameterError("model.decoder_dropout", dropout, "be a number in [0, 1)") from None
        if not 0.0 <= dropout < 1.0:
            raise ParameterError("model.decoder_dropout", dropout, "be a number in [0, 1)")
    native = dropout is not None and "decoder_dropout" in accepted
    if native:
        kwargs["decoder_dropout"] = dropout
    try:
        model = cls(**kwargs)
    except Exception as exc:  # architecture constructors raise many types
        raise ModelLoadError(f"MODEL: cannot build {target} with {kwargs}: {exc}") from None
    if dropout and not native:
        notes.append(_inject_decoder_dropout(model, dropout))
    elif native:
        notes.append(f"decoder_dropout={dropout}: passed to {target}")
    return model


# -- checkpoints -------------------------------------------------------------------------------------------
def _read_checkpoint(path: str) -> Mapping[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ParameterError("CHECKPOINT", path, "be an existing file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            raise ModelLoadError(f"CHECKPOINT: '{path}' is not a readable safetensors file: {exc}") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"CHECKPOINT: refused to load '{path}': it needs unrestricted unpickling, which can run code "
            f"({str(exc).splitlines()[0]}). Convert it where you trust it: "
            "torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pth')."
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"CHECKPOINT: cannot read '{path}' (truncated or not a PyTorch checkpoint): {exc}"
        ) from None
    if isinstance(content, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = content.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if content and all(isinstance(v, torch.Tensor) for v in content.values()):
            return content
    raise ModelLoadError(
        f"CHECKPOINT: '{path}' holds no state_dict (expected a mapping of tensors, or one under "
        "'state_dict' / 'model')."
    )


def _match_prefix(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Strip a Lightning/DataParallel prefix (``model.``, ``module.``, ``net.``) when that matches better."""
    best = dict(state)
    best_hits = len(expected & set(best))
    for prefix in ("model.", "module.", "net.", "model.module."):
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(expected & set(stripped))
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load with strict keys and shapes; errors list missing and unexpected keys."""
    expected = set(model.state_dict())
    state = _match_prefix(state, expected)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:

        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "") if keys else "none"

        raise ModelLoadError(
            f"CHECKPOINT: '{source}' does not match the model: missing keys: {listing(missing)}; "
            f"unexpected keys: {listing(unexpected)}."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:600]
        raise ModelLoadError(f"CHECKPOINT: '{source}' does not match the model: {detail}") from None


# -- entry point -------------------------------------------------------------------------------------------
def _class_metadata(config: Interpolator) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    names = config.get("class_names")
    colors = config.get("class_colors")
    return (tuple(str(n) for n in names) if names else None, tuple(str(c) for c in colors) if colors else None)


def load_model(
    path: str,
    checkpoint: str | None = None,
    *,
    allowed_prefixes: Sequence[str] = (),
    stage: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Load a model from a trainer-style YAML config (+ checkpoint) or a TorchScript file.

    Args:
        path: ``.yaml``/``.yml`` config or ``.pt``/``.torchscript``/``.jit`` TorchScript file (``MODEL``).
        checkpoint: weights for a YAML model (``CHECKPOINT``); overrides the config's ``checkpoint_path``.
        allowed_prefixes: extra trusted ``_target_`` module prefixes besides the defaults
            (``segmentation_models_pytorch.``, ``torch.nn.``, ``mc_uncertainty_plugin.``) and those in the
            ``MC_UNCERTAINTY_ALLOWED_TARGETS`` environment variable.
        stage: called with :data:`STAGE_BUILD` before the architecture is built (a YAML model; this imports
            segmentation-models-pytorch when the config names it) and with :data:`STAGE_WEIGHTS` before the
            weights are read, so a caller can report and time each stage.

    Returns:
        A :class:`LoadedModel` in eval mode on the CPU.
    """
    path = os.fspath(path)
    if not path or not os.path.isfile(path):
        raise ParameterError("MODEL", path, "be an existing model config (.yaml) or TorchScript file")
    lower = path.lower()
    if lower.endswith(CONFIG_SUFFIXES):
        allowed = DEFAULT_ALLOWED_PREFIXES + tuple(allowed_prefixes) + allowed_prefixes_from_environment()
        return _load_from_config(path, checkpoint, allowed, stage or _no_stage)
    if lower.endswith(TORCHSCRIPT_SUFFIXES):
        (stage or _no_stage)(STAGE_WEIGHTS)
        return _load_torchscript(path)
    raise ParameterError("MODEL", path, "end in .yaml/.yml (config) or .pt/.torchscript/.jit (TorchScript)")


def _no_stage(_name: str) -> None:
    pass


def _load_from_config(
    path: str, checkpoint: str | None, allowed: Sequence[str], stage: Callable[[str], None] = _no_stage
) -> LoadedModel:
    config = Interpolator(read_config(path, "MODEL"))  # only the sections read below are interpolated
    section = config.get("model")
    if not isinstance(section, Mapping):
        raise ModelLoadError(f"MODEL: '{path}' has no 'model:' section (a mapping with _target_ and its arguments).")
    notes: list[str] = []
    stage(STAGE_BUILD)
    module = _build_from_config(section, allowed, notes)
    if checkpoint:
        checkpoint = os.path.abspath(os.fspath(checkpoint))  # CHECKPOINT: relative to the working directory
    elif config.get("checkpoint_path"):
        checkpoint = os.path.join(os.path.dirname(os.path.abspath(path)), str(config.get("checkpoint_path")))
    if checkpoint:
        stage(STAGE_WEIGHTS)
        load_state_dict_strict(module, _read_checkpoint(checkpoint), checkpoint)
    else:
        notes.append("no checkpoint given: the network has random weights")
    module.eval()
    names, colors = _class_metadata(config)
    defaults = config.get("inference_processor")
    defaults = defaults if isinstance(defaults, Mapping) else {}
    in_channels = section.get("in_channels", 3 if "in_channels" in _explicit_parameters(type(module)) else None)
    classes = section.get("classes")
    return LoadedModel(
        module=module,
        normalization=Normalization.from_config(config.get("normalization")),
        in_channels=int(in_channels) if in_channels is not None else _first_conv_in_channels(module),
        num_classes=int(classes) if classes is not None else None,
        class_names=names,
        class_colors=colors,
        source=os.path.abspath(path),
        checkpoint=checkpoint or None,
        inference_defaults=dict(defaults),
        notes=notes,
    )


def _load_torchscript(path: str) -> LoadedModel:
    try:
        with warnings.catch_warnings():  # torch 2.14 flags torch.jit as deprecated; it is the format users have
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            module = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(
            f"MODEL: '{path}' is not a TorchScript file ({' '.join(str(exc).split())[:200]}). For a plain "
            "state_dict give a YAML config as MODEL and this file as CHECKPOINT."
        ) from None
    module.eval()
    sidecar = next(
        (os.path.splitext(path)[0] + s for s in CONFIG_SUFFIXES if os.path.isfile(os.path.splitext(path)[0] + s)), None
    )
    config = Interpolator(read_config(sidecar, "MODEL") if sidecar else {})
    names, colors = _class_metadata(config)
    section = config.get("model")
    section = section if isinstance(section, Mapping) else {}
    defaults = config.get("inference_processor")
    return LoadedModel(
        module=module,
        normalization=Normalization.from_config(config.get("normalization")),
        in_channels=section.get("in_channels") or _first_conv_in_channels(module),
        num_classes=section.get("classes"),
        class_names=names,
        class_colors=colors,
        source=os.path.abspath(path),
        inference_defaults=dict(defaults) if isinstance(defaults, Mapping) else {},
        notes=[f"normalization and classes from {sidecar}"] if sidecar else [],
    )

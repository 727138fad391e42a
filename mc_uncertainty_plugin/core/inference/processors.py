"""The processors of PRODUCT.md: thin front ends that build an :class:`InferenceConfig` and run the engine.

``MCDropoutInferenceProcessor`` keeps dropout sampling at inference (T passes per window, optionally times the
K test-time transforms); ``MultiClassInferenceProcessor`` runs the deterministic network, with optional TTA.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import fields
from typing import Any, Callable, Sequence

from torch import nn

from ..models.compatibility import check_mc_compatibility
from ..config import InferenceConfig
from .engine import RunResult, run_inference
from ..errors import ParameterError
from ..models.loading import LoadedModel, as_loaded_model

__all__ = [
    "MCDropoutInferenceProcessor",
    "MultiClassInferenceProcessor",
    "NoActiveDropoutWarning",
    "MCCompatibilityWarning",
]


class NoActiveDropoutWarning(UserWarning):
    """MC dropout was asked for on a model without any dropout layer with p > 0."""


class MCCompatibilityWarning(UserWarning):
    """The model is of a kind where MC dropout is risky or partial (EDL, mixture of experts, DropPath ...)."""


class _InferenceProcessor:
    uncertainty_suffix = "_uncertainty"

    def __init__(self, model: LoadedModel | nn.Module, config: InferenceConfig, output_uncertainty_dir: str | None,
                 scheduler: str | None = None, block_size: int | str = 0) -> None:
        self.model = as_loaded_model(model)
        self.config = config
        self.output_uncertainty_dir = output_uncertainty_dir
        self.scheduler = scheduler or ""  # SCHEDULER: "" runs in this process; else core.distributed runs blocks
        self.block_size = block_size  # BLOCK_SIZE, with a scheduler: 0 = automatic
        if self.scheduler:  # checked now, not after the model was probed
            from ..distributed.run import parse_block_size, parse_scheduler

            parse_scheduler(self.scheduler)
            parse_block_size(block_size)
        self.last_result: RunResult | None = None

    def default_paths(self, image_path: str, output_dir: str) -> tuple[str, str | None]:
        """``{output_dir}/{stem}.tif`` and ``{uncertainty dir}/{stem}{suffix}.tif``."""
        stem = os.path.splitext(os.path.basename(os.fspath(image_path)))[0]
        segmentation = os.path.join(os.fspath(output_dir), f"{stem}.tif")
        uncertainty = None
        if self.config.export_uncertainty_map:
            folder = self.output_uncertainty_dir or os.fspath(output_dir)
            uncertainty = os.path.join(folder, f"{stem}{self.uncertainty_suffix}.tif")
        return segmentation, uncertainty

    def uncertainty_path_for(self, segmentation_path: str) -> str:
        """The default uncertainty path beside a class raster: ``{stem}{suffix}.tif`` (``.vrt`` beside a VRT)."""
        stem, extension = os.path.splitext(os.path.abspath(os.fspath(segmentation_path)))
        return f"{stem}{self.uncertainty_suffix}{'.vrt' if extension.lower() == '.vrt' else '.tif'}"

    def process(
        self,
        image_path: str,
        output_dir: str | None = None,
        *,
        output_path: str | None = None,
        uncertainty_path: str | None = None,
        confidence_path: str | None = None,
        progress: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        log: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> dict[str, str | None]:
        """Run over one raster.

        Args:
            image_path: input raster (``INPUT``).
            output_dir: folder for ``{stem}.tif`` (and the uncertainty file unless ``output_uncertainty_dir``).
            output_path: explicit class raster path (overrides ``output_dir``).
            uncertainty_path: explicit uncertainty path; default ``{output stem}{suffix}.tif`` beside it.
            confidence_path: where to write ``max_c p̄_c`` (float32, for calibration); None writes none.
            progress: receives 0..100.
            is_cancelled: polled between passes.
            log: receives one-line messages.
            warn: receives warnings (no CRS, values outside the normalisation); default: ``log``.

        With ``scheduler`` set (SCHEDULER) the run goes to :func:`~..distributed.run.run_job`: blocks on a Dask
        cluster; the outputs may then end in ``.vrt`` (a mosaic of block files) or ``.tif`` (assembled).

        Returns:
            ``{"segmentation": path, "uncertainty": path or None}``, plus ``"confidence"`` when written.
        """
        if output_path is None:
            if output_dir is None:
                raise ParameterError("OUTPUT", None, "be given (output_dir or output_path)")
            output_path, default_uncertainty = self.default_paths(image_path, output_dir)
        else:
            default_uncertainty = self.uncertainty_path_for(output_path) if self.config.export_uncertainty_map else None
        if uncertainty_path is None:
            uncertainty_path = default_uncertainty
        run: Callable[..., RunResult] = run_inference
        extra: dict[str, Any] = {}
        if self.scheduler:  # blocks on a Dask cluster (imported only then)
            from ..distributed.run import run_job

            run, extra = run_job, {"scheduler": self.scheduler, "block_size": self.block_size}
        result = run(
            self.model, self.config, os.fspath(image_path), output_path,
            uncertainty_path if self.config.export_uncertainty_map else None,
            confidence_path=os.fspath(confidence_path) if confidence_path else None,
            progress=progress, is_cancelled=is_cancelled, log=log, warn=warn, **extra,
        )
        self.last_result = result
        paths = {"segmentation": result.segmentation, "uncertainty": result.uncertainty}
        if result.confidence:
            paths["confidence"] = result.confidence
        return paths


_CONFIG_DEFAULTS = {f.name: f.default for f in fields(InferenceConfig)}


def _config(model: LoadedModel, builtin: dict[str, Any] | None = None, **given: Any) -> InferenceConfig:
    """An :class:`InferenceConfig` from the arguments given; ``None`` falls back to the model config's
    ``inference_processor:`` section, then to ``builtin``, then to the :class:`InferenceConfig` defaults."""
    defaults = {**_CONFIG_DEFAULTS, **(builtin or {})}
    settings = {}
    for name, value in given.items():
        if value is None:
            value = model.inference_defaults.get(name, defaults.get(name))
        settings[name] = value
    if settings.get("bands") is not None:
        settings["bands"] = tuple(settings["bands"])
    return InferenceConfig(**settings)


class MCDropoutInferenceProcessor(_InferenceProcessor):
    """MC dropout: dropout layers sample (BatchNorm stays in eval), T passes per window (x K with TTA).

    Emits :class:`NoActiveDropoutWarning` (a ``UserWarning``) when the model has no dropout with ``p > 0``:
    every pass would be identical and mutual information is zero everywhere.
    """

    uncertainty_suffix = "_mc_uncertainty"

    def __init__(
        self,
        model: LoadedModel | nn.Module,
        n_samples: int | None = None,
        uncertainty_mode: str | None = None,
        export_uncertainty_map: bool | None = None,
        num_classes: int | None = None,
        model_input_shape: Sequence[int] | str | None = None,
        step_shape: Sequence[int] | str | None = None,
        output_uncertainty_dir: str | None = None,
        seed: int | None = None,
        *,
        tta_mode: str | None = None,
        tile_weight: str | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        bands: Sequence[int] | None = None,
        panel_width: int = 8192,
        cache_prefix: bool = True,
        memory_format: str | None = None,
        autocast: str | None = None,
        scheduler: str | None = None,
        block_size: int | str = 0,
    ) -> None:
        loaded = as_loaded_model(model)
        config = _config(
            loaded, n_samples=n_samples, mc_dropout=True, tta_mode=tta_mode, uncertainty_mode=uncertainty_mode,
            export_uncertainty_map=export_uncertainty_map, num_classes=num_classes,
            model_input_shape=model_input_shape, step_shape=step_shape, tile_weight=tile_weight, seed=seed,
            batch_size=batch_size, device=device, bands=bands, panel_width=panel_width,
            cache_prefix=cache_prefix, memory_format=memory_format, autocast=autocast,
        )
        super().__init__(loaded, config, output_uncertainty_dir or loaded.inference_defaults.get("output_uncertainty_dir"),
                         scheduler, block_size)
        self.compatibility = check_mc_compatibility(self.model.module)
        for note in self.compatibility:
            category = NoActiveDropoutWarning if note.kind == "degenerate" else MCCompatibilityWarning
            warnings.warn(note.message, category, stacklevel=2)


class MultiClassInferenceProcessor(_InferenceProcessor):
    """Deterministic inference (dropout off) with test-time augmentation (``tta_mode``, default ``d4``).

    The uncertainty comes from the K augmentations (``tta_mode`` ``flip`` or ``d4``); with ``none`` it is the
    entropy of the single deterministic pass (mutual information 0).
    """

    uncertainty_suffix = "_uncertainty"

    def __init__(
        self,
        model: LoadedModel | nn.Module,
        tta_mode: str | None = None,
        uncertainty_mode: str | None = None,
        export_uncertainty_map: bool | None = None,
        num_classes: int | None = None,
        model_input_shape: Sequence[int] | str | None = None,
        step_shape: Sequence[int] | str | None = None,
        output_uncertainty_dir: str | None = None,
        seed: int | None = None,
        *,
        tile_weight: str | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        bands: Sequence[int] | None = None,
        panel_width: int = 8192,
        cache_prefix: bool = True,
        memory_format: str | None = None,
        autocast: str | None = None,
        scheduler: str | None = None,
        block_size: int | str = 0,
    ) -> None:
        loaded = as_loaded_model(model)
        config = _config(
            loaded, {"tta_mode": "d4"}, n_samples=1, mc_dropout=False, tta_mode=tta_mode, uncertainty_mode=uncertainty_mode,
            export_uncertainty_map=export_uncertainty_map, num_classes=num_classes,
            model_input_shape=model_input_shape, step_shape=step_shape, tile_weight=tile_weight, seed=seed,
            batch_size=batch_size, device=device, bands=bands, panel_width=panel_width,
            cache_prefix=cache_prefix, memory_format=memory_format, autocast=autocast,
        )
        super().__init__(loaded, config, output_uncertainty_dir or loaded.inference_defaults.get("output_uncertainty_dir"),
                         scheduler, block_size)

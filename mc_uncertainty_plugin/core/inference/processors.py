"""The processors of the core API: thin front ends that hold an :class:`InferenceConfig` and run the engine.

``MCDropoutInferenceProcessor`` keeps dropout sampling at inference (T passes per window, optionally times the
K test-time transforms); ``MultiClassInferenceProcessor`` runs the deterministic network, with optional TTA.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import fields, replace
from typing import Any, Callable

from torch import nn

from ..config import InferenceConfig
from ..errors import ParameterError
from ..models.compatibility import check_mc_compatibility
from ..models.loading import LoadedModel, as_loaded_model
from .engine import RunResult, run_inference
from .output_specs import CONFIDENT_THRESHOLD_DEFAULT, OutputOptions

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
    _fixed: dict[str, Any] = {}  # the settings that define the method
    _builtin: dict[str, Any] = {}  # the method's own defaults, under the model config's

    def __init__(
        self,
        model: LoadedModel | nn.Module,
        config: InferenceConfig | None = None,
        *,
        output_uncertainty_dir: str | None = None,
        scheduler: str | None = None,
        block_size: int | str = 0,
        **settings: Any,
    ) -> None:
        self.model = as_loaded_model(model)
        self.config = _config(self.model, config, settings, self._fixed, self._builtin, type(self).__name__)
        self.output_uncertainty_dir = output_uncertainty_dir or self.model.inference_defaults.get(
            "output_uncertainty_dir"
        )
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
        probabilities_path: str | None = None,
        probabilities_dtype: str = "float32",
        confident_path: str | None = None,
        confident_threshold: float = CONFIDENT_THRESHOLD_DEFAULT,
        progress: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        log: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> dict[str, str | None]:
        """Run over one raster.

        Args:
            image_path: input raster (``INPUT``).
            output_dir: folder for ``{stem}.tif`` (and the uncertainty file unless ``output_uncertainty_dir``);
                created, with its parents, when it does not exist (so is ``output_uncertainty_dir``).
            output_path: explicit class raster path (overrides ``output_dir``); its folder must exist.
            uncertainty_path: explicit uncertainty path; default ``{output stem}{suffix}.tif`` beside it.
            confidence_path: where to write ``max_c p̄_c`` (float32, for calibration); None writes none.
            probabilities_path: where to write p̄, one band per class named after it (``OUTPUT_PROBABILITIES``);
                None writes none.
            probabilities_dtype: ``float32`` (p̄, -1 = nodata) or ``uint8`` (``round(254 p̄)``, 255 = nodata)
                (``PROBABILITIES_DATA_TYPE``).
            confident_path: where to write the confident classes (``OUTPUT_CONFIDENT``): the class raster with
                255 where the uncertainty is above ``confident_threshold`` (margin: below it); the uncertainty
                is computed for it even when ``export_uncertainty_map`` is off. None writes none.
            confident_threshold: in the units of ``uncertainty_mode``, within its range (``CONFIDENT_THRESHOLD``).
            progress: receives 0..100.
            is_cancelled: polled between passes.
            log: receives one-line messages.
            warn: receives warnings (no CRS, values outside the normalisation); default: ``log``.

        With ``scheduler`` set (SCHEDULER) the run goes to :func:`~..distributed.run.run_job`: blocks on a Dask
        cluster; the outputs may then end in ``.vrt`` (a mosaic of block files) or ``.tif`` (assembled).

        Returns:
            ``{"segmentation": path, "uncertainty": path or None}``, plus ``"confidence"``, ``"probabilities"``
            and ``"confident"`` when written.
        """
        output_path, uncertainty_path = self._output_paths(image_path, output_dir, output_path, uncertainty_path)
        run, extra = self._runner()
        result = run(
            self.model,
            self.config,
            os.fspath(image_path),
            output_path,
            uncertainty_path,
            confidence_path=os.fspath(confidence_path) if confidence_path else None,
            probabilities_path=os.fspath(probabilities_path) if probabilities_path else None,
            confident_path=os.fspath(confident_path) if confident_path else None,
            output_options=OutputOptions(probabilities_dtype, confident_threshold),
            progress=progress,
            is_cancelled=is_cancelled,
            log=log,
            warn=warn,
            **extra,
        )
        self.last_result = result
        paths = {"segmentation": result.segmentation, "uncertainty": result.uncertainty}
        for name in ("confidence", "probabilities", "confident"):
            if getattr(result, name):
                paths[name] = getattr(result, name)
        return paths

    def _output_paths(
        self, image_path: str, output_dir: str | None, output_path: str | None, uncertainty_path: str | None
    ) -> tuple[str, str | None]:
        """The class raster's path and the uncertainty's (None when not exported), folders created for
        ``output_dir`` (see :meth:`process`)."""
        if output_path is None:
            if output_dir is None:
                raise ParameterError("OUTPUT", None, "be given (output_dir or output_path)")
            output_path, default_uncertainty = self.default_paths(image_path, output_dir)
            _make_folder(output_dir)
            if default_uncertainty is not None:
                _make_folder(os.path.dirname(default_uncertainty))
        else:
            default_uncertainty = self.uncertainty_path_for(output_path) if self.config.export_uncertainty_map else None
        if not self.config.export_uncertainty_map:
            return output_path, None
        return output_path, default_uncertainty if uncertainty_path is None else uncertainty_path

    def _runner(self) -> tuple[Callable[..., RunResult], dict[str, Any]]:
        """In this process, or blocks on a Dask cluster with SCHEDULER set (imported only then)."""
        if not self.scheduler:
            return run_inference, {}
        from ..distributed.run import run_job

        return run_job, {"scheduler": self.scheduler, "block_size": self.block_size}


def _make_folder(folder: str) -> None:
    """Create ``folder`` and its parents when missing (as ``process(image, out_dir)`` promises).

    Raises:
        ParameterError: naming OUTPUT, when the folder cannot be made (a file in the way, no permission).
    """
    try:
        os.makedirs(os.fspath(folder), exist_ok=True)
    except OSError as error:
        raise ParameterError(
            "OUTPUT", os.fspath(folder), f"be a folder that can be created ({error.strerror})"
        ) from None


_CONFIG_FIELDS = {f.name: f.default for f in fields(InferenceConfig)}


def _config(
    model: LoadedModel,
    config: InferenceConfig | None,
    settings: dict[str, Any],
    fixed: dict[str, Any],
    builtin: dict[str, Any],
    owner: str,
) -> InferenceConfig:
    """The run's :class:`InferenceConfig`.

    From ``config`` when given (keywords in ``settings`` override its fields); else from ``settings``, where a
    setting left out (or ``None``) comes from the model config's ``inference_processor:`` section, then from
    ``builtin``, then from the :class:`InferenceConfig` defaults. ``fixed`` settings define the method.
    """
    if config is not None and not isinstance(config, InferenceConfig):
        raise TypeError(f"{owner}: config must be an InferenceConfig (give settings as keywords), got {config!r}.")
    unknown = sorted(set(settings) - set(_CONFIG_FIELDS))
    if unknown:
        raise TypeError(
            f"{owner} got unknown setting(s) {', '.join(unknown)}; the settings are the fields of "
            f"InferenceConfig: {', '.join(_CONFIG_FIELDS)}."
        )
    given = {name: value for name, value in settings.items() if value is not None}
    if config is not None:
        return replace(config, **given, **fixed)
    values = {}
    for name, default in {**_CONFIG_FIELDS, **builtin}.items():
        values[name] = given.get(name, model.inference_defaults.get(name, default))
    if values.get("bands") is not None:
        values["bands"] = tuple(values["bands"])
    return InferenceConfig(**{**values, **fixed})


_PROCESSOR_ARGUMENTS = """
    Args:
        model: a :class:`~mc_uncertainty_plugin.core.LoadedModel` (:func:`~mc_uncertainty_plugin.core.load_model`)
            or a bare ``torch.nn.Module`` (ImageNet normalisation).
        config: every setting of the run as one frozen :class:`~mc_uncertainty_plugin.core.InferenceConfig`
            (each setting is documented there, once). Or leave it out and give settings as keywords of the same
            names (``n_samples=10, uncertainty_mode="mutual_information", model_input_shape=(512, 512) ...``);
            settings left out come from the model config's ``inference_processor:`` section, then the defaults.
        output_uncertainty_dir: folder of the uncertainty raster when :meth:`process` is given ``output_dir``
            (default: the same folder).
        scheduler: SCHEDULER: empty (default) runs in this process; ``local:N`` (N worker processes on this
            machine) or a Dask scheduler address (``tcp://host:8786``, ``tls://…``) runs the job in blocks
            (:mod:`mc_uncertainty_plugin.core.distributed`).
        block_size: BLOCK_SIZE: block side in pixels with a scheduler; 0 = automatic.
        **settings: fields of :class:`~mc_uncertainty_plugin.core.InferenceConfig`; with ``config``, they
            override its values.
"""


class MCDropoutInferenceProcessor(_InferenceProcessor):
    """MC dropout: dropout layers sample (BatchNorm stays in eval), T passes per window (x K with TTA).

    Emits :class:`NoActiveDropoutWarning` (a ``UserWarning``) when the model has no dropout with ``p > 0``:
    every pass would be identical and mutual information is zero everywhere.
    """

    __doc__ = (__doc__ or "") + _PROCESSOR_ARGUMENTS
    uncertainty_suffix = "_mc_uncertainty"
    _fixed = {"mc_dropout": True}

    def __init__(self, model: LoadedModel | nn.Module, config: InferenceConfig | None = None, **arguments: Any) -> None:
        super().__init__(model, config, **arguments)
        self.compatibility = check_mc_compatibility(self.model.module)
        for note in self.compatibility:
            category = NoActiveDropoutWarning if note.kind == "degenerate" else MCCompatibilityWarning
            warnings.warn(note.message, category, stacklevel=2)


class MultiClassInferenceProcessor(_InferenceProcessor):
    """Deterministic inference (dropout off) with test-time augmentation (``tta_mode``, default ``d4``).

    The uncertainty comes from the K augmentations (``tta_mode`` ``flip`` or ``d4``); with ``none`` it is the
    entropy of the single deterministic pass (mutual information 0).
    """

    __doc__ = (__doc__ or "") + _PROCESSOR_ARGUMENTS
    uncertainty_suffix = "_uncertainty"
    _fixed = {"mc_dropout": False, "n_samples": 1}
    _builtin = {"tta_mode": "d4"}

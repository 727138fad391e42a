"""The files of an evaluation: the HTML report, the summary PNG and the JSON of every number and curve.

Every file is written under a temporary name in its folder and renamed when all of them are complete
(:func:`~..io.output_files.publish_together`), so a crash or a cancel never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
from typing import Callable

from ..errors import RasterIOError
from ..io.output_files import check_outputs, publish_together, temporary_path
from .config import EvaluationConfig
from .evaluation import evaluate_uncertainty
from .figures import figure_png, summary_figure
from .report import html_report
from .result import EvaluationResult

__all__ = ["write_evaluation_outputs", "evaluate_to_files"]

# Processing key of each output -> its key in the returned dict of paths
_OUTPUT_NAMES = {"OUTPUT_HTML": "html", "OUTPUT_PNG": "png", "OUTPUT_JSON": "json"}


def _write_temporary(path: str, data: bytes) -> str:
    """Write ``data`` to a new temporary file beside ``path``; returns the temporary's path.

    Raises:
        RasterIOError: the file cannot be written (the temporary is removed).
    """
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
    except OSError as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise RasterIOError(f"cannot write '{path}': {error}.") from None
    return temporary


def write_evaluation_outputs(
    result: EvaluationResult,
    html_path: str | None = None,
    png_path: str | None = None,
    json_path: str | None = None,
) -> dict[str, str]:
    """Write the HTML report, the summary PNG and the JSON of the numbers (each only when its path is given).

    Returns:
        ``{"html": path, "png": path, "json": path}`` for the files written.

    Raises:
        ParameterError: an output path is refused (see :func:`~..io.output_files.check_outputs`).
        RasterIOError: a file cannot be written.
    """
    wanted = check_outputs({"OUTPUT_HTML": html_path, "OUTPUT_PNG": png_path, "OUTPUT_JSON": json_path})
    summary = figure_png(summary_figure(result)) if (html_path or png_path) else None
    contents = {
        "OUTPUT_JSON": lambda: json.dumps(result.to_json(), indent=1, allow_nan=False).encode("utf-8"),
        "OUTPUT_PNG": lambda: summary or b"",
        "OUTPUT_HTML": lambda: html_report(result, summary).encode("utf-8"),
    }
    temporaries: dict[str, str] = {}
    try:
        for key, path in wanted.items():
            temporaries[key] = _write_temporary(path, contents[key]())
        publish_together([(temporaries[key], path) for key, path in wanted.items()])
    except BaseException:
        for temporary in temporaries.values():
            if os.path.exists(temporary):
                os.remove(temporary)
        raise
    return {_OUTPUT_NAMES[key]: path for key, path in wanted.items()}


def evaluate_to_files(
    config: EvaluationConfig,
    html_path: str | None = None,
    png_path: str | None = None,
    json_path: str | None = None,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> tuple[EvaluationResult, dict[str, str]]:
    """Evaluate (:func:`~.evaluation.evaluate_uncertainty`, 90 % of ``progress``) and write the outputs.

    The output paths are checked against the inputs before any pixel is read.

    Returns:
        The result and the paths written (see :func:`write_evaluation_outputs`).

    Raises:
        ParameterError, RasterIOError, EvaluationCancelled: as the evaluation and the writing raise them.
    """
    outputs = {"OUTPUT_HTML": html_path, "OUTPUT_PNG": png_path, "OUTPUT_JSON": json_path}
    check_outputs(outputs, rasters=config.raster_paths())
    scaled = (lambda percent: progress(0.9 * percent)) if progress is not None else None
    result = evaluate_uncertainty(config, progress=scaled, is_cancelled=is_cancelled)
    written = write_evaluation_outputs(result, html_path, png_path, json_path)
    if progress is not None:
        progress(100.0)
    return result, written

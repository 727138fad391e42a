"""Outputs of an evaluation (:mod:`.evaluation`): a summary PNG, a self-contained HTML report and a JSON file.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure`` + the Agg canvas); pyplot and its
global state are never used, so this is safe in a QGIS worker thread. matplotlib is imported only when a figure
is drawn, so importing the core never needs it. Every file is written under a temporary
name in its folder and renamed when complete.

The summary figure has 2 x 3 panels: (a) reliability diagram, or a note when there is no confidence raster;
(b) risk–coverage; (c) sparsification against the oracle; (d) ROC of error detection; (e) PAvPU and its
conditional probabilities against the uncertainty threshold; (f) histograms of the uncertainty of correct and of
wrong pixels.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import MissingDependencyError, RasterIOError
from ..io.output_files import check_outputs, publish_together, temporary_path
from .config import EvaluationConfig
from .evaluation import evaluate_uncertainty
from .result import EvaluationResult

__all__ = [
    "plot_reliability",
    "plot_risk_coverage",
    "plot_sparsification",
    "plot_roc",
    "plot_pavpu",
    "plot_uncertainty_histograms",
    "summary_figure",
    "figure_png",
    "html_report",
    "write_evaluation_outputs",
    "evaluate_to_files",
]

# matplotlib's tab10 (colour-blind friendly): blue = model / correct, orange = wrong / errors, grey = references.
_BLUE, _ORANGE, _GREEN, _GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f"
_HISTOGRAM_BARS = 64

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(
            "matplotlib is needed to draw the evaluation plots: install it (Debian: apt install python3-matplotlib; "
            "pip: pip install matplotlib)."
        ) from None
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


# -- panels --------------------------------------------------------------------------------------------------


def plot_reliability(ax: Axes, result: EvaluationResult) -> None:
    """Accuracy against mean confidence per confidence bin, with the diagonal of perfect calibration."""
    cal = result.calibration
    ax.set_title("(a) Reliability diagram")
    if cal is None:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(
            0.5,
            0.5,
            "No confidence raster:\ncalibration (ECE, reliability)\nnot computed",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color=_GREY,
            fontsize=11,
        )
        return
    width = np.diff(cal.bin_edges)
    filled = cal.counts > 0
    left = cal.bin_edges[:-1][filled]
    accuracy, confidence = cal.accuracy[filled], cal.mean_confidence[filled]
    ax.bar(left, accuracy, width=width[filled], align="edge", color=_BLUE, edgecolor="white", label="accuracy per bin")
    ax.bar(
        left,
        np.abs(confidence - accuracy),
        bottom=np.minimum(accuracy, confidence),
        width=width[filled],
        align="edge",
        color=_ORANGE,
        alpha=0.45,
        edgecolor=_ORANGE,
        hatch="//",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color=_GREY, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence max p̄")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.text(
        0.04,
        0.72,
        f"ECE = {_fmt(cal.ece)}",
        transform=ax.transAxes,
        fontsize=10,
        bbox={"facecolor": "white", "edgecolor": _GREY, "alpha": 0.9},
    )


def plot_risk_coverage(ax: Axes, result: EvaluationResult) -> None:
    """Error rate of the retained most certain pixels against the share retained."""
    det = result.detection
    ax.plot(det.coverage, det.risk, color=_BLUE, label=f"uncertainty (AURC {_fmt(det.aurc, 4)})")
    ax.plot(det.coverage, det.oracle_risk, "--", color=_GREEN, label=f"oracle (AURC {_fmt(det.aurc_oracle, 4)})")
    ax.axhline(det.aurc_random, linestyle=":", color=_GREY, label=f"random (error rate {_fmt(det.aurc_random, 4)})")
    ax.set_title("(b) Risk–coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.35 * max(float(np.nanmax(det.risk)), det.aurc_random, 1e-3))
    ax.set_xlabel("coverage (share of most certain pixels kept)")
    ax.set_ylabel("risk (error rate of kept pixels)")
    ax.legend(loc="upper left", fontsize=8)


def plot_sparsification(ax: Axes, result: EvaluationResult) -> None:
    """Error rate of the remaining pixels as the most uncertain (or, for the oracle, the wrong) ones are removed."""
    det = result.detection
    removed = 1.0 - det.coverage
    ax.plot(removed, det.risk, color=_BLUE, label="removing most uncertain first")
    ax.plot(removed, det.oracle_risk, "--", color=_GREEN, label="oracle: removing errors first")
    ax.fill_between(removed, det.oracle_risk, det.risk, color=_ORANGE, alpha=0.25, label=f"AUSE = {_fmt(det.ause, 4)}")
    ax.set_title("(c) Sparsification vs oracle")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.35 * max(float(np.nanmax(det.risk)), 1e-3))
    ax.set_xlabel("fraction of pixels removed")
    ax.set_ylabel("error rate of remaining pixels")
    ax.legend(loc="upper right", fontsize=8)


def plot_roc(ax: Axes, result: EvaluationResult) -> None:
    """ROC of detecting wrong pixels by thresholding the uncertainty."""
    det = result.detection
    ax.set_title("(d) ROC: uncertainty detects errors")
    ax.plot([0, 1], [0, 1], ":", color=_GREY, label="random (0.5)")
    if det.roc_fpr.size:
        ax.plot(
            det.roc_fpr,
            det.roc_tpr,
            color=_BLUE,
            linewidth=2,
            clip_on=False,
            label=f"AUROC = {_fmt(det.auroc)}, AUPR = {_fmt(det.aupr)}",
        )
    else:
        ax.text(0.5, 0.5, "undefined: no error or no correct pixel", ha="center", transform=ax.transAxes)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (correct pixels flagged)")
    ax.set_ylabel("true positive rate (errors flagged)")
    ax.legend(loc="lower right", fontsize=8)


def plot_pavpu(ax: Axes, result: EvaluationResult) -> None:
    """PAvPU, p(accurate | certain) and p(uncertain | inaccurate) against the uncertainty threshold."""
    pat = result.patches
    counts = pat.counts
    ax.set_title(f"(e) Patch metrics ({pat.patch_size}x{pat.patch_size} patches)")
    if pat.thresholds.size:
        ax.plot(pat.thresholds, counts.pavpu, "o-", color=_BLUE, markersize=3, label="PAvPU")
        ax.plot(
            pat.thresholds,
            counts.p_accurate_given_certain,
            "s-",
            color=_GREEN,
            markersize=3,
            label="p(accurate | certain)",
        )
        ax.plot(
            pat.thresholds,
            counts.p_uncertain_given_inaccurate,
            "^-",
            color=_ORANGE,
            markersize=3,
            label="p(uncertain | inaccurate)",
        )
        if not np.isfinite(counts.p_uncertain_given_inaccurate).any():
            ax.text(
                0.03,
                0.5,
                "no inaccurate patch: p(uncertain | inaccurate) undefined",
                transform=ax.transAxes,
                fontsize=8,
                color=_GREY,
            )
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("uncertainty threshold (patch mean below = certain)")
    ax.set_ylabel("probability")
    ax.legend(loc="lower right", fontsize=8)


def _coarse_histogram(det: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fine histograms summed into about :data:`_HISTOGRAM_BARS` bars: edges, correct, wrong."""
    bins = det.hist_correct.size
    starts = np.unique(np.linspace(0, bins, _HISTOGRAM_BARS + 1).astype(int)[:-1])
    edges = np.concatenate((det.uncertainty_edges[starts], det.uncertainty_edges[-1:]))
    return edges, np.add.reduceat(det.hist_correct, starts), np.add.reduceat(det.hist_wrong, starts)


def plot_uncertainty_histograms(ax: Axes, result: EvaluationResult) -> None:
    """Distribution of the uncertainty of correct and of wrong pixels (each normalised to its own total)."""
    det = result.detection
    edges, correct, wrong = _coarse_histogram(det)
    for counts, color, label in ((correct, _BLUE, "correct"), (wrong, _ORANGE, "wrong")):
        total = counts.sum()
        if total == 0:
            continue
        share = counts / total
        ax.stairs(share, edges, color=color, fill=True, alpha=0.35)
        ax.stairs(share, edges, color=color, label=f"{label} ({int(total):,} px)")
    ax.set_title("(f) Uncertainty of correct vs wrong pixels")
    ax.set_xlabel("uncertainty")
    ax.set_ylabel("share of pixels")
    ax.set_xlim(edges[0], edges[-1])
    ax.legend(loc="upper right", fontsize=8)


_PANELS: tuple[Callable[[Axes, EvaluationResult], None], ...] = (
    plot_reliability,
    plot_risk_coverage,
    plot_sparsification,
    plot_roc,
    plot_pavpu,
    plot_uncertainty_histograms,
)


# -- figures ---------------------------------------------------------------------------------------------------


def summary_figure(result: EvaluationResult) -> Figure:
    """The 2 x 3 summary figure (see the module docstring), 15 x 9.4 inches."""
    figure = _new_figure(15, 9.4)
    axes = figure.subplots(2, 3)
    for ax, panel in zip(axes.ravel(), _PANELS):
        panel(ax, result)
        ax.grid(alpha=0.25)
    ece = "" if result.ece is None else f"  ·  ECE {_fmt(result.ece)}"
    figure.suptitle(
        f"Can the uncertainty be trusted?  accuracy {_fmt(result.accuracy)}  ·  mean IoU {_fmt(result.mean_iou)}"
        f"{ece}  ·  AUROC {_fmt(result.auroc)}  ·  AUPR {_fmt(result.aupr)}  ·  AURC {_fmt(result.aurc, 4)}"
        f"  ·  AUSE {_fmt(result.ause, 4)}  ({result.n_pixels:,} px)",
        fontsize=13,
    )
    return figure


def _panel_figure(panel: Callable[[Axes, EvaluationResult], None], result: EvaluationResult) -> Figure:
    figure = _new_figure(6.4, 4.6)
    ax = figure.subplots()
    panel(ax, result)
    ax.grid(alpha=0.25)
    return figure


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """``figure`` as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


# -- HTML ------------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
img { max-width: 100%; } .panel { float: right; width: 46%; margin: 0 0 1em 1.5em; }
section { clear: both; padding-top: 0.5em; } .muted { color: #666; } code { background: #f5f5f5; }
"""


def _table(header: list[str], rows: list[list[str]], first_is_name: bool = True) -> str:
    head = "".join(
        f'<th class="{"name" if i == 0 and first_is_name else ""}">{html.escape(h)}</th>' for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"name" if i == 0 and first_is_name else ""}">{html.escape(c)}</td>' for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(result: EvaluationResult, summary_png: bytes | None = None) -> str:
    """The self-contained HTML report: numbers, how to read them, and figures as base64 PNG."""
    det, pat, cal = result.detection, result.patches, result.calibration
    summary_png = summary_png if summary_png is not None else figure_png(summary_figure(result))
    panels = {panel.__name__: _img(figure_png(_panel_figure(panel, result)), panel.__doc__ or "") for panel in _PANELS}
    config = result.config
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Uncertainty evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Can the uncertainty be trusted?</h1>",
        "<p>This report compares a class raster and its uncertainty raster with reference labels. A useful "
        "uncertainty is <b>high where the classes are wrong and low where they are right</b>; the sections below "
        "measure this in several ways. Every valid pixel counts (no subsampling).</p>",
        _table(
            ["input", "file"],
            [
                ["CLASSES", config.classes_path],
                ["UNCERTAINTY", config.uncertainty_path],
                ["CONFIDENCE", config.confidence_path or "— (calibration not computed)"],
                [
                    "REFERENCE",
                    config.reference_path
                    + (" (resampled onto the grid of CLASSES)" if result.reference_resampled else ""),
                ],
            ],
        ),
        "".join(f"<p class='muted'>Note: {html.escape(n)}</p>" for n in result.notes),
        "<h2>Summary</h2>",
        _table(
            ["metric", "value", "best", "how to read it"],
            [
                ["pixels evaluated", f"{result.n_pixels:,}", "", "valid in CLASSES, UNCERTAINTY and REFERENCE"],
                ["accuracy", _fmt(result.accuracy), "1", "share of pixels whose class matches the reference"],
                ["mean IoU", _fmt(result.mean_iou), "1", "mean over classes of TP / (TP + FP + FN)"],
                [
                    "ECE",
                    _fmt(result.ece) if cal else "— (no confidence raster)",
                    "0",
                    "gap between confidence and accuracy",
                ],
                ["AUROC", _fmt(det.auroc), "1", "0.5 = the uncertainty does not tell errors apart"],
                ["AUPR", _fmt(det.aupr), "1", f"random = error rate {_fmt(det.aurc_random)}"],
                ["AURC", _fmt(det.aurc, 4), _fmt(det.aurc_oracle, 4), f"random = {_fmt(det.aurc_random, 4)}"],
                ["AUSE", _fmt(det.ause, 4), "0", "AURC minus the oracle's"],
                [
                    "best PAvPU",
                    _fmt(float(np.nanmax(pat.counts.pavpu)) if pat.thresholds.size else None),
                    "1",
                    f"over the thresholds, {pat.patch_size}x{pat.patch_size} patches",
                ],
            ],
        ),
        _img(summary_png, "summary figure"),
    ]
    # accuracy and IoU
    rows = [
        [name, _fmt(float(iou)), f"{int(result.confusion[i].sum()):,}", f"{int(result.confusion[:, i].sum()):,}"]
        for i, (name, iou) in enumerate(zip(result.class_names, result.iou))
    ]
    names = list(result.class_names)
    confusion_rows = [[names[i]] + [f"{int(v):,}" for v in result.confusion[i]] for i in range(len(names))]
    parts += [
        "<section><h2>Accuracy and IoU</h2>",
        f"<p><b>Accuracy</b> = correct pixels / all pixels = {_fmt(result.accuracy)} ({result.n_errors:,} errors). "
        "<b>IoU</b> of a class = TP / (TP + FP + FN): the overlap of predicted and reference areas of that class "
        f"divided by their union; the <b>mean IoU</b> ({_fmt(result.mean_iou)}) averages the classes present in "
        "either raster (— = absent), so rare classes weigh as much as common ones.</p>",
        _table(["class", "IoU", "reference px", "predicted px"], rows),
        "<p>Confusion matrix (rows: reference, columns: predicted):</p>",
        _table(["reference \\ predicted"] + names, confusion_rows),
        "</section>",
    ]
    # calibration
    parts += ["<section><h2>Calibration</h2>"]
    if cal is None:
        parts.append(
            "<p>No CONFIDENCE raster (max<sub>c</sub> p̄<sub>c</sub>) was given: ECE and the reliability "
            "diagram are not computed.</p>"
        )
    else:
        parts += [
            f"<div class='panel'>{panels['plot_reliability']}</div>",
            f"<p><b>ECE</b> (expected calibration error) = Σ<sub>b</sub> (n<sub>b</sub>/N) |acc<sub>b</sub> − "
            f"conf<sub>b</sub>| over {cal.counts.size} equal-width confidence bins = <b>{_fmt(cal.ece)}</b> "
            f"({cal.n_pixels:,} px). A calibrated model is right 80 % of the time when it says 80 %: its bars "
            "follow the diagonal. Bars below the diagonal mean over-confidence, above it under-confidence.</p>",
            _table(
                ["confidence bin", "pixels", "mean confidence", "accuracy"],
                [
                    [
                        f"{cal.bin_edges[b]:.3f}–{cal.bin_edges[b + 1]:.3f}",
                        f"{int(cal.counts[b]):,}",
                        _fmt(float(cal.mean_confidence[b])),
                        _fmt(float(cal.accuracy[b])),
                    ]
                    for b in range(cal.counts.size)
                ],
            ),
        ]
    parts.append("</section>")
    # error detection
    lo, hi = result.uncertainty_range
    parts += [
        "<section><h2>Error detection by uncertainty</h2>",
        f"<div class='panel'>{panels['plot_roc']}</div>",
        "<p>Errors are the positive class and the uncertainty is the score. <b>AUROC</b> "
        f"= {_fmt(det.auroc)}: the probability that a random wrong pixel is more uncertain than a random correct "
        "one (0.5 = no better than chance, 1 = every error more uncertain than every correct pixel). <b>AUPR</b> "
        f"= {_fmt(det.aupr)}: the average precision of flagging the most uncertain pixels as errors; a random "
        f"score gets the error rate ({_fmt(det.aurc_random)}), so compare with it.</p>",
        f"<div class='panel'>{panels['plot_risk_coverage']}</div>",
        "<p><b>Risk–coverage</b>: keep only the share <i>c</i> (coverage) of pixels the model is most certain "
        "about; the risk is the error rate among them. A trustworthy uncertainty gives a curve that rises slowly: "
        "masking the most uncertain pixels removes most errors. <b>AURC</b> = mean risk over all coverages = "
        f"{_fmt(det.aurc, 4)}; the oracle, which keeps all correct pixels first, reaches {_fmt(det.aurc_oracle, 4)} "
        f"and a random uncertainty about {_fmt(det.aurc_random, 4)} (the error rate).</p>",
        f"<div class='panel'>{panels['plot_sparsification']}</div>",
        "<p><b>Sparsification</b>: remove the most uncertain pixels step by step and follow the error rate of those "
        "left; the oracle removes the wrong pixels first. <b>AUSE</b> (area between the two curves) = "
        f"{_fmt(det.ause, 4)}, equal to AURC − oracle AURC: 0 means the uncertainty ranks pixels as well as "
        "knowing the errors would.</p>",
        "</section>",
    ]
    # patches
    counts = pat.counts
    parts += [
        "<section><h2>Patch accuracy vs patch uncertainty (PAvPU)</h2>",
        f"<div class='panel'>{panels['plot_pavpu']}</div>",
        f"<p>After Mukhoti &amp; Gal (2018): the raster is cut into {pat.patch_size}x{pat.patch_size} patches "
        f"({pat.n_patches:,} with valid pixels). A patch is <i>accurate</i> when at least half its pixels are right, "
        "<i>certain</i> when its mean uncertainty is below the threshold. <b>p(accurate | certain)</b> = "
        "n<sub>ac</sub> / (n<sub>ac</sub> + n<sub>ic</sub>): how often a patch that looks certain is right. "
        "<b>p(uncertain | inaccurate)</b> = n<sub>iu</sub> / (n<sub>ic</sub> + n<sub>iu</sub>): how many wrong "
        "patches the uncertainty flags. <b>PAvPU</b> = (n<sub>ac</sub> + n<sub>iu</sub>) / all patches: how often "
        "certainty and accuracy agree. Thresholds are quantiles of the patch mean uncertainty and evenly spaced values over the uncertainty range; a good uncertainty keeps PAvPU high over a wide range of thresholds.</p>",
        _table(
            [
                "threshold",
                "patches certain",
                "n_ac",
                "n_au",
                "n_ic",
                "n_iu",
                "p(acc | cert)",
                "p(unc | inacc)",
                "PAvPU",
            ],
            [
                [
                    f"{t:.4g}",
                    f"{f:.0%}",
                    f"{int(a):,}",
                    f"{int(b):,}",
                    f"{int(c):,}",
                    f"{int(d):,}",
                    _fmt(float(x)),
                    _fmt(float(y)),
                    _fmt(float(z)),
                ]
                for t, f, a, b, c, d, x, y, z in zip(
                    pat.thresholds,
                    pat.certain_fraction,
                    counts.n_ac,
                    counts.n_au,
                    counts.n_ic,
                    counts.n_iu,
                    counts.p_accurate_given_certain,
                    counts.p_uncertain_given_inaccurate,
                    counts.pavpu,
                )
            ],
            first_is_name=False,
        ),
        "</section>",
        "<section><h2>Uncertainty of correct and wrong pixels</h2>",
        f"<div class='panel'>{panels['plot_uncertainty_histograms']}</div>",
        "<p>The two distributions, each normalised to its own number of pixels. The less they overlap, the better "
        "the uncertainty separates errors from correct pixels (their overlap is what AUROC measures).</p>",
        "</section>",
        "<section><h2>How the numbers are computed</h2>",
        f"<p class='muted'>Pixels are streamed by row blocks and counted, never subsampled. Uncertainties are "
        f"binned on {det.hist_correct.size} equal-width bins over [{lo:.4g}, {hi:.4g}] (width "
        f"{(hi - lo) / det.hist_correct.size:.3g}); pixels in one bin are ties: AUROC counts tied pairs one half, "
        "AUPR uses one threshold per bin, and the risk–coverage curve, AURC and AUSE are expectations over a random "
        "order of tied pixels. PAvPU thresholds are bin edges, so patch counts are exact. Patches cut by the "
        "raster edge keep the pixels they have.</p></section>",
        "</body></html>",
    ]
    return "\n".join(parts)


# -- files -----------------------------------------------------------------------------------------------------


def _write_temporary(path: str, data: bytes) -> str:
    """Write ``data`` to a new temporary file beside ``path``; returns the temporary's path."""
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
    names = {"OUTPUT_HTML": "html", "OUTPUT_PNG": "png", "OUTPUT_JSON": "json"}
    return {names[key]: path for key, path in wanted.items()}


def evaluate_to_files(
    config: EvaluationConfig,
    html_path: str | None = None,
    png_path: str | None = None,
    json_path: str | None = None,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> tuple[EvaluationResult, dict[str, str]]:
    """Evaluate (:func:`~.evaluation.evaluate_uncertainty`, 90 % of ``progress``) and write the outputs.

    Returns:
        The result and the paths written (see :func:`write_evaluation_outputs`).

    Raises:
        ParameterError, RasterIOError, InferenceCancelled: as the evaluation and the writing raise them.
    """
    rasters = {
        "CLASSES": config.classes_path,
        "UNCERTAINTY": config.uncertainty_path,
        "REFERENCE": config.reference_path,
        "CONFIDENCE": config.confidence_path,
    }
    check_outputs({"OUTPUT_HTML": html_path, "OUTPUT_PNG": png_path, "OUTPUT_JSON": json_path}, rasters=rasters)
    scaled = (lambda percent: progress(0.9 * percent)) if progress is not None else None
    result = evaluate_uncertainty(config, progress=scaled, is_cancelled=is_cancelled)
    written = write_evaluation_outputs(result, html_path, png_path, json_path)
    if progress is not None:
        progress(100.0)
    return result, written

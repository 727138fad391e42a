"""The figures of an evaluation report, drawn with matplotlib: six panels and the summary figure.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure`` + the Agg canvas); pyplot and its
global state are never used, so this is safe in a QGIS worker thread. matplotlib is imported only when a figure
is drawn, so importing the core never needs it.

The summary figure has 2 x 3 panels: (a) reliability diagram, or a note when there is no confidence raster;
(b) risk–coverage; (c) sparsification against the oracle; (d) ROC of error detection; (e) PAvPU and its
conditional probabilities against the uncertainty threshold; (f) histograms of the uncertainty of correct and of
wrong pixels. Each panel is a function ``(Axes, EvaluationResult) -> None`` (:data:`PANELS`).
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import MissingDependencyError
from .result import ErrorDetection, EvaluationResult

__all__ = [
    "PANELS",
    "format_number",
    "plot_reliability",
    "plot_risk_coverage",
    "plot_sparsification",
    "plot_roc",
    "plot_pavpu",
    "plot_uncertainty_histograms",
    "summary_figure",
    "panel_figure",
    "figure_png",
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


def format_number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or "—" for None and NaN (for plots and tables)."""
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
        f"ECE = {format_number(cal.ece)}",
        transform=ax.transAxes,
        fontsize=10,
        bbox={"facecolor": "white", "edgecolor": _GREY, "alpha": 0.9},
    )


def plot_risk_coverage(ax: Axes, result: EvaluationResult) -> None:
    """Error rate of the retained most certain pixels against the share retained."""
    det = result.detection
    ax.plot(det.coverage, det.risk, color=_BLUE, label=f"uncertainty (AURC {format_number(det.aurc, 4)})")
    ax.plot(
        det.coverage, det.oracle_risk, "--", color=_GREEN, label=f"oracle (AURC {format_number(det.aurc_oracle, 4)})"
    )
    ax.axhline(
        det.aurc_random, linestyle=":", color=_GREY, label=f"random (error rate {format_number(det.aurc_random, 4)})"
    )
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
    ax.fill_between(
        removed, det.oracle_risk, det.risk, color=_ORANGE, alpha=0.25, label=f"AUSE = {format_number(det.ause, 4)}"
    )
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
            label=f"AUROC = {format_number(det.auroc)}, AUPR = {format_number(det.aupr)}",
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


def _coarse_histogram(det: ErrorDetection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


PANELS: tuple[Callable[[Axes, EvaluationResult], None], ...] = (
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
    for ax, panel in zip(axes.ravel(), PANELS):
        panel(ax, result)
        ax.grid(alpha=0.25)
    numbers = [
        f"accuracy {format_number(result.accuracy)}",
        f"mean IoU {format_number(result.mean_iou)}",
        *([] if result.ece is None else [f"ECE {format_number(result.ece)}"]),
        f"AUROC {format_number(result.auroc)}",
        f"AUPR {format_number(result.aupr)}",
        f"AURC {format_number(result.aurc, 4)}",
        f"AUSE {format_number(result.ause, 4)}",
    ]
    figure.suptitle(
        f"Can the uncertainty be trusted?  {'  ·  '.join(numbers)}  ({result.n_pixels:,} px)",
        fontsize=13,
    )
    return figure


def panel_figure(panel: Callable[[Axes, EvaluationResult], None], result: EvaluationResult) -> Figure:
    """One panel alone, 6.4 x 4.6 inches (for the HTML report)."""
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

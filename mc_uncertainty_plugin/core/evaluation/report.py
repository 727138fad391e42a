"""The self-contained HTML report of an evaluation: every number, how to read it, and the figures as base64 PNG.

:func:`html_report` puts together one section per group of metrics (inputs, summary, accuracy and IoU,
calibration, error detection, PAvPU, uncertainty histograms, how the numbers are computed); each section is a
function of the :class:`~.result.EvaluationResult` that returns its HTML.
"""

from __future__ import annotations

import base64
import html

import numpy as np

from .figures import PANELS, figure_png, panel_figure, summary_figure
from .figures import format_number as fmt
from .result import Calibration, EvaluationResult, PatchMetrics

__all__ = ["html_report"]

_CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.name, th.name { text-align: left; }
img { max-width: 100%; } .panel { float: right; width: 46%; margin: 0 0 1em 1.5em; }
section { clear: both; padding-top: 0.5em; } .muted { color: #666; } code { background: #f5f5f5; }
"""


def html_report(result: EvaluationResult, summary_png: bytes | None = None) -> str:
    """The self-contained HTML report: numbers, how to read them, and figures as base64 PNG.

    Args:
        result: the evaluation.
        summary_png: the summary figure as PNG when already drawn; None draws it.

    Returns:
        The HTML document.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    summary_png = summary_png if summary_png is not None else figure_png(summary_figure(result))
    panels = {panel.__name__: _img(figure_png(panel_figure(panel, result)), panel.__doc__ or "") for panel in PANELS}
    sections = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Uncertainty evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        _inputs_section(result),
        _summary_section(result, summary_png),
        _accuracy_section(result),
        _calibration_section(result.calibration, panels["plot_reliability"]),
        _detection_section(result, panels),
        _patch_section(result.patches, panels["plot_pavpu"]),
        _histogram_section(panels["plot_uncertainty_histograms"]),
        _method_section(result),
        "</body></html>",
    ]
    return "\n".join(sections)


# -- building blocks ---------------------------------------------------------------------------------------------


def _img(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG inline (base64), so the report is one file."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(header: list[str], rows: list[list[str]], first_is_name: bool = True) -> str:
    """An HTML table of escaped text; the first column left-aligned when ``first_is_name``."""
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


# -- sections ----------------------------------------------------------------------------------------------------


def _inputs_section(result: EvaluationResult) -> str:
    """The title, what the report measures, the input files and the notes (e.g. REFERENCE resampled)."""
    config = result.config
    resampled = " (resampled onto the grid of CLASSES)" if result.reference_resampled else ""
    inputs = [
        ["CLASSES", config.classes_path],
        ["UNCERTAINTY", config.uncertainty_path],
        ["CONFIDENCE", config.confidence_path or "— (calibration not computed)"],
        ["REFERENCE", config.reference_path + resampled],
    ]
    return "\n".join(
        [
            "<h1>Can the uncertainty be trusted?</h1>",
            "<p>This report compares a class raster and its uncertainty raster with reference labels. A useful "
            "uncertainty is <b>high where the classes are wrong and low where they are right</b>; the sections "
            "below measure this in several ways. Every valid pixel counts (no subsampling).</p>",
            _table(["input", "file"], inputs),
            "".join(f"<p class='muted'>Note: {html.escape(n)}</p>" for n in result.notes),
        ]
    )


def _summary_section(result: EvaluationResult, summary_png: bytes) -> str:
    """One row per headline number (its value, its best value, how to read it), then the summary figure."""
    det, pat = result.detection, result.patches
    ece = fmt(result.ece) if result.calibration else "— (no confidence raster)"
    best_pavpu = fmt(float(np.nanmax(pat.counts.pavpu)) if pat.thresholds.size else None)
    rows = [
        ["pixels evaluated", f"{result.n_pixels:,}", "", "valid in CLASSES, UNCERTAINTY and REFERENCE"],
        ["accuracy", fmt(result.accuracy), "1", "share of pixels whose class matches the reference"],
        ["mean IoU", fmt(result.mean_iou), "1", "mean over classes of TP / (TP + FP + FN)"],
        ["ECE", ece, "0", "gap between confidence and accuracy"],
        ["AUROC", fmt(det.auroc), "1", "0.5 = the uncertainty does not tell errors apart"],
        ["AUPR", fmt(det.aupr), "1", f"random = error rate {fmt(det.aurc_random)}"],
        ["AURC", fmt(det.aurc, 4), fmt(det.aurc_oracle, 4), f"random = {fmt(det.aurc_random, 4)}"],
        ["AUSE", fmt(det.ause, 4), "0", "AURC minus the oracle's"],
        ["best PAvPU", best_pavpu, "1", f"over the thresholds, {pat.patch_size}x{pat.patch_size} patches"],
    ]
    return "\n".join(
        [
            "<h2>Summary</h2>",
            _table(["metric", "value", "best", "how to read it"], rows),
            _img(summary_png, "summary figure"),
        ]
    )


def _accuracy_section(result: EvaluationResult) -> str:
    """Accuracy, IoU per class (with the pixels of each class in both rasters) and the confusion matrix."""
    names = list(result.class_names)
    confusion = result.confusion
    iou_rows = [
        [name, fmt(float(iou)), f"{int(confusion[i].sum()):,}", f"{int(confusion[:, i].sum()):,}"]
        for i, (name, iou) in enumerate(zip(names, result.iou))
    ]
    confusion_rows = [[names[i]] + [f"{int(v):,}" for v in confusion[i]] for i in range(len(names))]
    return "\n".join(
        [
            "<section><h2>Accuracy and IoU</h2>",
            f"<p><b>Accuracy</b> = correct pixels / all pixels = {fmt(result.accuracy)} ({result.n_errors:,} "
            "errors). <b>IoU</b> of a class = TP / (TP + FP + FN): the overlap of predicted and reference areas of "
            f"that class divided by their union; the <b>mean IoU</b> ({fmt(result.mean_iou)}) averages the classes "
            "present in either raster (— = absent), so rare classes weigh as much as common ones.</p>",
            _table(["class", "IoU", "reference px", "predicted px"], iou_rows),
            "<p>Confusion matrix (rows: reference, columns: predicted):</p>",
            _table(["reference \\ predicted"] + names, confusion_rows),
            "</section>",
        ]
    )


def _calibration_section(cal: Calibration | None, reliability_img: str) -> str:
    """The ECE, the reliability diagram and its bins; a sentence saying why not without CONFIDENCE."""
    if cal is None:
        body = [
            "<p>No CONFIDENCE raster (max<sub>c</sub> p̄<sub>c</sub>) was given: ECE and the reliability "
            "diagram are not computed.</p>"
        ]
    else:
        bins = [
            [
                f"{cal.bin_edges[b]:.3f}–{cal.bin_edges[b + 1]:.3f}",
                f"{int(cal.counts[b]):,}",
                fmt(float(cal.mean_confidence[b])),
                fmt(float(cal.accuracy[b])),
            ]
            for b in range(cal.counts.size)
        ]
        body = [
            f"<div class='panel'>{reliability_img}</div>",
            "<p><b>ECE</b> (expected calibration error) = Σ<sub>b</sub> (n<sub>b</sub>/N) |acc<sub>b</sub> − "
            f"conf<sub>b</sub>| over {cal.counts.size} equal-width confidence bins = <b>{fmt(cal.ece)}</b> "
            f"({cal.n_pixels:,} px). A calibrated model is right 80 % of the time when it says 80 %: its bars "
            "follow the diagonal. Bars below the diagonal mean over-confidence, above it under-confidence.</p>",
            _table(["confidence bin", "pixels", "mean confidence", "accuracy"], bins),
        ]
    return "\n".join(["<section><h2>Calibration</h2>", *body, "</section>"])


def _detection_section(result: EvaluationResult, panels: dict[str, str]) -> str:
    """AUROC and AUPR with the ROC curve, risk–coverage and AURC, sparsification and AUSE."""
    det = result.detection
    return "\n".join(
        [
            "<section><h2>Error detection by uncertainty</h2>",
            f"<div class='panel'>{panels['plot_roc']}</div>",
            "<p>Errors are the positive class and the uncertainty is the score. <b>AUROC</b> "
            f"= {fmt(det.auroc)}: the probability that a random wrong pixel is more uncertain than a random correct "
            "one (0.5 = no better than chance, 1 = every error more uncertain than every correct pixel). <b>AUPR</b> "
            f"= {fmt(det.aupr)}: the average precision of flagging the most uncertain pixels as errors; a random "
            f"score gets the error rate ({fmt(det.aurc_random)}), so compare with it.</p>",
            f"<div class='panel'>{panels['plot_risk_coverage']}</div>",
            "<p><b>Risk–coverage</b>: keep only the share <i>c</i> (coverage) of pixels the model is most certain "
            "about; the risk is the error rate among them. A trustworthy uncertainty gives a curve that rises "
            "slowly: masking the most uncertain pixels removes most errors. <b>AURC</b> = mean risk over all "
            f"coverages = {fmt(det.aurc, 4)}; the oracle, which keeps all correct pixels first, reaches "
            f"{fmt(det.aurc_oracle, 4)} and a random uncertainty about {fmt(det.aurc_random, 4)} (the error rate).</p>",
            f"<div class='panel'>{panels['plot_sparsification']}</div>",
            "<p><b>Sparsification</b>: remove the most uncertain pixels step by step and follow the error rate of "
            "those left; the oracle removes the wrong pixels first. <b>AUSE</b> (area between the two curves) = "
            f"{fmt(det.ause, 4)}, equal to AURC − oracle AURC: 0 means the uncertainty ranks pixels as well as "
            "knowing the errors would.</p>",
            "</section>",
        ]
    )


def _patch_rows(pat: PatchMetrics) -> list[list[str]]:
    """One row per PAvPU threshold: the threshold, the share of certain patches, the four counts, the three
    probabilities."""
    counts = pat.counts
    columns = zip(
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
    return [
        [f"{t:.4g}", f"{f:.0%}", *(f"{int(n):,}" for n in (ac, au, ic, iu)), *(fmt(float(p)) for p in (x, y, z))]
        for t, f, ac, au, ic, iu, x, y, z in columns
    ]


def _patch_section(pat: PatchMetrics, pavpu_img: str) -> str:
    """PAvPU after Mukhoti & Gal (2018): what the probabilities mean and their table over the thresholds."""
    header = [
        "threshold",
        "patches certain",
        "n_ac",
        "n_au",
        "n_ic",
        "n_iu",
        "p(acc | cert)",
        "p(unc | inacc)",
        "PAvPU",
    ]
    return "\n".join(
        [
            "<section><h2>Patch accuracy vs patch uncertainty (PAvPU)</h2>",
            f"<div class='panel'>{pavpu_img}</div>",
            f"<p>After Mukhoti &amp; Gal (2018): the raster is cut into {pat.patch_size}x{pat.patch_size} patches "
            f"({pat.n_patches:,} with valid pixels). A patch is <i>accurate</i> when at least half its pixels are "
            "right, <i>certain</i> when its mean uncertainty is below the threshold. <b>p(accurate | certain)</b> = "
            "n<sub>ac</sub> / (n<sub>ac</sub> + n<sub>ic</sub>): how often a patch that looks certain is right. "
            "<b>p(uncertain | inaccurate)</b> = n<sub>iu</sub> / (n<sub>ic</sub> + n<sub>iu</sub>): how many wrong "
            "patches the uncertainty flags. <b>PAvPU</b> = (n<sub>ac</sub> + n<sub>iu</sub>) / all patches: how "
            "often certainty and accuracy agree. Thresholds are quantiles of the patch mean uncertainty and evenly "
            "spaced values over the uncertainty range; a good uncertainty keeps PAvPU high over a wide range of "
            "thresholds.</p>",
            _table(header, _patch_rows(pat), first_is_name=False),
            "</section>",
        ]
    )


def _histogram_section(histograms_img: str) -> str:
    """The uncertainty histograms of correct and of wrong pixels."""
    return "\n".join(
        [
            "<section><h2>Uncertainty of correct and wrong pixels</h2>",
            f"<div class='panel'>{histograms_img}</div>",
            "<p>The two distributions, each normalised to its own number of pixels. The less they overlap, the "
            "better the uncertainty separates errors from correct pixels (their overlap is what AUROC measures).</p>",
            "</section>",
        ]
    )


def _method_section(result: EvaluationResult) -> str:
    """How the numbers are computed: streaming, the uncertainty bins and how ties count."""
    lo, hi = result.uncertainty_range
    bins = result.detection.hist_correct.size
    return "\n".join(
        [
            "<section><h2>How the numbers are computed</h2>",
            "<p class='muted'>Pixels are streamed by row blocks and counted, never subsampled. Uncertainties are "
            f"binned on {bins} equal-width bins over [{lo:.4g}, {hi:.4g}] (width {(hi - lo) / bins:.3g}); pixels "
            "in one bin are ties: AUROC counts tied pairs one half, AUPR uses one threshold per bin, and the "
            "risk–coverage curve, AURC and AUSE are expectations over a random order of tied pixels. PAvPU "
            "thresholds are bin edges, so patch counts are exact. Patches cut by the raster edge keep the pixels "
            "they have.</p></section>",
        ]
    )

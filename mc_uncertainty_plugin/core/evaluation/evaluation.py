"""Can the uncertainty be trusted? Evaluation of a class raster and its uncertainty raster against reference labels.

Inputs, all single-band rasters on one grid (the reference may be on another one, see below):

- CLASSES: predicted class index per pixel (255 = nodata, as the core writes it; the band's nodata too);
- UNCERTAINTY: any score where higher means less sure (entropy, mutual information ...); its nodata and NaN
  are excluded;
- CONFIDENCE (optional): ``max_c p̄_c`` in ``[0, 1]``, for calibration;
- REFERENCE: the true class index (its nodata and 255 are excluded). When it is georeferenced on another grid
  (size, origin, pixel size or CRS), it is resampled by nearest neighbour onto the grid of CLASSES with
  ``gdal.Warp`` into an in-memory VRT, and a :class:`ReferenceResampledWarning` is issued.

A pixel is evaluated when CLASSES, UNCERTAINTY and REFERENCE are all valid there; calibration uses those of them
where CONFIDENCE is valid too.

Streaming. Nothing holds a full raster: a first pass reads UNCERTAINTY by row blocks for its range
``[lo, hi]`` (``lo = min(0, min u)``, ``hi = max u``); a second pass reads all rasters by blocks of
``block_rows`` rows (a multiple of the patch size, so no patch straddles two blocks) and accumulates

- the confusion matrix (accuracy, IoU);
- per calibration bin (15 equal-width bins of confidence): pixel count, sum of confidence, number correct (ECE);
- counts of correct and of wrong pixels on ``uncertainty_bins`` (2048) equal-width bins over ``[lo, hi]``:
  AUROC, AUPR, risk–coverage, AURC and AUSE follow from these (see :mod:`.evaluation_metrics` for how the
  binning bounds their exactness: values in one bin are ties);
- per ``p x p`` patch (Mukhoti & Gal 2018): valid pixels, correct pixels, summed uncertainty; the patch's mean
  uncertainty is binned on the same grid, separately for accurate and inaccurate patches, which gives the PAvPU
  counts exactly at thresholds on bin edges. Patches cut by the raster's right or bottom edge keep the pixels
  they have; a patch without a valid pixel is skipped.

Nothing is subsampled: every valid pixel counts, and the result does not depend on ``block_rows``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from osgeo import gdal, osr

from ..errors import InferenceCancelled, ParameterError
from ..io.conventions import CLASS_NODATA, MAX_CLASSES
from ..io.raster_io import open_raster
from . import metrics

__all__ = [
    "CLASS_NODATA",
    "DEFAULT_PAVPU_QUANTILES",
    "EvaluationConfig",
    "Calibration",
    "ErrorDetection",
    "PatchMetrics",
    "EvaluationResult",
    "ReferenceResampledWarning",
    "parse_class_names",
    "evaluate_uncertainty",
]

DEFAULT_PAVPU_QUANTILES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ..., 0.95


class ReferenceResampledWarning(UserWarning):
    """REFERENCE was on another grid than CLASSES and was resampled (nearest neighbour) onto it."""


def parse_class_names(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"background, building"`` or a sequence of names as a tuple of stripped names; None when empty."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    names = tuple(p.strip() for p in parts)
    return names if any(names) else None


@dataclass(frozen=True)
class EvaluationConfig:
    """What to evaluate and how finely.

    Attributes:
        classes_path: class raster (CLASSES).
        uncertainty_path: uncertainty raster (UNCERTAINTY), higher = less sure.
        reference_path: reference label raster (REFERENCE).
        confidence_path: optional ``max_c p̄_c`` raster (CONFIDENCE) for calibration.
        class_names: one name per class index (CLASS_NAMES); None takes the class raster's category names.
        pavpu_patch_size: side ``p`` of the square patches of the PAvPU metrics (PAVPU_PATCH_SIZE).
        block_rows: rows read per block (rounded down to a multiple of ``p``, at least ``p``).
        uncertainty_bins: bins over ``[lo, hi]`` of the uncertainty histograms.
        calibration_bins: equal-width confidence bins of the ECE and the reliability diagram.
        pavpu_quantiles: PAvPU thresholds at these quantiles of the patch mean uncertainty (snapped up to bin
            edges) ...
        pavpu_even_thresholds: ... and at this many thresholds evenly spaced inside ``[lo, hi]`` (as Mukhoti &
            Gal do), also bin edges.
        curve_points: points of the risk–coverage and sparsification curves.
    """

    classes_path: str
    uncertainty_path: str
    reference_path: str
    confidence_path: str | None = None
    class_names: tuple[str, ...] | None = None
    pavpu_patch_size: int = 4
    block_rows: int = 512
    uncertainty_bins: int = 2048
    calibration_bins: int = 15
    pavpu_quantiles: tuple[float, ...] = DEFAULT_PAVPU_QUANTILES
    pavpu_even_thresholds: int = 19
    curve_points: int = 200

    def __post_init__(self) -> None:
        for key, path in (
            ("CLASSES", self.classes_path),
            ("UNCERTAINTY", self.uncertainty_path),
            ("REFERENCE", self.reference_path),
            ("CONFIDENCE", self.confidence_path),
        ):
            if key == "CONFIDENCE" and path is None:
                continue
            if not isinstance(path, (str, os.PathLike)) or not str(path):
                raise ParameterError(key, path, "be a raster path")
            object.__setattr__(self, _PATH_FIELDS[key], str(path))
        object.__setattr__(self, "class_names", parse_class_names(self.class_names))
        for name, value, minimum in (
            ("PAVPU_PATCH_SIZE", self.pavpu_patch_size, 1),
            ("block_rows", self.block_rows, 1),
            ("uncertainty_bins", self.uncertainty_bins, 2),
            ("calibration_bins", self.calibration_bins, 1),
            ("pavpu_even_thresholds", self.pavpu_even_thresholds, 0),
            ("curve_points", self.curve_points, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ParameterError(name, value, f"be an integer >= {minimum}")
        quantiles = tuple(float(q) for q in self.pavpu_quantiles)
        if not quantiles or any(not 0.0 < q < 1.0 for q in quantiles):
            raise ParameterError("pavpu_quantiles", self.pavpu_quantiles, "be levels strictly between 0 and 1")
        object.__setattr__(self, "pavpu_quantiles", quantiles)


_PATH_FIELDS = {
    "CLASSES": "classes_path",
    "UNCERTAINTY": "uncertainty_path",
    "REFERENCE": "reference_path",
    "CONFIDENCE": "confidence_path",
}


@dataclass(frozen=True, eq=False)
class Calibration:
    """Calibration of the confidence ``max_c p̄_c`` (Guo et al., 2017).

    Attributes:
        ece: expected calibration error ``Σ_b (n_b / N) |acc_b - conf_b|``, in ``[0, 1]``; 0 = calibrated.
        bin_edges: ``(M + 1,)`` confidence bin edges ``0, 1/M, ..., 1`` (bin ``b`` is ``[b/M, (b+1)/M)``, 1 in
            the last).
        counts: ``(M,)`` int64 pixels per bin.
        mean_confidence: ``(M,)`` mean confidence per bin (NaN when empty).
        accuracy: ``(M,)`` share of correct pixels per bin (NaN when empty).
        n_pixels: pixels with a valid confidence.
    """

    ece: float
    bin_edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    n_pixels: int


@dataclass(frozen=True, eq=False)
class ErrorDetection:
    """How well the uncertainty separates wrong from correct pixels (errors are the positive class).

    Attributes:
        auroc: area under the ROC curve, P(a random error is more uncertain than a random correct pixel).
        aupr: average precision of "uncertain means wrong".
        aurc: area under the risk–coverage curve, ``(1/N) Σ_k risk(k)``; lower is better.
        aurc_oracle: the smallest AURC possible (errors ranked last).
        aurc_random: AURC of an uninformative uncertainty, the error rate.
        ause: area between the sparsification curve and the oracle's, ``aurc - aurc_oracle`` (also called
            E-AURC); 0 = perfect ranking.
        uncertainty_edges: ``(B + 1,)`` edges of the uncertainty bins.
        hist_correct, hist_wrong: ``(B,)`` int64 correct / wrong pixels per uncertainty bin.
        roc_fpr, roc_tpr: the ROC curve. pr_recall, pr_precision: the precision–recall curve.
        coverage: ``(P,)`` shares of pixels retained, ``1/P .. 1``; ``risk``: expected error rate of the
            retained most certain pixels; ``oracle_risk``: the same with errors removed first. The
            sparsification curves are ``risk`` and ``oracle_risk`` against the fraction removed ``1 - coverage``.
    """

    auroc: float
    aupr: float
    aurc: float
    aurc_oracle: float
    aurc_random: float
    ause: float
    uncertainty_edges: np.ndarray
    hist_correct: np.ndarray
    hist_wrong: np.ndarray
    roc_fpr: np.ndarray
    roc_tpr: np.ndarray
    pr_recall: np.ndarray
    pr_precision: np.ndarray
    coverage: np.ndarray
    risk: np.ndarray
    oracle_risk: np.ndarray


@dataclass(frozen=True, eq=False)
class PatchMetrics:
    """Mukhoti & Gal (2018) patch-wise accuracy vs uncertainty, at ``T`` thresholds.

    Attributes:
        patch_size: side ``p`` of the non-overlapping patches.
        n_patches: patches with at least one valid pixel.
        thresholds: ``(T,)`` ascending uncertainty thresholds, bin edges at quantiles of the patch mean
            uncertainty and evenly spaced over the uncertainty range: a patch is certain when its mean uncertainty
            is below.
        certain_fraction: ``(T,)`` share of patches certain at each threshold.
        counts: n_ac, n_au, n_ic, n_iu, p(accurate | certain), p(uncertain | inaccurate) and PAvPU per threshold.
    """

    patch_size: int
    n_patches: int
    thresholds: np.ndarray
    certain_fraction: np.ndarray
    counts: metrics.PatchCounts


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """All numbers and curves of one evaluation.

    Attributes:
        config: what was evaluated.
        class_names: ``C`` names, one per class index.
        n_pixels: valid pixels evaluated (``N``); ``n_errors``: those whose class differs from the reference.
        confusion: ``(C, C)`` int64, rows = reference class, columns = predicted class.
        accuracy: ``trace(confusion) / N``.
        iou: ``(C,)`` per-class ``TP / (TP + FP + FN)``; NaN for a class absent from both rasters.
        mean_iou: mean of the defined IoUs.
        calibration: None without a confidence raster.
        detection: error detection by uncertainty (AUROC, AUPR, AURC, AUSE and their curves).
        patches: PAvPU and its conditional probabilities.
        uncertainty_range: ``(lo, hi)`` of the uncertainty bins.
        reference_resampled: REFERENCE was resampled onto the grid of CLASSES.
    """

    config: EvaluationConfig
    class_names: tuple[str, ...]
    n_pixels: int
    n_errors: int
    confusion: np.ndarray
    accuracy: float
    iou: np.ndarray
    mean_iou: float
    calibration: Calibration | None
    detection: ErrorDetection
    patches: PatchMetrics
    uncertainty_range: tuple[float, float]
    reference_resampled: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def ece(self) -> float | None:
        """The ECE, or None without a confidence raster."""
        return None if self.calibration is None else self.calibration.ece

    @property
    def auroc(self) -> float:
        return self.detection.auroc

    @property
    def aupr(self) -> float:
        return self.detection.aupr

    @property
    def aurc(self) -> float:
        return self.detection.aurc

    @property
    def ause(self) -> float:
        return self.detection.ause

    def to_json(self) -> dict[str, Any]:
        """The numbers and curves as plain, JSON-serialisable values (NaN becomes None)."""
        cal = self.calibration
        det = self.detection
        pat = self.patches
        return {
            "inputs": {
                "classes": self.config.classes_path,
                "uncertainty": self.config.uncertainty_path,
                "confidence": self.config.confidence_path,
                "reference": self.config.reference_path,
                "reference_resampled": self.reference_resampled,
            },
            "class_names": list(self.class_names),
            "n_pixels": int(self.n_pixels),
            "n_errors": int(self.n_errors),
            "accuracy": _number(self.accuracy),
            "mean_iou": _number(self.mean_iou),
            "iou": {name: _number(v) for name, v in zip(self.class_names, self.iou)},
            "confusion_matrix": {"rows": "reference", "columns": "predicted", "values": self.confusion.tolist()},
            "calibration": None
            if cal is None
            else {
                "ece": _number(cal.ece),
                "n_pixels": int(cal.n_pixels),
                "bin_edges": _numbers(cal.bin_edges),
                "counts": cal.counts.tolist(),
                "mean_confidence": _numbers(cal.mean_confidence),
                "accuracy": _numbers(cal.accuracy),
            },
            "error_detection": {
                "auroc": _number(det.auroc),
                "aupr": _number(det.aupr),
                "aurc": _number(det.aurc),
                "aurc_oracle": _number(det.aurc_oracle),
                "aurc_random": _number(det.aurc_random),
                "ause": _number(det.ause),
                "roc": {"fpr": _numbers(det.roc_fpr), "tpr": _numbers(det.roc_tpr)},
                "precision_recall": {"recall": _numbers(det.pr_recall), "precision": _numbers(det.pr_precision)},
                "risk_coverage": {
                    "coverage": _numbers(det.coverage),
                    "risk": _numbers(det.risk),
                    "oracle_risk": _numbers(det.oracle_risk),
                },
                "sparsification": {
                    "fraction_removed": _numbers(1.0 - det.coverage),
                    "error": _numbers(det.risk),
                    "oracle_error": _numbers(det.oracle_risk),
                },
                "uncertainty_histogram": {
                    "edges": _numbers(det.uncertainty_edges),
                    "correct": det.hist_correct.tolist(),
                    "wrong": det.hist_wrong.tolist(),
                },
            },
            "patches": {
                "patch_size": int(pat.patch_size),
                "n_patches": int(pat.n_patches),
                "thresholds": _numbers(pat.thresholds),
                "certain_fraction": _numbers(pat.certain_fraction),
                "n_ac": pat.counts.n_ac.tolist(),
                "n_au": pat.counts.n_au.tolist(),
                "n_ic": pat.counts.n_ic.tolist(),
                "n_iu": pat.counts.n_iu.tolist(),
                "p_accurate_given_certain": _numbers(pat.counts.p_accurate_given_certain),
                "p_uncertain_given_inaccurate": _numbers(pat.counts.p_uncertain_given_inaccurate),
                "pavpu": _numbers(pat.counts.pavpu),
            },
            "uncertainty_range": [float(self.uncertainty_range[0]), float(self.uncertainty_range[1])],
            "notes": list(self.notes),
        }


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _numbers(values: np.ndarray) -> list[float | None]:
    return [_number(v) for v in np.asarray(values, dtype=np.float64).tolist()]


# -- rasters ---------------------------------------------------------------------------------------------------


def _geotransform(dataset: gdal.Dataset) -> tuple[float, ...] | None:
    return dataset.GetGeoTransform(can_return_null=True)


def _same_crs(a: str, b: str) -> bool:
    if not a or not b:
        return True  # a raster without a CRS is taken to share the other's
    srs_a, srs_b = osr.SpatialReference(), osr.SpatialReference()
    srs_a.ImportFromWkt(a)
    srs_b.ImportFromWkt(b)
    return bool(srs_a.IsSame(srs_b))


def _same_grid(base: gdal.Dataset, other: gdal.Dataset) -> bool:
    """Same size and, when both are georeferenced, the same geotransform (to 1e-6 pixel) and CRS."""
    if (base.RasterXSize, base.RasterYSize) != (other.RasterXSize, other.RasterYSize):
        return False
    gt_a, gt_b = _geotransform(base), _geotransform(other)
    if gt_a is None or gt_b is None:
        return True
    tolerance = 1e-6 * max(abs(gt_a[1]), abs(gt_a[5]), 1e-12)
    if not np.allclose(gt_a, gt_b, rtol=0.0, atol=tolerance):
        return False
    return _same_crs(base.GetProjection() or "", other.GetProjection() or "")


def _describe_grid(dataset: gdal.Dataset) -> str:
    gt = _geotransform(dataset)
    where = "no georeferencing" if gt is None else f"origin ({gt[0]:g}, {gt[3]:g}), pixel {gt[1]:g} x {gt[5]:g}"
    return f"{dataset.RasterXSize} x {dataset.RasterYSize} px, {where}"


def _reference_on_grid(classes: gdal.Dataset, reference: gdal.Dataset, path: str) -> tuple[gdal.Dataset, bool]:
    """REFERENCE as is when on the grid of CLASSES, else warped onto it (nearest, in-memory VRT).

    Raises:
        ParameterError: the grids differ and one of them has no georeferencing to resample by.
    """
    if _same_grid(classes, reference):
        return reference, False
    gt = _geotransform(classes)
    if gt is None or _geotransform(reference) is None:
        raise ParameterError(
            "REFERENCE",
            path,
            f"have the grid of CLASSES ({_describe_grid(classes)}) or georeferencing to resample it onto that grid; "
            f"it has {_describe_grid(reference)}",
        )
    if gt[2] != 0.0 or gt[4] != 0.0:
        raise ParameterError("CLASSES", classes.GetDescription(), "be a north-up raster to resample REFERENCE onto it")
    width, height = classes.RasterXSize, classes.RasterYSize
    xs = (gt[0], gt[0] + width * gt[1])
    ys = (gt[3], gt[3] + height * gt[5])
    band = reference.GetRasterBand(1)
    nodata = band.GetNoDataValue()
    options = gdal.WarpOptions(
        format="VRT",
        width=width,
        height=height,
        outputBounds=(min(xs), min(ys), max(xs), max(ys)),
        dstSRS=classes.GetProjection() or None,
        resampleAlg="near",
        dstNodata=nodata if nodata is not None else CLASS_NODATA,
    )
    warped = gdal.Warp("", reference, options=options)
    if warped is None:
        raise ParameterError("REFERENCE", path, f"be resamplable onto the grid of CLASSES ({gdal.GetLastErrorMsg()})")
    return warped, True


@dataclass(frozen=True, eq=False)
class _Block:
    """Rows ``row .. row + h`` of every input: ``(h, W)`` arrays."""

    row: int
    classes: np.ndarray  # int64
    uncertainty: np.ndarray  # float64
    reference: np.ndarray  # int64
    valid: np.ndarray  # bool: CLASSES, UNCERTAINTY and REFERENCE valid
    confidence: np.ndarray | None  # float64
    confidence_valid: np.ndarray | None  # bool: valid and CONFIDENCE valid


def _valid_values(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """Not the band's nodata, and finite for floating types."""
    valid = np.ones(values.shape, dtype=bool)
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.isfinite(values)
    if nodata is not None and not math.isnan(nodata):
        valid &= values != np.asarray(nodata).astype(values.dtype)
    return valid


class _EvaluationRasters:
    """The opened inputs, checked to share the grid of CLASSES, read by row blocks."""

    def __init__(self, config: EvaluationConfig) -> None:
        self.config = config
        self.classes = open_raster("CLASSES", config.classes_path)
        self.width, self.height = self.classes.RasterXSize, self.classes.RasterYSize
        self.uncertainty = open_raster("UNCERTAINTY", config.uncertainty_path)
        self.confidence = open_raster("CONFIDENCE", config.confidence_path) if config.confidence_path else None
        for key, dataset, path in (
            ("UNCERTAINTY", self.uncertainty, config.uncertainty_path),
            ("CONFIDENCE", self.confidence, config.confidence_path),
        ):
            if dataset is not None and not _same_grid(self.classes, dataset):
                raise ParameterError(
                    key,
                    path,
                    f"have the grid of CLASSES ({_describe_grid(self.classes)}); it has {_describe_grid(dataset)}",
                )
        reference = open_raster("REFERENCE", config.reference_path)
        self.reference, self.reference_resampled = _reference_on_grid(self.classes, reference, config.reference_path)
        self._source_reference = reference  # keeps the warped VRT's source alive
        self.nodata = {name: ds.GetRasterBand(1).GetNoDataValue() for name, ds in self._datasets().items()}

    def _datasets(self) -> dict[str, gdal.Dataset]:
        datasets = {"classes": self.classes, "uncertainty": self.uncertainty, "reference": self.reference}
        if self.confidence is not None:
            datasets["confidence"] = self.confidence
        return datasets

    def _read(self, name: str, row: int, rows: int) -> np.ndarray:
        dataset = self._datasets()[name]
        array = dataset.GetRasterBand(1).ReadAsArray(0, row, self.width, rows)
        if array is None:
            raise ParameterError(
                name.upper(),
                dataset.GetDescription(),
                f"be readable (rows {row}..{row + rows - 1}: {gdal.GetLastErrorMsg() or 'GDAL error'})",
            )
        return array

    def uncertainty_blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(row, valid uncertainty values)`` per block of rows (1-D float64)."""
        for row in range(0, self.height, block_rows):
            values = self._read("uncertainty", row, min(block_rows, self.height - row))
            yield row, values[_valid_values(values, self.nodata["uncertainty"])].astype(np.float64)

    def blocks(self, block_rows: int) -> Iterator[_Block]:
        """Every input by blocks of ``block_rows`` rows, with their validity."""
        for row in range(0, self.height, block_rows):
            rows = min(block_rows, self.height - row)
            classes = self._read("classes", row, rows)
            uncertainty = self._read("uncertainty", row, rows)
            reference = self._read("reference", row, rows)
            class_valid = _valid_values(classes, self.nodata["classes"]) & (classes != CLASS_NODATA)
            reference_valid = _valid_values(reference, self.nodata["reference"]) & (reference != CLASS_NODATA)
            _check_labels("CLASSES", self.config.classes_path, classes, class_valid)
            _check_labels("REFERENCE", self.config.reference_path, reference, reference_valid)
            valid = class_valid & reference_valid & _valid_values(uncertainty, self.nodata["uncertainty"])
            confidence = confidence_valid = None
            if self.confidence is not None:
                raw = self._read("confidence", row, rows)
                confidence_valid = valid & _valid_values(raw, self.nodata["confidence"])
                confidence = raw.astype(np.float64)
                outside = confidence_valid & ((confidence < -1e-6) | (confidence > 1.0 + 1e-6))
                if outside.any():
                    raise ParameterError(
                        "CONFIDENCE",
                        self.config.confidence_path,
                        f"hold probabilities in [0, 1]; it has {confidence[outside][0]:g}",
                    )
            yield _Block(
                row=row,
                classes=np.where(class_valid, classes, 0).astype(np.int64),
                uncertainty=np.where(valid, uncertainty, 0.0).astype(np.float64),
                reference=np.where(reference_valid, reference, 0).astype(np.int64),
                valid=valid,
                confidence=confidence,
                confidence_valid=confidence_valid,
            )

    def category_names(self) -> list[str]:
        """Class names stored in CLASSES (category names, else a CLASS_NAMES metadata item), else in REFERENCE."""
        for dataset in (self.classes, self._source_reference):
            band = dataset.GetRasterBand(1)
            names = [str(n) for n in (band.GetCategoryNames() or [])]
            if not any(names):
                listed = band.GetMetadataItem("CLASS_NAMES") or dataset.GetMetadataItem("CLASS_NAMES") or ""
                names = [n.strip() for n in listed.split(",")] if listed else []
            while names and not names[-1]:
                names.pop()
            if names:
                return names[:MAX_CLASSES]
        return []

    def declared_class_count(self) -> int:
        try:
            return int(self.classes.GetMetadataItem("MC_NUM_CLASSES") or 0)
        except ValueError:
            return 0


def _check_labels(key: str, path: str, values: np.ndarray, valid: np.ndarray) -> None:
    """Valid labels must be integers in 0 .. 254."""
    labels = values[valid]
    if labels.size == 0:
        return
    bad = (labels < 0) | (labels >= MAX_CLASSES)
    if np.issubdtype(labels.dtype, np.floating):
        bad |= labels != np.floor(labels)
    if bad.any():
        raise ParameterError(
            key,
            path,
            f"hold class indices 0..254 (255 or the band's nodata = no label); "
            f"it has {labels[bad][0]!r} and no nodata for it",
        )


# -- accumulation ------------------------------------------------------------------------------------------------


class _Accumulator:
    """Counts gathered block by block (see the module docstring)."""

    def __init__(self, config: EvaluationConfig, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.bins = config.uncertainty_bins
        self.calibration_bins = config.calibration_bins
        self.patch = config.pavpu_patch_size
        self.confusion = np.zeros(MAX_CLASSES * MAX_CLASSES, dtype=np.int64)
        self.hist_correct = np.zeros(self.bins, dtype=np.int64)
        self.hist_wrong = np.zeros(self.bins, dtype=np.int64)
        self.cal_counts = np.zeros(self.calibration_bins, dtype=np.int64)
        self.cal_confidence = np.zeros(self.calibration_bins, dtype=np.float64)
        self.cal_correct = np.zeros(self.calibration_bins, dtype=np.int64)
        self.patch_accurate = np.zeros(self.bins, dtype=np.int64)
        self.patch_inaccurate = np.zeros(self.bins, dtype=np.int64)

    def add(self, block: _Block) -> None:
        valid = block.valid
        correct = valid & (block.classes == block.reference)
        self.confusion += np.bincount(
            (block.reference[valid] * MAX_CLASSES + block.classes[valid]).ravel(), minlength=MAX_CLASSES * MAX_CLASSES
        )
        bins = metrics.bin_index(block.uncertainty[valid], self.lo, self.hi, self.bins)
        is_correct = correct[valid]
        self.hist_correct += np.bincount(bins[is_correct], minlength=self.bins)
        self.hist_wrong += np.bincount(bins[~is_correct], minlength=self.bins)
        if block.confidence is not None and block.confidence_valid is not None:
            conf = np.clip(block.confidence[block.confidence_valid], 0.0, 1.0)
            cal_bins = np.clip(np.floor(conf * self.calibration_bins), 0, self.calibration_bins - 1).astype(np.int64)
            self.cal_counts += np.bincount(cal_bins, minlength=self.calibration_bins)
            self.cal_confidence += np.bincount(cal_bins, weights=conf, minlength=self.calibration_bins)
            self.cal_correct += np.bincount(cal_bins[correct[block.confidence_valid]], minlength=self.calibration_bins)
        self._add_patches(valid, correct, block.uncertainty)

    def _add_patches(self, valid: np.ndarray, correct: np.ndarray, uncertainty: np.ndarray) -> None:
        """Patch sums over ``p x p`` cells; the block starts on a patch boundary (block_rows is a multiple of p)."""
        p = self.patch
        rows, cols = valid.shape
        pad = ((0, (-rows) % p), (0, (-cols) % p))
        shape = ((rows + pad[0][1]) // p, p, (cols + pad[1][1]) // p, p)

        def patch_sum(array: np.ndarray) -> np.ndarray:
            return np.pad(array, pad).reshape(shape).sum(axis=(1, 3))

        n_valid = patch_sum(valid.astype(np.int64))
        n_correct = patch_sum(correct.astype(np.int64))
        u_sum = patch_sum(np.where(valid, uncertainty, 0.0))
        has = n_valid > 0
        mean_u = u_sum[has] / n_valid[has]
        accurate = 2 * n_correct[has] >= n_valid[has]  # accuracy >= 0.5, in integers
        bins = metrics.bin_index(mean_u, self.lo, self.hi, self.bins)
        self.patch_accurate += np.bincount(bins[accurate], minlength=self.bins)
        self.patch_inaccurate += np.bincount(bins[~accurate], minlength=self.bins)


def _uncertainty_range(
    rasters: _EvaluationRasters, block_rows: int, tick: Callable[[int], None], is_cancelled: Callable[[], bool] | None
) -> tuple[float, float]:
    """``(lo, hi)``: ``lo = min(0, min u)``, ``hi = max u`` over valid uncertainty pixels (``hi = lo + 1`` when
    all are equal)."""
    lo, hi = math.inf, -math.inf
    for row, values in rasters.uncertainty_blocks(block_rows):
        if is_cancelled is not None and is_cancelled():
            raise InferenceCancelled("Evaluation cancelled.")
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        tick(row)
    if math.isinf(lo):
        raise ParameterError("UNCERTAINTY", rasters.config.uncertainty_path, "have valid (not nodata) pixels")
    lo = min(lo, 0.0)
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _class_names(config: EvaluationConfig, rasters: _EvaluationRasters, confusion: np.ndarray) -> tuple[str, ...]:
    """``C`` names: ``C`` covers the given or stored names, MC_NUM_CLASSES and every label present."""
    given = list(config.class_names) if config.class_names else rasters.category_names()
    present = np.flatnonzero(confusion.sum(axis=0) + confusion.sum(axis=1))
    count = max(len(given), rasters.declared_class_count(), int(present.max()) + 1 if present.size else 1)
    return tuple(given[i] if i < len(given) and given[i] else f"class {i}" for i in range(count))


def evaluate_uncertainty(
    config: EvaluationConfig,
    progress: Callable[[float], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> EvaluationResult:
    """Evaluate a class raster and its uncertainty against reference labels (see the module docstring).

    Args:
        config: the inputs and the binning.
        progress: called with a percentage 0..100.
        is_cancelled: polled between blocks; True stops the run.

    Returns:
        The numbers and curves.

    Raises:
        ParameterError: an input is missing or unreadable, on another grid without georeferencing, holds invalid
            labels or probabilities, or no pixel is valid in all of CLASSES, UNCERTAINTY and REFERENCE.
        InferenceCancelled: ``is_cancelled`` returned True.

    Warns:
        ReferenceResampledWarning: REFERENCE was on another grid and was resampled onto that of CLASSES.
    """
    rasters = _EvaluationRasters(config)
    notes: list[str] = []
    if rasters.reference_resampled:
        message = (
            f"REFERENCE is on another grid ({_describe_grid(rasters._source_reference)}) than CLASSES "
            f"({_describe_grid(rasters.classes)}); it was resampled by nearest neighbour onto the grid of "
            "CLASSES."
        )
        notes.append(message)
        warnings.warn(ReferenceResampledWarning(message), stacklevel=2)
    p = config.pavpu_patch_size
    block_rows = max(p, config.block_rows // p * p)
    height = max(rasters.height, 1)

    def tick(start: float, share: float) -> Callable[[int], None]:
        return lambda row: progress(start + share * min(1.0, (row + block_rows) / height)) if progress else None

    lo, hi = _uncertainty_range(rasters, block_rows, tick(0.0, 15.0), is_cancelled)
    accumulator = _Accumulator(config, lo, hi)
    main_tick = tick(15.0, 80.0)
    for block in rasters.blocks(block_rows):
        if is_cancelled is not None and is_cancelled():
            raise InferenceCancelled("Evaluation cancelled.")
        accumulator.add(block)
        main_tick(block.row)
    result = _result(config, rasters, accumulator, lo, hi, tuple(notes))
    if progress is not None:
        progress(100.0)
    return result


def _result(
    config: EvaluationConfig,
    rasters: _EvaluationRasters,
    acc: _Accumulator,
    lo: float,
    hi: float,
    notes: tuple[str, ...],
) -> EvaluationResult:
    full = acc.confusion.reshape(MAX_CLASSES, MAX_CLASSES)
    n_pixels = int(full.sum())
    if n_pixels == 0:
        raise ParameterError(
            "REFERENCE",
            config.reference_path,
            "have labels where CLASSES and UNCERTAINTY are valid (no pixel is valid in all three)",
        )
    names = _class_names(config, rasters, full)
    count = len(names)
    confusion = full[:count, :count].copy()
    true_positive = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    iou = np.divide(true_positive, union, out=np.full(count, np.nan), where=union > 0)
    accuracy = float(true_positive.sum() / n_pixels)
    n_errors = n_pixels - int(true_positive.sum())
    return EvaluationResult(
        config=config,
        class_names=names,
        n_pixels=n_pixels,
        n_errors=n_errors,
        confusion=confusion,
        accuracy=accuracy,
        iou=iou,
        mean_iou=float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan,
        calibration=_calibration(config, acc) if rasters.confidence is not None else None,
        detection=_detection(config, acc, lo, hi),
        patches=_patches(config, acc, lo, hi),
        uncertainty_range=(lo, hi),
        reference_resampled=rasters.reference_resampled,
        notes=notes,
    )


def _calibration(config: EvaluationConfig, acc: _Accumulator) -> Calibration:
    counts = acc.cal_counts
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_confidence = np.where(counts > 0, acc.cal_confidence / counts, np.nan)
        accuracy = np.where(counts > 0, acc.cal_correct / counts, np.nan)
    return Calibration(
        ece=metrics.expected_calibration_error(counts, acc.cal_confidence, acc.cal_correct),
        bin_edges=np.linspace(0.0, 1.0, config.calibration_bins + 1),
        counts=counts.copy(),
        mean_confidence=mean_confidence,
        accuracy=accuracy,
        n_pixels=int(counts.sum()),
    )


def _detection(config: EvaluationConfig, acc: _Accumulator, lo: float, hi: float) -> ErrorDetection:
    wrong, correct = acc.hist_wrong, acc.hist_correct
    n_wrong, n_correct = int(wrong.sum()), int(correct.sum())
    n = n_wrong + n_correct
    fpr, tpr = metrics.roc_curve(wrong, correct)
    recall, precision = metrics.precision_recall_curve(wrong, correct)
    coverage = np.arange(1, config.curve_points + 1) / config.curve_points
    retained = np.maximum(1, np.round(coverage * n))
    aurc = metrics.binned_aurc(wrong, correct)
    aurc_oracle = metrics.oracle_aurc(n_wrong, n_correct)
    return ErrorDetection(
        auroc=metrics.binned_auroc(wrong, correct),
        aupr=metrics.binned_average_precision(wrong, correct),
        aurc=aurc,
        aurc_oracle=aurc_oracle,
        aurc_random=n_wrong / n,
        ause=aurc - aurc_oracle,
        uncertainty_edges=np.linspace(lo, hi, config.uncertainty_bins + 1),
        hist_correct=correct.copy(),
        hist_wrong=wrong.copy(),
        roc_fpr=fpr,
        roc_tpr=tpr,
        pr_recall=recall,
        pr_precision=precision,
        coverage=retained / n,
        risk=metrics.expected_risk(wrong, correct, retained),
        oracle_risk=metrics.oracle_risk(n_wrong, n_correct, retained),
    )


def _patches(config: EvaluationConfig, acc: _Accumulator, lo: float, hi: float) -> PatchMetrics:
    per_bin = acc.patch_accurate + acc.patch_inaccurate
    n_patches = int(per_bin.sum())
    bins = config.uncertainty_bins
    even = np.round(np.arange(1, config.pavpu_even_thresholds + 1) * bins / (config.pavpu_even_thresholds + 1))
    edges = (
        np.union1d(
            metrics.quantile_edges(per_bin, np.asarray(config.pavpu_quantiles)),
            np.clip(even, 1, bins - 1).astype(np.int64),
        )
        if n_patches
        else np.zeros(0, dtype=np.int64)
    )
    counts = metrics.patch_counts(acc.patch_accurate, acc.patch_inaccurate, edges)
    below = np.concatenate(([0], np.cumsum(per_bin)))[edges]
    return PatchMetrics(
        patch_size=config.pavpu_patch_size,
        n_patches=n_patches,
        thresholds=lo + edges * (hi - lo) / config.uncertainty_bins,
        certain_fraction=below / max(n_patches, 1),
        counts=counts,
    )

"""The input rasters of an evaluation: opened, checked to share one grid, read by blocks of rows.

CLASSES defines the grid. UNCERTAINTY and CONFIDENCE must be on it (same size and, when both are georeferenced,
the same geotransform to 1e-6 pixel and the same CRS). REFERENCE on another grid is resampled by nearest
neighbour onto the grid of CLASSES with ``gdal.Warp`` into an in-memory VRT (:func:`reference_on_grid`); the
evaluation then issues a :class:`ReferenceResampledWarning`.

:meth:`EvaluationRasters.blocks` yields :class:`RowBlock` s: every input's rows ``row .. row + h`` with the
validity of each pixel. Nothing holds a full raster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from ..errors import ParameterError, RasterIOError
from ..io.conventions import CLASS_NODATA, MAX_CLASSES
from ..io.grids import describe_grid, same_grid
from ..io.raster_io import open_raster
from .config import EvaluationConfig

__all__ = [
    "ReferenceResampledWarning",
    "RowBlock",
    "EvaluationRasters",
    "reference_on_grid",
]


class ReferenceResampledWarning(UserWarning):
    """REFERENCE was on another grid than CLASSES and was resampled (nearest neighbour) onto it."""


# -- grids -------------------------------------------------------------------------------------------------------


def reference_on_grid(classes: gdal.Dataset, reference: gdal.Dataset, path: str) -> tuple[gdal.Dataset, bool]:
    """REFERENCE as is when on the grid of CLASSES, else warped onto it (nearest, in-memory VRT).

    Args:
        classes: the CLASSES dataset, whose grid is the evaluation's.
        reference: the REFERENCE dataset.
        path: REFERENCE's path, for messages.

    Returns:
        ``(dataset on the grid of CLASSES, whether it was resampled)``.

    Raises:
        ParameterError: the grids differ and one of them has no georeferencing to resample by, CLASSES is
            rotated, or GDAL cannot resample REFERENCE (e.g. no transformation between the two CRS).
    """
    if same_grid(classes, reference):
        return reference, False
    gt = classes.GetGeoTransform(can_return_null=True)
    if gt is None or reference.GetGeoTransform(can_return_null=True) is None:
        raise ParameterError(
            "REFERENCE",
            path,
            f"have the grid of CLASSES ({describe_grid(classes)}) or georeferencing to resample it onto that grid; "
            f"it has {describe_grid(reference)}",
        )
    if gt[2] != 0.0 or gt[4] != 0.0:
        raise ParameterError("CLASSES", classes.GetDescription(), "be a north-up raster to resample REFERENCE onto it")
    width, height = classes.RasterXSize, classes.RasterYSize
    xs = (gt[0], gt[0] + width * gt[1])
    ys = (gt[3], gt[3] + height * gt[5])
    nodata = reference.GetRasterBand(1).GetNoDataValue()
    options = gdal.WarpOptions(
        format="VRT",
        width=width,
        height=height,
        outputBounds=(min(xs), min(ys), max(xs), max(ys)),
        dstSRS=classes.GetProjection() or None,
        resampleAlg="near",
        dstNodata=nodata if nodata is not None else CLASS_NODATA,
    )
    try:
        warped = gdal.Warp("", reference, options=options)
    except RuntimeError:  # GDAL's Python exceptions may be on for the whole process
        warped = None
    if warped is None:
        raise ParameterError("REFERENCE", path, f"be resamplable onto the grid of CLASSES ({gdal.GetLastErrorMsg()})")
    return warped, True


# -- pixels ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RowBlock:
    """Rows ``row .. row + h`` of every input on the grid of CLASSES: ``(h, W)`` arrays.

    Attributes:
        row: first row of the block.
        classes: ``(h, W)`` int64 predicted class (0 where not a valid class).
        uncertainty: ``(h, W)`` float64 uncertainty (0 where not ``valid``).
        reference: ``(h, W)`` int64 reference class (0 where not a valid label).
        valid: ``(h, W)`` bool, CLASSES, UNCERTAINTY and REFERENCE all valid: the pixels evaluated.
        confidence: ``(h, W)`` float64 confidence as read, or None without CONFIDENCE.
        confidence_valid: ``(h, W)`` bool, ``valid`` and CONFIDENCE valid, or None without CONFIDENCE.
    """

    row: int
    classes: np.ndarray
    uncertainty: np.ndarray
    reference: np.ndarray
    valid: np.ndarray
    confidence: np.ndarray | None
    confidence_valid: np.ndarray | None


def _valid_values(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """``values.shape`` bool: not the band's nodata, and finite for floating types."""
    valid = np.ones(values.shape, dtype=bool)
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.isfinite(values)
    if nodata is not None and not math.isnan(nodata):
        valid &= values != np.asarray(nodata).astype(values.dtype)
    return valid


def _check_labels(key: str, path: str, values: np.ndarray, valid: np.ndarray) -> None:
    """Valid labels must be integers in 0 .. 254.

    Raises:
        ParameterError: naming ``key``, with the first bad label.
    """
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


class EvaluationRasters:
    """The opened inputs, checked to share the grid of CLASSES, read by row blocks.

    Args:
        config: the raster paths.

    Raises:
        ParameterError: a raster is missing or unreadable, UNCERTAINTY or CONFIDENCE is on another grid than
            CLASSES, or REFERENCE is and cannot be resampled onto it (see :func:`reference_on_grid`).
    """

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
            if dataset is not None and not same_grid(self.classes, dataset):
                raise ParameterError(
                    key,
                    path,
                    f"have the grid of CLASSES ({describe_grid(self.classes)}); it has {describe_grid(dataset)}",
                )
        reference = open_raster("REFERENCE", config.reference_path)
        self.reference, self.reference_resampled = reference_on_grid(self.classes, reference, config.reference_path)
        self._source_reference = reference  # keeps the warped VRT's source alive
        self.nodata = {name: ds.GetRasterBand(1).GetNoDataValue() for name, ds in self._datasets().items()}

    def resampling_note(self) -> str | None:
        """A sentence saying how REFERENCE was resampled onto the grid of CLASSES; None when it was not."""
        if not self.reference_resampled:
            return None
        return (
            f"REFERENCE is on another grid ({describe_grid(self._source_reference)}) than CLASSES "
            f"({describe_grid(self.classes)}); it was resampled by nearest neighbour onto the grid of CLASSES."
        )

    def _datasets(self) -> dict[str, gdal.Dataset]:
        datasets = {"classes": self.classes, "uncertainty": self.uncertainty, "reference": self.reference}
        if self.confidence is not None:
            datasets["confidence"] = self.confidence
        return datasets

    def _read(self, name: str, row: int, rows: int) -> np.ndarray:
        """``(rows, W)`` values of input ``name`` from row ``row``, in the band's data type.

        Raises:
            RasterIOError: GDAL cannot read those rows (a damaged file, a lost network source ...); the message
                names the raster's key, its path and the rows.
        """
        dataset = self._datasets()[name]  # no band kept in a local: a band outliving its dataset crashes GDAL
        try:
            array = dataset.GetRasterBand(1).ReadAsArray(0, row, self.width, rows)
        except RuntimeError:  # GDAL's Python exceptions may be on for the whole process
            array = None
        if array is None:
            path = getattr(self.config, f"{name}_path")
            raise RasterIOError(
                f"{name.upper()}: reading rows {row}..{row + rows - 1} of '{path}' failed: "
                f"{gdal.GetLastErrorMsg() or 'unknown GDAL error'}."
            )
        return array

    def uncertainty_blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(row, valid uncertainty values)`` per block of rows (1-D float64)."""
        for row in range(0, self.height, block_rows):
            values = self._read("uncertainty", row, min(block_rows, self.height - row))
            yield row, values[_valid_values(values, self.nodata["uncertainty"])].astype(np.float64)

    def _labels(self, name: str, row: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, valid)`` of CLASSES or REFERENCE: valid = not nodata and not 255; labels checked."""
        values = self._read(name, row, rows)
        valid = _valid_values(values, self.nodata[name]) & (values != CLASS_NODATA)
        _check_labels(name.upper(), getattr(self.config, f"{name}_path"), values, valid)
        return values, valid

    def _confidence(self, row: int, rows: int, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(confidence as float64, valid & confidence valid)``; raises unless valid values are in ``[0, 1]``."""
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
        return confidence, confidence_valid

    def blocks(self, block_rows: int) -> Iterator[RowBlock]:
        """Every input by blocks of ``block_rows`` rows, with their validity.

        Raises:
            ParameterError: CLASSES or REFERENCE holds a label outside 0..254, or CONFIDENCE a value outside
                ``[0, 1]``.
        """
        for row in range(0, self.height, block_rows):
            rows = min(block_rows, self.height - row)
            classes, class_valid = self._labels("classes", row, rows)
            uncertainty = self._read("uncertainty", row, rows)
            reference, reference_valid = self._labels("reference", row, rows)
            valid = class_valid & reference_valid & _valid_values(uncertainty, self.nodata["uncertainty"])
            confidence = confidence_valid = None
            if self.confidence is not None:
                confidence, confidence_valid = self._confidence(row, rows, valid)
            yield RowBlock(
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
        """The class count CLASSES declares in its MC_NUM_CLASSES metadata item (0 when absent or not a number)."""
        try:
            return int(self.classes.GetMetadataItem("MC_NUM_CLASSES") or 0)
        except ValueError:
            return 0

"""Known-answer tests of the evaluation (core/evaluation/).

Every expected value is computed here independently of the streamed, binned implementation: by hand for tiny
rasters, or by brute force over the pixels (all pairs for AUROC, sorting for AURC / AUSE, one threshold per
distinct value for AUPR, loops over patches for PAvPU). Test uncertainties are chosen so that distinct values
fall into distinct bins (e.g. multiples of 1/64 or ranks / 2000 with 2048 bins), which is where the binned
metrics are exact; ties are real ties of equal values.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from core_fixtures import GEOTRANSFORM, write_geotiff
from osgeo import gdal, osr

from mc_uncertainty_plugin.core import Cancelled, EvaluationCancelled, InferenceCancelled, RasterIOError
from mc_uncertainty_plugin.core.errors import ParameterError
from mc_uncertainty_plugin.core.evaluation import metrics
from mc_uncertainty_plugin.core.evaluation.config import EvaluationConfig, parse_class_names
from mc_uncertainty_plugin.core.evaluation.evaluation import evaluate_uncertainty
from mc_uncertainty_plugin.core.evaluation.outputs import evaluate_to_files, write_evaluation_outputs
from mc_uncertainty_plugin.core.evaluation.rasters import ReferenceResampledWarning

# -- helpers ---------------------------------------------------------------------------------------------------


def write_inputs(
    folder: Path,
    classes: np.ndarray,
    uncertainty: np.ndarray,
    reference: np.ndarray,
    confidence: np.ndarray | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Write the rasters (classes nodata 255, float32 uncertainty) and return EvaluationConfig kwargs."""
    paths = {
        "classes_path": write_geotiff(folder / "classes.tif", classes.astype(np.uint8), nodata=255),
        "uncertainty_path": write_geotiff(folder / "uncertainty.tif", uncertainty.astype(np.float32)),
        "reference_path": write_geotiff(folder / "reference.tif", reference.astype(np.uint8)),
    }
    if confidence is not None:
        paths["confidence_path"] = write_geotiff(folder / "confidence.tif", confidence.astype(np.float32))
    return {**paths, **kwargs}


def evaluate(
    folder: Path,
    classes: np.ndarray,
    uncertainty: np.ndarray,
    reference: np.ndarray,
    confidence: np.ndarray | None = None,
    **kwargs: Any,
):
    return evaluate_uncertainty(
        EvaluationConfig(**write_inputs(folder, classes, uncertainty, reference, confidence, **kwargs))
    )


def scene(shape: tuple[int, int], seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference, prediction (about 30 % wrong) and an informative but imperfect uncertainty.

    ``ties``: uncertainties are multiples of 1/64 (many ties); else distinct ranks / 2000.
    """
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 3, shape)
    wrong = rng.random(shape) < 0.3
    prediction = np.where(wrong, (reference + rng.integers(1, 3, shape)) % 3, reference)
    if ties:
        uncertainty = (rng.integers(0, 48, shape) + 16 * wrong) / 64.0
    else:
        score = rng.random(shape) + 0.5 * wrong
        uncertainty = np.argsort(np.argsort(score.ravel())).reshape(shape) / 2000.0
    return reference, prediction, uncertainty.astype(np.float32)


def brute_auroc(u: np.ndarray, wrong: np.ndarray) -> float:
    diff = u[wrong][:, None].astype(np.float64) - u[~wrong][None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def brute_average_precision(u: np.ndarray, wrong: np.ndarray) -> float:
    ap, previous_recall = 0.0, 0.0
    for threshold in np.unique(u)[::-1]:
        flagged = u >= threshold
        tp = np.sum(flagged & wrong)
        recall = tp / wrong.sum()
        ap += (recall - previous_recall) * tp / flagged.sum()
        previous_recall = recall
    return float(ap)


def brute_risks(order_errors: np.ndarray) -> np.ndarray:
    """Risk of the k first pixels, k = 1..N, for errors listed in retention order."""
    return np.cumsum(order_errors) / np.arange(1, order_errors.size + 1)


def assert_json_close(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_json_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_json_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


# -- accuracy, IoU ---------------------------------------------------------------------------------------------


def test_accuracy_and_iou_from_a_hand_counted_confusion_matrix(tmp_path: Path) -> None:
    reference = np.array([[0, 0, 1, 1], [2, 2, 0, 1]])
    classes = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    uncertainty = np.full(classes.shape, 0.5)
    result = evaluate(tmp_path, classes, uncertainty, reference, class_names=("a", "b", "c", "unused"))
    # rows: reference 0, 1, 2; columns: predicted — counted by hand
    expected = [[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert result.confusion.tolist() == expected
    assert result.n_pixels == 8 and result.n_errors == 3
    assert result.accuracy == pytest.approx(5 / 8)
    # IoU = TP / (TP + FP + FN): a 2/(2+1+1), b 2/(2+1+1), c 1/(1+1+1); "unused" is absent from both rasters
    np.testing.assert_allclose(result.iou[:3], [0.5, 0.5, 1 / 3])
    assert math.isnan(result.iou[3])
    assert result.mean_iou == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert result.class_names == ("a", "b", "c", "unused")
    assert result.to_json()["iou"]["unused"] is None


def test_class_names_default_to_the_class_rasters_categories(tmp_path: Path) -> None:
    from osgeo import gdal

    config = write_inputs(tmp_path, np.array([[0, 1]]), np.array([[0.1, 0.2]]), np.array([[0, 1]]))
    dataset = gdal.Open(config["classes_path"], gdal.GA_Update)
    dataset.GetRasterBand(1).SetCategoryNames(["water", "forest", "urban"])
    dataset = None
    result = evaluate_uncertainty(EvaluationConfig(**config))
    assert result.class_names == ("water", "forest", "urban")
    assert parse_class_names(" a, b ,c") == ("a", "b", "c") and parse_class_names(" ") is None


# -- calibration -----------------------------------------------------------------------------------------------


def test_ece_and_reliability_by_hand(tmp_path: Path) -> None:
    confidence = np.array([[0.95, 0.90, 0.62, 0.65, 0.30, 0.97]])
    correct = np.array([[1, 0, 1, 1, 0, 1]], dtype=bool)
    reference = np.zeros(confidence.shape, dtype=int)
    classes = np.where(correct, 0, 1)
    result = evaluate(tmp_path, classes, 1 - confidence, reference, confidence)
    # 15 bins of width 1/15: 0.95, 0.97 -> bin 14 (acc 1, conf 0.96); 0.90 -> 13 (acc 0); 0.62, 0.65 -> 9
    # (acc 1, conf 0.635); 0.30 -> 4 (acc 0). ECE = (2*0.04 + 0.90 + 2*0.365 + 0.30) / 6
    assert result.ece == pytest.approx((2 * 0.04 + 0.90 + 2 * 0.365 + 0.30) / 6, abs=1e-6)
    cal = result.calibration
    assert np.flatnonzero(cal.counts).tolist() == [4, 9, 13, 14]
    assert cal.counts[[4, 9, 13, 14]].tolist() == [1, 2, 1, 2]
    np.testing.assert_allclose(cal.accuracy[[4, 9, 13, 14]], [0, 1, 0, 1])
    np.testing.assert_allclose(cal.mean_confidence[[9, 14]], [0.635, 0.96], atol=1e-6)
    assert np.isnan(cal.accuracy[0])


def test_no_confidence_raster_means_no_calibration(tmp_path: Path) -> None:
    reference, classes, uncertainty = scene((6, 7), seed=3, ties=True)
    result = evaluate(tmp_path, classes, uncertainty, reference)
    assert result.calibration is None and result.ece is None
    assert result.to_json()["calibration"] is None


def test_confidence_outside_0_1_is_refused(tmp_path: Path) -> None:
    confidence = np.array([[0.5, 1.5]])
    with pytest.raises(ParameterError, match=r"^CONFIDENCE must hold probabilities in \[0, 1\]"):
        evaluate(tmp_path, np.array([[0, 1]]), np.array([[0.1, 0.2]]), np.array([[0, 1]]), confidence)


# -- error detection -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [True, False])
def test_auroc_and_aupr_equal_brute_force(tmp_path: Path, ties: bool) -> None:
    reference, classes, uncertainty = scene((40, 30), seed=1, ties=ties)
    result = evaluate(tmp_path, classes, uncertainty, reference)
    wrong = classes != reference
    assert result.n_errors == wrong.sum()
    assert result.auroc == pytest.approx(brute_auroc(uncertainty, wrong), abs=1e-12)
    assert result.aupr == pytest.approx(brute_average_precision(uncertainty, wrong), abs=1e-12)
    assert 0.6 < result.auroc < 0.99  # informative, not perfect: the test data can tell a wrong sign
    # the ROC curve's trapezoidal area is the AUROC
    det = result.detection
    assert np.trapz(det.roc_tpr, det.roc_fpr) == pytest.approx(result.auroc, abs=1e-12)


def test_aurc_ause_and_curves_equal_brute_force_without_ties(tmp_path: Path) -> None:
    reference, classes, uncertainty = scene((40, 30), seed=2, ties=False)
    n = uncertainty.size
    result = evaluate(tmp_path, classes, uncertainty, reference, curve_points=n)
    wrong = (classes != reference).ravel()
    risks = brute_risks(wrong[np.argsort(uncertainty.ravel(), kind="stable")])
    oracle = brute_risks(np.sort(wrong))  # correct pixels (False) kept first
    det = result.detection
    assert det.aurc == pytest.approx(risks.mean(), abs=1e-12)
    assert det.aurc_oracle == pytest.approx(oracle.mean(), abs=1e-12)
    # sparsification: error of what remains after removing the f most uncertain, minus the oracle's, averaged
    assert det.ause == pytest.approx(np.mean(risks - oracle), abs=1e-12)
    assert det.aurc_random == pytest.approx(wrong.mean())
    np.testing.assert_allclose(det.coverage, np.arange(1, n + 1) / n)
    np.testing.assert_allclose(det.risk, risks, atol=1e-12)
    np.testing.assert_allclose(det.oracle_risk, oracle, atol=1e-12)


def test_aurc_with_ties_is_the_mean_over_orders_of_tied_pixels(tmp_path: Path) -> None:
    uncertainty = np.array([[0.1, 0.3, 0.3, 0.3, 0.5, 0.5, 0.7, 0.2]])
    wrong = np.array([[0, 1, 0, 0, 1, 0, 1, 0]], dtype=bool)
    reference = np.zeros(uncertainty.shape, dtype=int)
    result = evaluate(tmp_path, wrong.astype(int), uncertainty, reference, curve_points=8)
    # every order of the pixels consistent with the uncertainty: 3! x 2! orders of the tied groups
    u, e = uncertainty.ravel(), wrong.ravel()
    groups = [np.flatnonzero(u == value) for value in np.unique(u)]
    all_risks = [
        brute_risks(e[np.concatenate(perm)])
        for perm in itertools.product(*[list(itertools.permutations(g)) for g in groups])
    ]
    assert len(all_risks) == 12
    mean_risks = np.mean(all_risks, axis=0)
    assert result.aurc == pytest.approx(mean_risks.mean(), abs=1e-12)
    np.testing.assert_allclose(result.detection.risk, mean_risks, atol=1e-12)
    oracle = brute_risks(np.sort(e)).mean()
    assert result.ause == pytest.approx(mean_risks.mean() - oracle, abs=1e-12)


def test_perfect_and_reversed_uncertainty(tmp_path: Path) -> None:
    reference, classes, _ = scene((10, 10), seed=4, ties=True)
    wrong = classes != reference
    perfect = evaluate(tmp_path, classes, np.where(wrong, 0.9, 0.1), reference)
    assert perfect.auroc == 1.0 and perfect.aupr == 1.0 and perfect.ause == pytest.approx(0.0, abs=1e-15)
    reversed_ = evaluate(tmp_path, classes, np.where(wrong, 0.1, 0.9), reference)
    assert reversed_.auroc == 0.0 and reversed_.aupr == pytest.approx(wrong.mean())


def test_harmonic_difference_matches_exact_sums() -> None:
    for a, b in [(0, 0), (0, 5), (3, 40), (10, 10_000), (1000, 1070), (12_345, 98_765)]:
        assert metrics.harmonic_difference(a, b) == pytest.approx(
            math.fsum(1 / i for i in range(a + 1, b + 1)), rel=1e-13, abs=1e-15
        )


# -- PAvPU -----------------------------------------------------------------------------------------------------


def test_pavpu_counts_four_hand_built_patches(tmp_path: Path) -> None:
    """8x8 raster, 4x4 patches: A all right (u 0.1); B 6 of 16 wrong (u 0.5); C 12 wrong (u 0.8); D 8 wrong,
    accuracy exactly 0.5, so accurate (u 0.2 and 0.4, mean 0.3)."""
    reference = np.zeros((8, 8), dtype=int)
    wrong = np.zeros((8, 8), dtype=bool)
    uncertainty = np.zeros((8, 8))
    uncertainty[:4, :4] = 0.1
    wrong[:4, 4:].flat[:6] = True
    uncertainty[:4, 4:] = 0.5
    wrong[4:, :4].flat[:12] = True
    uncertainty[4:, :4] = 0.8
    wrong[4:, 4:].flat[:8] = True
    uncertainty[4:, 4:] = np.where(np.arange(16).reshape(4, 4) % 2, 0.2, 0.4)
    result = evaluate(tmp_path, wrong.astype(int), uncertainty, reference)
    pat = result.patches
    assert pat.n_patches == 4
    patches = {"A": (True, 0.1), "B": (True, 0.5), "C": (False, 0.8), "D": (True, 0.3)}
    for i, threshold in enumerate(pat.thresholds):
        certain = {k: mean < threshold for k, (_, mean) in patches.items()}
        n_ac = sum(acc and certain[k] for k, (acc, _) in patches.items())
        n_au = sum(acc and not certain[k] for k, (acc, _) in patches.items())
        n_ic = sum(not acc and certain[k] for k, (acc, _) in patches.items())
        n_iu = sum(not acc and not certain[k] for k, (acc, _) in patches.items())
        got = pat.counts
        assert (got.n_ac[i], got.n_au[i], got.n_ic[i], got.n_iu[i]) == (n_ac, n_au, n_ic, n_iu), threshold
        assert got.pavpu[i] == pytest.approx((n_ac + n_iu) / 4)
    # a threshold between 0.3 and 0.5: A, D certain and accurate; B uncertain; C uncertain and inaccurate
    middle = np.flatnonzero((pat.thresholds > 0.3) & (pat.thresholds <= 0.5))
    assert middle.size
    i = middle[0]
    assert (pat.counts.n_ac[i], pat.counts.n_au[i], pat.counts.n_ic[i], pat.counts.n_iu[i]) == (2, 1, 0, 1)
    assert pat.counts.pavpu[i] == 0.75
    assert pat.counts.p_accurate_given_certain[i] == 1.0 and pat.counts.p_uncertain_given_inaccurate[i] == 1.0
    # thresholds are inner bin edges: C (mean 0.8 = the largest uncertainty) is never certain
    assert pat.thresholds.max() < 0.8 and (pat.counts.n_iu == 1).all()


def brute_patches(valid: np.ndarray, correct: np.ndarray, u: np.ndarray, p: int) -> list[tuple[bool, float]]:
    patches = []
    for r in range(0, valid.shape[0], p):
        for c in range(0, valid.shape[1], p):
            v = valid[r : r + p, c : c + p]
            if v.any():
                patches.append((correct[r : r + p, c : c + p][v].mean() >= 0.5, u[r : r + p, c : c + p][v].mean()))
    return patches


def test_pavpu_equals_patch_loop_with_nodata_and_cut_patches(tmp_path: Path) -> None:
    reference, classes, uncertainty = scene((10, 9), seed=5, ties=True)  # 3x3 patches of 4, cut at the edges
    classes[0, :3] = 255
    classes[5:8, 4] = 255
    result = evaluate(tmp_path, classes, uncertainty, reference, pavpu_patch_size=4)
    valid = classes != 255
    patches = brute_patches(valid, valid & (classes == reference), uncertainty.astype(np.float64), 4)
    pat = result.patches
    assert pat.n_patches == len(patches) == 9
    for i, t in enumerate(pat.thresholds):
        n_ac = sum(a and m < t for a, m in patches)
        n_ic = sum((not a) and m < t for a, m in patches)
        n_iu = sum((not a) and m >= t for a, m in patches)
        assert (pat.counts.n_ac[i], pat.counts.n_ic[i], pat.counts.n_iu[i]) == (n_ac, n_ic, n_iu)
        expected_p = n_iu / (n_ic + n_iu) if n_ic + n_iu else math.nan
        np.testing.assert_equal(pat.counts.p_uncertain_given_inaccurate[i], expected_p)


# -- streaming, validity, grids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("patch, block_rows", [(4, 4), (3, 7), (1, 1)])
def test_block_wise_equals_one_block(tmp_path: Path, patch: int, block_rows: int) -> None:
    reference, classes, uncertainty = scene((70, 23), seed=6, ties=False)
    classes[13:17, 2:9] = 255
    confidence = 1.0 - uncertainty
    config = write_inputs(tmp_path, classes, uncertainty, reference, confidence, pavpu_patch_size=patch)
    whole = evaluate_uncertainty(EvaluationConfig(**config))
    blocks = evaluate_uncertainty(EvaluationConfig(**config, block_rows=block_rows))
    assert_json_close(whole.to_json(), blocks.to_json())
    assert whole.n_pixels == (classes != 255).sum()


def test_nodata_pixels_are_excluded(tmp_path: Path) -> None:
    from osgeo import gdal

    reference, classes, uncertainty = scene((12, 10), seed=7, ties=True)
    valid = np.ones(classes.shape, dtype=bool)
    # invalid pixels hold errors with low uncertainty: counting them would change every metric
    garbage = np.zeros(classes.shape, dtype=bool)
    garbage[0, :] = garbage[5, 2:6] = garbage[:, 9] = garbage[11, 0] = True
    classes = np.where(garbage, (reference + 1) % 3, classes)
    uncertainty = np.where(garbage, 0.0, uncertainty).astype(np.float32)
    classes[0, :] = 255  # class nodata
    uncertainty[5, 2:4] = -9999.0  # the uncertainty band's nodata
    uncertainty[5, 4:6] = np.nan  # NaN
    reference = reference.copy()
    reference[:, 9] = 7  # the reference band's nodata
    reference[11, 0] = 255  # 255 = no label
    valid &= ~garbage
    config = write_inputs(tmp_path, classes, uncertainty, reference)
    for path, nodata in ((config["uncertainty_path"], -9999.0), (config["reference_path"], 7)):
        dataset = gdal.Open(path, gdal.GA_Update)
        dataset.GetRasterBand(1).SetNoDataValue(nodata)
        dataset = None
    result = evaluate_uncertainty(EvaluationConfig(**config))
    wrong = classes != reference
    assert result.n_pixels == valid.sum()
    assert result.accuracy == pytest.approx(1 - wrong[valid].mean())
    assert result.auroc == pytest.approx(brute_auroc(uncertainty[valid], wrong[valid]), abs=1e-12)
    assert result.uncertainty_range[1] == pytest.approx(
        float(np.nanmax(np.where(uncertainty == -9999, 0, uncertainty)))
    )


def test_reference_on_another_grid_is_resampled_with_a_warning(tmp_path: Path) -> None:
    reference, classes, uncertainty = scene((12, 10), seed=8, ties=True)
    same_grid = evaluate(tmp_path, classes, uncertainty, reference)
    fine = np.kron(reference, np.ones((2, 2), dtype=int)).astype(np.uint8)  # half the pixel size, same extent
    x0, dx, _, y0, _, dy = GEOTRANSFORM
    fine_path = write_geotiff(tmp_path / "fine.tif", fine, geotransform=(x0, dx / 2, 0, y0, 0, dy / 2))
    other = tmp_path / "other"
    other.mkdir()
    config = write_inputs(other, classes, uncertainty, reference)
    config["reference_path"] = fine_path
    with pytest.warns(ReferenceResampledWarning, match="REFERENCE is on another grid"):
        resampled = evaluate_uncertainty(EvaluationConfig(**config))
    assert resampled.reference_resampled and resampled.notes
    assert resampled.confusion.tolist() == same_grid.confusion.tolist()
    assert resampled.auroc == same_grid.auroc and resampled.aurc == same_grid.aurc

    # a reference covering part of the raster, offset by 3 columns and 2 rows: the rest has no label
    part = reference[2:, 3:].astype(np.uint8)
    part_path = write_geotiff(
        tmp_path / "part.tif", part, nodata=255, geotransform=(x0 + 3 * dx, dx, 0, y0 + 2 * dy, 0, dy)
    )
    config["reference_path"] = part_path
    with pytest.warns(ReferenceResampledWarning):
        partial = evaluate_uncertainty(EvaluationConfig(**config))
    assert partial.n_pixels == part.size
    assert partial.accuracy == pytest.approx(np.mean(classes[2:, 3:] == part))


@pytest.mark.parametrize("gdal_exceptions", [False, True])
def test_a_reference_gdal_cannot_resample_is_a_clear_error(tmp_path: Path, gdal_exceptions: bool) -> None:
    """A reference in a local CRS that has no transformation to the CRS of CLASSES: GDAL's own reason is shown,
    whether GDAL's Python exceptions are on or off."""
    reference, classes, uncertainty = scene((6, 5), seed=13, ties=True)
    config = write_inputs(tmp_path, classes, uncertainty, reference)
    local_path = write_geotiff(tmp_path / "local.tif", reference.astype(np.uint8), epsg=None)
    dataset = gdal.Open(local_path, gdal.GA_Update)
    dataset.SetProjection('LOCAL_CS["site grid",UNIT["metre",1]]')
    dataset = None
    config["reference_path"] = local_path
    previous = gdal.GetUseExceptions()
    gdal.UseExceptions() if gdal_exceptions else gdal.DontUseExceptions()
    try:
        with pytest.raises(ParameterError, match=r"^REFERENCE must be resamplable onto the grid of CLASSES \(.+\)"):
            evaluate_uncertainty(EvaluationConfig(**config))
    finally:
        gdal.UseExceptions() if previous else gdal.DontUseExceptions()


def test_same_grid_gives_no_warning(tmp_path: Path) -> None:
    reference, classes, uncertainty = scene((5, 6), seed=9, ties=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not evaluate(tmp_path, classes, uncertainty, reference).reference_resampled


def test_other_size_without_georeferencing_is_a_clear_error(tmp_path: Path) -> None:
    classes = write_geotiff(tmp_path / "c.tif", np.zeros((8, 10), np.uint8), geotransform=None, epsg=None)
    uncertainty = write_geotiff(tmp_path / "u.tif", np.zeros((8, 10), np.float32), geotransform=None, epsg=None)
    reference = write_geotiff(tmp_path / "r.tif", np.zeros((8, 9), np.uint8), geotransform=None, epsg=None)
    with pytest.raises(ParameterError, match=r"^REFERENCE must have the grid of CLASSES \(10 x 8 px.*9 x 8 px"):
        evaluate_uncertainty(EvaluationConfig(classes, uncertainty, reference))
    small = write_geotiff(tmp_path / "u2.tif", np.zeros((7, 10), np.float32), geotransform=None, epsg=None)
    with pytest.raises(ParameterError, match=r"^UNCERTAINTY must have the grid of CLASSES"):
        evaluate_uncertainty(EvaluationConfig(classes, small, reference))


def test_bad_inputs_name_their_parameter(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=r"^PAVPU_PATCH_SIZE must be an integer >= 1, got 0"):
        EvaluationConfig("c.tif", "u.tif", "r.tif", pavpu_patch_size=0)
    config = write_inputs(tmp_path, np.array([[0, 1]]), np.array([[0.1, 0.2]]), np.array([[0, 1]]))
    with pytest.raises(ParameterError, match=r"^CLASSES must be an existing raster file"):
        evaluate_uncertainty(EvaluationConfig(**{**config, "classes_path": str(tmp_path / "missing.tif")}))
    labels = write_geotiff(tmp_path / "labels.tif", np.array([[0, 260]], dtype=np.uint16))
    with pytest.raises(ParameterError, match=r"^REFERENCE must hold class indices 0\.\.254.*260"):
        evaluate_uncertainty(EvaluationConfig(**{**config, "reference_path": labels}))


def _damaged_classes(path: Path, height: int, damaged_strip: int) -> str:
    """A DEFLATE GeoTIFF of 16-row strips whose strip ``damaged_strip`` holds bytes that do not decode: GDAL opens
    it, and fails only when reading those rows."""
    data = (np.arange(height * 8).reshape(height, 8) % 3).astype(np.uint8)
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(path), 8, height, 1, gdal.GDT_Byte, ["COMPRESS=DEFLATE", "BLOCKYSIZE=16"]
    )
    dataset.SetGeoTransform(list(GEOTRANSFORM))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset.SetProjection(srs.ExportToWkt())
    dataset.GetRasterBand(1).WriteArray(data)
    dataset = None
    dataset = gdal.Open(str(path))  # kept while its band is used (a band outliving its dataset crashes GDAL)
    band = dataset.GetRasterBand(1)
    offset = int(band.GetMetadataItem(f"BLOCK_OFFSET_0_{damaged_strip}", "TIFF"))
    size = int(band.GetMetadataItem(f"BLOCK_SIZE_0_{damaged_strip}", "TIFF"))
    band = dataset = None
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * size)
    return str(path)


@pytest.mark.parametrize("gdal_exceptions", [False, True])
def test_a_raster_that_fails_to_read_midway_is_a_raster_io_error_naming_its_key(
    tmp_path: Path, gdal_exceptions: bool
) -> None:
    """A read failure is an I/O error, not a bad parameter; with GDAL's exceptions on or off alike."""
    reference, classes, uncertainty = scene((64, 8), seed=11, ties=True)
    config = write_inputs(tmp_path, classes, uncertainty, reference, block_rows=16)
    config["classes_path"] = _damaged_classes(tmp_path / "damaged.tif", 64, damaged_strip=2)
    previous = gdal.GetUseExceptions()
    gdal.UseExceptions() if gdal_exceptions else gdal.DontUseExceptions()
    try:
        with pytest.raises(RasterIOError, match=r"^CLASSES: reading rows 32\.\.47 of '.*damaged\.tif' failed: .+"):
            evaluate_uncertainty(EvaluationConfig(**config))
    finally:
        gdal.UseExceptions() if previous else gdal.DontUseExceptions()


def test_a_cancelled_evaluation_raises_evaluation_cancelled_and_writes_nothing(tmp_path: Path) -> None:
    reference, classes, uncertainty = scene((64, 8), seed=12, ties=True)
    config = EvaluationConfig(**write_inputs(tmp_path, classes, uncertainty, reference, block_rows=16))
    polls: list[int] = []

    def cancel_in_the_second_pass() -> bool:  # 4 polls in the range pass, then one per block
        polls.append(1)
        return len(polls) > 5

    outputs = [str(tmp_path / "out" / name) for name in ("r.html", "r.png", "r.json")]
    (tmp_path / "out").mkdir()
    # (no ``as excinfo``: a traceback kept past the test would keep the datasets open after QGIS exits)
    with pytest.raises(EvaluationCancelled, match="Evaluation cancelled"):
        evaluate_to_files(config, *outputs, is_cancelled=cancel_in_the_second_pass)
    assert len(polls) == 6
    assert issubclass(EvaluationCancelled, Cancelled) and not issubclass(EvaluationCancelled, InferenceCancelled)
    assert list((tmp_path / "out").iterdir()) == []


# -- outputs -----------------------------------------------------------------------------------------------------


def test_outputs_html_png_json(tmp_path: Path) -> None:
    reference, classes, uncertainty = scene((20, 16), seed=10, ties=True)
    result = evaluate(tmp_path, classes, uncertainty, reference, 1.0 - uncertainty / 2, class_names="x,y,z")
    paths = write_evaluation_outputs(
        result, str(tmp_path / "r.html"), str(tmp_path / "r.png"), str(tmp_path / "r.json")
    )
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = Path(paths["html"]).read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") >= 6
    for number in (f"{result.accuracy:.3f}", f"{result.auroc:.3f}", f"{result.aurc:.4f}", f"{result.ece:.3f}"):
        assert number in text
    assert '<td class="name">y</td>' in text
    data = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(result.to_json()))
    assert data["accuracy"] == result.accuracy and data["error_detection"]["auroc"] == result.auroc
    assert data["calibration"]["ece"] == result.ece
    assert not list(tmp_path.glob(".*.partial"))

"""Regions to review: the most uncertain non-overlapping patches, checked against a brute force in numpy.

The reference here ranks every placement of the whole raster in memory and runs the greedy selection on all of
them; the streamed search must return the same patches whatever its read sizes.
"""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from core_fixtures import write_geotiff

from mc_uncertainty_plugin.core import Cancelled, InferenceCancelled, ReviewCancelled
from mc_uncertainty_plugin.core.errors import ParameterError
from mc_uncertainty_plugin.core.review import cells as review_cells
from mc_uncertainty_plugin.core.review.regions import ReviewConfig, find_review_regions

NODATA = -1.0


def _starts(size: int, patch: int, stride: int) -> tuple[list[int], int]:
    """Placements along one axis as the README states them: 0, S, 2S ... and the last whole patch."""
    length = min(patch, size)
    starts = list(range(0, size - length + 1, stride))
    if starts[-1] != size - length:
        starts.append(size - length)
    return starts, length


def brute_force(
    u: np.ndarray, patch: int, stride: int, count: int, classes: np.ndarray | None = None, min_fraction: float = 0.5
) -> list[dict]:
    """Every placement's statistics from the whole array, ranked, then greedy non-overlapping selection."""
    height, width = u.shape
    ys, patch_h = _starts(height, patch, stride)
    xs, patch_w = _starts(width, patch, stride)
    valid = np.isfinite(u) & (u != NODATA)
    ranked = []
    for y in ys:
        for x in xs:
            ok = valid[y : y + patch_h, x : x + patch_w]
            values = u[y : y + patch_h, x : x + patch_w][ok].astype(np.float64)
            fraction = ok.sum() / (patch_h * patch_w)
            if ok.sum() == 0 or fraction < min_fraction:
                continue
            patch_info = {
                "col": x,
                "row": y,
                "mean": values.mean(),
                "max": values.max(),
                "fraction": fraction,
                "dominant": None,
            }
            if classes is not None:
                labels = classes[y : y + patch_h, x : x + patch_w]
                labels = labels[labels != 255]
                if labels.size:
                    patch_info["dominant"] = int(np.bincount(labels).argmax())
            ranked.append(patch_info)
    ranked.sort(key=lambda p: (-p["mean"], p["row"], p["col"]))
    chosen: list[dict] = []
    for candidate in ranked:
        if all(
            abs(candidate["row"] - c["row"]) >= patch_h or abs(candidate["col"] - c["col"]) >= patch_w for c in chosen
        ):
            chosen.append(candidate)
        if len(chosen) == count:
            break
    return chosen


def assert_same(result, expected: list[dict]) -> None:
    got = [(p.col, p.row) for p in result.patches]
    assert got == [(e["col"], e["row"]) for e in expected]
    for rank, (patch, e) in enumerate(zip(result.patches, expected), start=1):
        assert patch.rank == rank
        assert patch.mean_uncertainty == pytest.approx(e["mean"], rel=1e-12, abs=1e-12)
        assert patch.max_uncertainty == pytest.approx(e["max"], rel=1e-7)
        assert patch.valid_fraction == pytest.approx(e["fraction"], rel=1e-12)
        assert patch.dominant_class == e["dominant"]


def _tif(tmp_path: Path, name: str, array: np.ndarray, **kwargs) -> str:
    return write_geotiff(tmp_path / name, array, **kwargs)


def test_planted_hot_spots_come_out_ranked(tmp_path: Path) -> None:
    u = np.full((300, 400), 0.1, np.float32)
    u[40:72, 304:336] = 1.5  # hottest, 32 x 32, on the grid of placements (stride 8)
    u[200:232, 64:96] = 1.0
    u[176:208, 200:232] = 0.7
    result = find_review_regions(ReviewConfig(_tif(tmp_path, "u.tif", u), patch_size=32, count=3, stride=8))
    assert [(p.rank, p.col, p.row) for p in result.patches] == [(1, 304, 40), (2, 64, 200), (3, 200, 176)]
    assert [p.mean_uncertainty for p in result.patches] == pytest.approx([1.5, 1.0, 0.7])
    assert [p.max_uncertainty for p in result.patches] == pytest.approx([1.5, 1.0, 0.7])
    assert all(p.valid_fraction == 1.0 and (p.width, p.height) == (32, 32) for p in result.patches)
    assert all(p.dominant_class is None for p in result.patches) and not result.has_classes
    assert (result.width, result.height) == (400, 300)


@pytest.mark.parametrize("seed", range(6))
def test_equals_brute_force_over_all_placements(tmp_path: Path, seed: int) -> None:
    """Random sizes, patch sizes, strides, nodata and NaN; values on a 1/8 grid, so sums are exact and ties
    (frequent) must be broken the same way. Each case runs with tiny, medium and whole-raster reads."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(20, 120, 2))
    patch = int(rng.integers(3, 40))
    stride = int(rng.integers(1, patch + 1))
    count = int(rng.integers(1, 15))
    u = (rng.integers(0, 40, (height, width)) / 8).astype(np.float32)
    u[rng.random((height, width)) < 0.25] = NODATA
    u[rng.random((height, width)) < 0.05] = np.nan
    classes = rng.integers(0, 4, (height, width)).astype(np.uint8)
    classes[rng.random((height, width)) < 0.2] = 255
    u_path = _tif(tmp_path, "u.tif", u, nodata=NODATA)
    c_path = _tif(tmp_path, "c.tif", classes)
    expected = brute_force(u, patch, stride, count, classes)
    for max_read_pixels in (1, 97, 1 << 22):
        config = ReviewConfig(
            u_path, c_path, patch_size=patch, count=count, stride=stride, max_read_pixels=max_read_pixels
        )
        assert_same(find_review_regions(config), expected)


def test_a_hill_needs_the_whole_candidate_pool(tmp_path: Path) -> None:
    """On a wide hill the placements overlapping the best one all outrank every other placement: the second
    patch is the (B + 1)-th ranked placement, B = 3 x 3 overlapping placements at stride P / 2. A candidate
    pool smaller than the documented (COUNT - 1) * B + 1 returns another second patch than the brute force."""
    yy, xx = np.mgrid[0:160, 0:160]
    u = np.exp(-((xx - 80.0) ** 2 + (yy - 80.0) ** 2) / 3000.0).astype(np.float32)
    u_path = _tif(tmp_path, "u.tif", u)
    expected = brute_force(u, 32, 16, 2)
    assert (expected[0]["col"], expected[0]["row"]) == (64, 64)
    assert_same(find_review_regions(ReviewConfig(u_path, patch_size=32, count=2, stride=16)), expected)
    u += (0.25 * np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / 50.0)).astype(np.float32)  # and a small bump
    u_path = _tif(tmp_path, "u2.tif", u)
    for stride in (4, 8, 16):
        expected = brute_force(u, 32, stride, 6)
        assert_same(find_review_regions(ReviewConfig(u_path, patch_size=32, count=6, stride=stride)), expected)


def test_ties_go_to_the_upper_row_then_the_left_column(tmp_path: Path) -> None:
    u = np.ones((40, 64), np.float32)
    result = find_review_regions(ReviewConfig(_tif(tmp_path, "u.tif", u), patch_size=16, count=7, stride=4))
    assert [(p.col, p.row) for p in result.patches] == [(0, 0), (16, 0), (32, 0), (48, 0), (0, 16), (16, 16), (32, 16)]


def test_patches_at_the_edge_are_whole_and_a_small_raster_gives_one_clipped_patch(tmp_path: Path) -> None:
    u = np.zeros((70, 101), np.float32)
    u[:, 95:] = 2.0  # hot strip at the right edge, narrower than a stride
    result = find_review_regions(ReviewConfig(_tif(tmp_path, "u.tif", u), patch_size=32, count=1))
    patch = result.patches[0]
    assert (patch.col, patch.width, patch.height) == (101 - 32, 32, 32)  # the last placement ends at the edge
    small = find_review_regions(
        ReviewConfig(_tif(tmp_path, "s.tif", np.ones((10, 20), np.float32)), patch_size=256, count=5)
    )
    assert [(p.col, p.row, p.width, p.height, p.valid_fraction) for p in small.patches] == [(0, 0, 20, 10, 1.0)]
    assert small.placements == 1


def test_mostly_nodata_patches_are_skipped(tmp_path: Path) -> None:
    u = np.full((64, 128), 0.5, np.float32)
    u[:, :64] = NODATA  # left half: nodata ...
    u[0:32, 0:12] = 3.0  # ... but for a very hot strip: 12 / 32 of a patch valid
    u[32:64, 64:96] = np.nan  # right half, lower-left quarter: NaN
    result = find_review_regions(ReviewConfig(_tif(tmp_path, "u.tif", u, nodata=NODATA), patch_size=32, count=10))
    assert result.patches, "the valid area must give patches"
    for patch in result.patches:
        assert patch.valid_fraction >= 0.5
        assert patch.max_uncertainty < 3.0  # the hot strip is never chosen: its patches are mostly nodata
    assert result.eligible < result.placements
    lenient = find_review_regions(
        ReviewConfig(_tif(tmp_path, "u2.tif", u, nodata=NODATA), patch_size=32, count=1, min_valid_fraction=0.3)
    )
    assert lenient.patches[0].mean_uncertainty == 3.0
    assert lenient.patches[0].valid_fraction == pytest.approx(12 / 32)


def test_dominant_class_counts_valid_classes_and_breaks_ties_to_the_smaller_index(tmp_path: Path) -> None:
    u = np.zeros((32, 96), np.float32)
    u[:, :32], u[:, 32:64], u[:, 64:] = 3.0, 2.0, 1.0
    classes = np.full((32, 96), 255, np.uint8)
    classes[:, :32] = 4
    classes[:10, :32] = 1  # patch 1: 4 is the most frequent
    classes[:16, 32:64] = 7
    classes[16:, 32:64] = 2  # patch 2: a tie of 7 and 2 -> 2
    # patch 3: only nodata classes -> None
    u_path, c_path = _tif(tmp_path, "u.tif", u), _tif(tmp_path, "c.tif", classes)
    result = find_review_regions(ReviewConfig(u_path, c_path, patch_size=32, count=3))
    assert [p.dominant_class for p in result.patches] == [4, 2, None]
    assert result.has_classes
    with_nodata = _tif(tmp_path, "c0.tif", classes, nodata=4)  # class 4 is now the band's nodata
    assert find_review_regions(ReviewConfig(u_path, with_nodata, patch_size=32, count=1)).patches[0].dominant_class == 1


def test_reads_stay_small_and_do_not_change_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    u = rng.random((600, 500)).astype(np.float32)
    u_path = _tif(tmp_path, "u.tif", u)
    c_path = _tif(tmp_path, "c.tif", rng.integers(0, 3, (600, 500)).astype(np.uint8))
    whole = find_review_regions(ReviewConfig(u_path, c_path, patch_size=64, count=8))
    shapes: list[tuple[int, int]] = []
    real_read = review_cells.read_window

    def recording_read(band, col, row, cols, rows):
        array = real_read(band, col, row, cols, rows)
        shapes.append(array.shape)
        return array

    monkeypatch.setattr(review_cells, "read_window", recording_read)
    streamed = find_review_regions(ReviewConfig(u_path, c_path, patch_size=64, count=8, max_read_pixels=5000))
    assert max(h * w for h, w in shapes) <= 5000
    assert sum(h * w for h, w in shapes) == 2 * 600 * 500  # each pixel of both rasters read once
    assert streamed.patches == whole.patches


def _peak_bytes(path: str) -> int:
    tracemalloc.start()
    find_review_regions(ReviewConfig(path, patch_size=32, count=5, max_read_pixels=64 * 256))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_the_raster_height(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    short = _tif(tmp_path, "short.tif", rng.random((512, 256)).astype(np.float32))
    tall = _tif(tmp_path, "tall.tif", rng.random((8192, 256)).astype(np.float32))
    short_peak, tall_peak = _peak_bytes(short), _peak_bytes(tall)
    assert tall_peak < 1.5 * short_peak + 200_000, (short_peak, tall_peak)
    assert tall_peak < 8192 * 256 * 4 / 4  # far below a quarter of the raster itself


def test_progress_and_cancel(tmp_path: Path) -> None:
    u_path = _tif(tmp_path, "u.tif", np.ones((200, 50), np.float32))
    seen: list[float] = []
    find_review_regions(ReviewConfig(u_path, patch_size=16, max_read_pixels=500), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 100.0 and len(seen) > 3
    with pytest.raises(ReviewCancelled):
        find_review_regions(ReviewConfig(u_path, patch_size=16), is_cancelled=lambda: True)
    assert issubclass(ReviewCancelled, Cancelled) and not issubclass(ReviewCancelled, InferenceCancelled)


@pytest.mark.parametrize(
    ("kwargs", "key", "shown"),
    [
        ({"patch_size": 0}, "PATCH_SIZE", "0"),
        ({"patch_size": 12.5}, "PATCH_SIZE", "12.5"),
        ({"count": 0}, "COUNT", "0"),
        ({"count": True}, "COUNT", "True"),
        ({"patch_size": 8, "stride": 9}, "stride", "9"),
        ({"min_valid_fraction": 0.0}, "min_valid_fraction", "0.0"),
    ],
)
def test_bad_settings_name_the_parameter(tmp_path: Path, kwargs: dict, key: str, shown: str) -> None:
    with pytest.raises(ParameterError, match=rf"^{key} must .*, got {shown}\.$"):
        ReviewConfig(str(tmp_path / "u.tif"), **kwargs)


def test_bad_rasters_name_the_parameter(tmp_path: Path) -> None:
    u_path = _tif(tmp_path, "u.tif", np.ones((40, 50), np.float32))
    with pytest.raises(ParameterError, match="^UNCERTAINTY must be an existing raster file"):
        find_review_regions(ReviewConfig(str(tmp_path / "missing.tif")))
    (tmp_path / "junk.tif").write_text("not a raster")
    with pytest.raises(ParameterError, match="^UNCERTAINTY must be a raster GDAL can read"):
        find_review_regions(ReviewConfig(str(tmp_path / "junk.tif")))
    other = _tif(tmp_path, "c.tif", np.zeros((40, 51), np.uint8))
    with pytest.raises(
        ParameterError, match=r"^CLASSES must have the grid of UNCERTAINTY \(50 x 40 px.*it has 51 x 40"
    ):
        find_review_regions(ReviewConfig(u_path, other))
    shifted = _tif(tmp_path, "c2.tif", np.zeros((40, 50), np.uint8), geotransform=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    with pytest.raises(ParameterError, match="^CLASSES must have the grid of UNCERTAINTY"):
        find_review_regions(ReviewConfig(u_path, shifted))
    fractional = _tif(tmp_path, "c3.tif", np.full((40, 50), 1.5, np.float32))
    with pytest.raises(ParameterError, match=r"^CLASSES must hold class indices 0\.\.254.*1\.5"):
        find_review_regions(ReviewConfig(u_path, fractional))


def test_the_pool_bound_is_count_times_the_overlaps(tmp_path: Path) -> None:
    """The documented bound: with stride P / 4 a placement overlaps 7 placements per axis (itself included),
    one more next to the extra placement at the edge; never more than 2 * ceil(P / S)."""
    axis = review_cells.PlacementAxis.build(1040, 64, 16)  # 1040 - 64 = 976 = 61 * 16: a regular grid
    assert axis.max_overlapping() == 7 == 2 * math.ceil(64 / 16) - 1
    assert list(axis.overlapping(10)) == list(range(7, 14))
    edge = review_cells.PlacementAxis.build(1000, 64, 16)  # 1000 - 64 = 936 is no multiple of 16: one more start
    assert edge.starts[-2:].tolist() == [928, 936]
    assert edge.max_overlapping() == 8 == 2 * math.ceil(64 / 16)
    for size, patch, stride in ((1000, 64, 7), (333, 100, 100), (50, 9, 1), (10, 256, 64)):
        built = review_cells.PlacementAxis.build(size, patch, stride)
        assert built.max_overlapping() <= 2 * math.ceil(patch / stride)


def test_gdal_block_cache_stays_at_a_few_block_rows(tmp_path: Path) -> None:
    """GDAL would keep every block read (up to 5 % of the RAM): the search drops them band by band."""
    from osgeo import gdal

    path = str(tmp_path / "tiled.tif")
    dataset = gdal.GetDriverByName("GTiff").Create(
        path, 1024, 4096, 1, gdal.GDT_Float32, ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256"]
    )
    dataset.GetRasterBand(1).WriteArray(np.random.default_rng(0).random((4096, 1024)).astype(np.float32))
    dataset = None
    baseline = gdal.GetCacheUsed()
    used: list[int] = []
    find_review_regions(
        ReviewConfig(path, patch_size=64, max_read_pixels=256 * 1024),
        progress=lambda _: used.append(gdal.GetCacheUsed() - baseline),
    )
    block_row = 256 * 1024 * 4
    assert len(used) == 16 and max(used) <= 2 * block_row, used  # the raster is 16 block rows

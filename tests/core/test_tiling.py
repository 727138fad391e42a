"""Window placement and weight maps."""

import numpy as np
import pytest

from mc_uncertainty_plugin.core.errors import ParameterError
from mc_uncertainty_plugin.core.inference.tiling import TileGrid, axis_starts, tile_weight_map


@pytest.mark.parametrize(
    "length,tile,step", [(10, 4, 3), (512, 512, 256), (513, 512, 256), (1000, 256, 100), (7, 4, 4)]
)
def test_windows_cover_every_pixel_and_stay_inside(length, tile, step):
    starts = axis_starts(length, tile, step)
    covered = np.zeros(length, dtype=int)
    for start in starts:
        assert 0 <= start and start + min(tile, length) <= length
        covered[start : start + tile] += 1
    assert covered.min() >= 1
    assert starts == sorted(set(starts))
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))


def test_edge_window_is_shifted_inwards():
    assert axis_starts(10, 4, 3) == [0, 3, 6]
    assert axis_starts(11, 4, 4) == [0, 4, 7]


def test_raster_smaller_than_tile_has_one_padded_window():
    grid = TileGrid((30, 50), (64, 64), (32, 32))
    windows = list(grid)
    assert len(windows) == 1
    assert (windows[0].height, windows[0].width) == (30, 50)


def test_windows_in_row_filters_by_panel_columns():
    grid = TileGrid((100, 1000), (100, 100), (50, 50))
    inside = grid.windows_in_row(0, (256, 512))
    assert all(w.col < 512 and w.col + w.width > 256 for w in inside)
    assert {w.col for w in inside} == {200, 250, 300, 350, 400, 450, 500}


def test_step_larger_than_tile_is_rejected():
    with pytest.raises(ParameterError, match="STEP_SHAPE"):
        TileGrid((100, 100), (32, 32), (33, 16))


@pytest.mark.parametrize("kind", ["gaussian", "pyramid", "mean"])
@pytest.mark.parametrize("shape", [(64, 64), (32, 48), (7, 5)])
def test_weights_are_positive_symmetric_and_peak_in_the_centre(kind, shape):
    w = tile_weight_map(kind, shape)
    assert w.shape == shape and w.dtype == np.float32
    assert w.min() > 0 and w.max() <= 1.0
    np.testing.assert_allclose(w, w[::-1, :])
    np.testing.assert_allclose(w, w[:, ::-1])
    centre = w[(shape[0] - 1) // 2, (shape[1] - 1) // 2]
    assert centre == pytest.approx(w.max())
    if kind != "mean":
        assert w[0, 0] < centre


def test_gaussian_sigma_is_an_eighth_of_the_tile():
    w = tile_weight_map("gaussian", (65, 65))  # centre at 32, sigma = 65/8
    sigma = 65 / 8
    np.testing.assert_allclose(w[32, 32 + 8] / w[32, 32], np.exp(-(8**2) / (2 * sigma**2)), rtol=1e-5)


def test_unknown_weight_is_an_error_naming_the_parameter():
    with pytest.raises(ParameterError, match="TILE_WEIGHT"):
        tile_weight_map("cosine", (4, 4))


def test_pyramid_weights_known_answer():
    """``min(dy, dx)`` with ``d = min(i + 1, n - i) / ceil(n / 2)``: for n = 4, d = [1, 2, 2, 1] / 2; for n = 5,
    d = [1, 2, 3, 2, 1] / 3."""
    third, half = 1 / 3, 1 / 2
    expected = np.array(
        [
            [third, half, half, half, third],
            [third, 2 * third, 1.0, 2 * third, third],
            [third, 2 * third, 1.0, 2 * third, third],
            [third, half, half, half, third],
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(tile_weight_map("pyramid", (4, 5)), expected, rtol=1e-6)
    np.testing.assert_array_equal(tile_weight_map("mean", (2, 3)), np.ones((2, 3), np.float32))

"""Any region of the raster computes exactly as the whole run computes those pixels (the basis of blocks)."""

import numpy as np
import pytest
import torch
from core_fixtures import SmallConvNet, random_image, write_geotiff
from osgeo import gdal

from mc_uncertainty_plugin.core import InferenceConfig, LoadedModel, MCDropoutInferenceProcessor
from mc_uncertainty_plugin.core.inference.device import resolve_device
from mc_uncertainty_plugin.core.inference.engine import run_region
from mc_uncertainty_plugin.core.inference.plan import OutputOptions, Region, balanced_split, plan_run, region_batches
from mc_uncertainty_plugin.core.inference.window_outputs import WindowOutput, compute_windows, crop_outputs


@pytest.fixture
def one_thread():
    """Exact mode: one torch thread (with more, CPU kernels split work by batch composition)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _read(path: str) -> tuple[np.ndarray, tuple]:
    """Every band (``(h, w)`` for one, ``(bands, h, w)`` for several) and the geotransform."""
    dataset = gdal.Open(path)
    return dataset.ReadAsArray(), dataset.GetGeoTransform()


KEYS = ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_CONFIDENCE", "OUTPUT_PROBABILITIES", "OUTPUT_CONFIDENT")


@pytest.mark.parametrize(
    "mode,tta,batch,dtype,threshold",
    [
        ("mutual_information", "none", 0, "float32", 0.01),
        ("entropy", "flip", 3, "uint8", 1.37),
        ("variation_ratio", "none", 1, "float32", 0.3),
        ("margin", "identity,rot90", 2, "uint8", 0.04),
    ],
)
def test_a_mosaic_of_regions_equals_the_whole_run_bit_for_bit(tmp_path, one_thread, mode, tta, batch, dtype, threshold):
    height, width = 83, 101  # odd sizes: the last windows of each axis are shifted inwards
    image = write_geotiff(tmp_path / "in.tif", random_image((height, width), seed=3))
    model = LoadedModel(SmallConvNet(p=0.3), in_channels=3)
    config = InferenceConfig(
        n_samples=3,
        uncertainty_mode=mode,
        tta_mode=tta,
        model_input_shape=(32, 40),
        step_shape=(20, 24),
        seed=5,
        batch_size=batch,
    )
    whole = MCDropoutInferenceProcessor(
        model,
        **{
            f: getattr(config, f)
            for f in (
                "n_samples",
                "uncertainty_mode",
                "tta_mode",
                "model_input_shape",
                "step_shape",
                "seed",
                "batch_size",
            )
        },
    )
    paths = whole.process(
        image,
        output_path=str(tmp_path / "whole.tif"),
        confidence_path=str(tmp_path / "wc.tif"),
        probabilities_path=str(tmp_path / "wp.tif"),
        probabilities_dtype=dtype,
        confident_path=str(tmp_path / "wk.tif"),
        confident_threshold=threshold,
    )
    names = ("segmentation", "uncertainty", "confidence", "probabilities", "confident")
    expected = {key: _read(paths[name])[0] for key, name in zip(KEYS, names)}
    assert expected["OUTPUT_PROBABILITIES"].shape == (4, height, width)
    unsure = expected["OUTPUT_CONFIDENT"] != expected["OUTPUT"]
    assert 0 < unsure.mean() < 1, "the threshold must cut somewhere for the test to mean anything"
    plan, _ = plan_run(
        model,
        config,
        image,
        {key: str(tmp_path / f"plan_{key}.tif") for key in KEYS},
        resolve_device("cpu"),
        lambda message: None,
        OutputOptions(dtype, threshold),
    )
    origin = _read(paths["segmentation"])[1]
    cuts_rows, cuts_cols = (0, 17, 50, height), (0, 33, 61, 90, width)  # regions not aligned to any window
    regions = [
        Region(r0, c0, r1 - r0, c1 - c0)
        for r0, r1 in zip(cuts_rows, cuts_rows[1:])
        for c0, c1 in zip(cuts_cols, cuts_cols[1:])
    ]
    touching = [
        [w for b in region_batches(plan.grid, r, plan.config.panel_width, 1) for w in b.windows] for r in regions
    ]
    shared = sorted({w for ws in touching for w in ws if sum(w in other for other in touching) > 1}, key=hash)
    shared = shared[::2]  # batches of a region then mix given windows and computed ones
    given = compute_windows(plan, model, shared)  # once, in another order and other batches than any region's
    assert len(given) == len(shared) > 0
    for share in (False, True) if batch != 1 else (False,):  # batch 1: no batch mixes given and computed windows
        mosaic = {key: np.full(values.shape, 7, values.dtype) for key, values in expected.items()}
        computed = 0
        for region in regions:
            files = {key: str(tmp_path / f"r{region.row}_{region.col}_{share}_{key}.tif") for key in expected}
            result = run_region(plan, model, region, files, given=crop_outputs(given, region) if share else None)
            computed += result.computed
            for key, path in result.paths.items():
                values, transform = _read(path)
                assert values.shape[-2:] == (region.height, region.width)
                assert transform[0] == pytest.approx(origin[0] + region.col * origin[1])
                assert transform[3] == pytest.approx(origin[3] + region.row * origin[5])
                mosaic[key][..., region.row : region.row_end, region.col : region.col_end] = values
        for key in expected:
            np.testing.assert_array_equal(mosaic[key], expected[key], err_msg=f"{key}, shared windows {share}")
        assert computed == sum(len([w for w in ws if not share or w.key not in given]) for ws in touching)
    for region in regions:  # a crop holds exactly the region's pixels of each window that reaches it
        for (row, col), part in crop_outputs(given, region).items():
            top, left = row + part.offset[0], col + part.offset[1]
            height, width = part.mean_probs.shape[-2:]
            assert (max(row, region.row), max(col, region.col)) == (top, left)
            assert (top + height, left + width) == (
                min(row + plan.grid.window_height, region.row_end),
                min(col + plan.grid.window_width, region.col_end),
            )


def test_a_given_window_is_blended_as_given(tmp_path, one_thread):
    image = write_geotiff(tmp_path / "in.tif", random_image((40, 40), seed=4))
    model = LoadedModel(SmallConvNet(p=0.3), in_channels=3)
    config = InferenceConfig(n_samples=2, model_input_shape=(16, 16), step_shape=(8, 8), seed=1, batch_size=2)
    plan, _ = plan_run(
        model, config, image, {"OUTPUT": str(tmp_path / "p.tif")}, resolve_device("cpu"), lambda message: None
    )
    window = next(w for w in plan.grid if (w.row, w.col) == (8, 8))
    own = compute_windows(plan, model, [window])[window.key]
    swapped = own.mean_probs[::-1].copy()  # the classes in reverse: another argmax wherever the window decides
    given = {window.key: WindowOutput(swapped, own.expected_entropy, own.votes, own.mutual_information)}
    plain = run_region(plan, model, plan.whole, {"OUTPUT": str(tmp_path / "a.tif")})
    taken = run_region(plan, model, plan.whole, {"OUTPUT": str(tmp_path / "b.tif")}, given=given)
    assert (plain.computed, taken.computed) == (len(plan.grid), len(plan.grid) - 1)
    before, after = _read(plain.paths["OUTPUT"])[0], _read(taken.paths["OUTPUT"])[0]
    changed = before != after
    assert changed.any() and not changed[:8].any() and not changed[:, :8].any() and not changed[24:].any()


def test_a_region_runs_only_the_windows_that_touch_it():
    from mc_uncertainty_plugin.core.inference.tiling import TileGrid

    grid = TileGrid((100, 100), (32, 32), (16, 16))
    region = Region(40, 50, 10, 10)
    windows = [w for b in region_batches(grid, region, 8192, 4) for w in b.windows]
    touching = [w for w in grid if w.row < 50 and w.row + 32 > 40 and w.col < 60 and w.col + 32 > 50]
    assert windows == touching  # the same windows, in the global order


@pytest.mark.parametrize("count,cap", [(9, 8), (17, 8), (2, 8), (5, 2), (1, 4), (0, 4), (16, 8)])
def test_balanced_batches_never_leave_a_tile_alone_beside_bigger_batches(count, cap):
    parts = balanced_split(list(range(count)), cap)
    assert [x for part in parts for x in part] == list(range(count))
    assert all(len(part) <= cap for part in parts)
    if count >= 2:
        if cap >= 3:  # with cap 2 an odd count leaves one: the engine pairs a lone tile with its copy
            assert min(len(p) for p in parts) >= 2
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1

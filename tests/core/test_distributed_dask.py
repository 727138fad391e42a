"""Blocks on a real Dask cluster (two worker processes): the mosaic equals the in-process run bit for bit; lost
workers, transient and lasting errors, cancel and resume, other versions, shipping the model, ``local:N``."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import sys
import time
from dataclasses import replace

import dask
import numpy as np
import pytest
import torch
from distributed_fixtures import (
    KEYS,
    NODATA_BLOCK,
    OPTIONAL_OUTPUTS,
    PATH_ARGUMENTS,
    SETTINGS,
    assert_same_as_reference,
    overview_count,
    partials,
    read_band,
    write_model,
)
from osgeo import gdal

from mc_uncertainty_plugin.core import (
    InferenceCancelled,
    MCDropoutInferenceProcessor,
    RasterIOError,
    load_model,
)
from mc_uncertainty_plugin.core.distributed import BlockFailedError, VersionMismatchError
from mc_uncertainty_plugin.core.distributed.blocks import choose_layout
from mc_uncertainty_plugin.core.distributed.dask_driver import run_blocks_on_dask
from mc_uncertainty_plugin.core.distributed.job import ModelBundle, check_job_outputs, create_job, plan_job
from mc_uncertainty_plugin.core.distributed.local_cluster import BLOCK_MODULE, QUIET_CONFIG
from mc_uncertainty_plugin.core.distributed.run import run_job
from mc_uncertainty_plugin.core.inference.engine import RunCallbacks
from mc_uncertainty_plugin.core.inference.output_specs import OutputOptions
from mc_uncertainty_plugin.core.inference.tiling import TileGrid

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module: two worker processes of one thread, torch imported once."""
    import dask

    saved = dict(os.environ)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(local)
    client.run(lambda: __import__("mc_uncertainty_plugin.core.distributed.block_task"))
    yield local.scheduler_address
    client.close()
    local.close()
    os.environ.clear()  # the nanny exported OMP_NUM_THREADS and friends into this process
    os.environ.update(saved)


def _categories(path: str) -> list[str]:
    """Class names (gdal.Info: GDAL 3.6's Band.GetCategoryNames misses those a GeoTIFF keeps in its .aux.xml)."""
    return gdal.Info(path, format="json")["bands"][0]["categories"]


def _outputs(folder, extension: str) -> dict[str, str]:
    return {key: str(folder / f"{key.lower()}.{extension}") for key in KEYS}


def _run(scene, address, folder, extension="vrt", model=None, **options):
    folder.mkdir(exist_ok=True)
    outputs = _outputs(folder, extension)
    result = run_job(
        model or scene.model(),
        scene.config,
        scene.image,
        outputs["OUTPUT"],
        outputs["OUTPUT_UNCERTAINTY"],
        **{name: outputs[key] for key, name in PATH_ARGUMENTS.items()},
        output_options=OutputOptions(**OPTIONAL_OUTPUTS),
        scheduler=address,
        **options,
    )
    return result, outputs


def _windows_with_data(scene) -> int:
    """Windows of the run holding a valid pixel (the input's nodata is 0), counted from the input itself."""
    dataset = gdal.Open(scene.image)  # held: a band outlived by its dataset crashes GDAL
    valid = dataset.GetRasterBand(1).ReadAsArray() != 0
    grid = TileGrid(valid.shape, SETTINGS["model_input_shape"], SETTINGS["step_shape"])
    return sum(bool(valid[w.row : w.row + w.height, w.col : w.col + w.width].any()) for w in grid)


def test_a_vrt_mosaic_equals_the_in_process_run_bit_for_bit(cluster, scene, tmp_path):
    seen, messages = [], []
    result, outputs = _run(scene, cluster, tmp_path, block_size=256, on_progress=seen.append, log=messages.append)
    computed = [
        re.match(r"^(\d+) window\(s\) ran through the model for 4 block\(s\), each once: (\d+) ", m) for m in messages
    ]
    counts = next(tuple(map(int, found.groups())) for found in computed if found)
    assert counts[0] == _windows_with_data(scene) and counts[1] > 0  # the windows crossing cuts ran once
    assert_same_as_reference(scene, outputs, overviews=False)
    for key, path in outputs.items():  # the VRT's overview levels are VRTs of the blocks' own overviews:
        assert overview_count(path) == overview_count(scene.reference[key]) == 3
        for level, factor in enumerate((2, 4, 8)):  # the levels of 256 px blocks; the 44 x 44 px corner has none
            mosaic, expected = read_band(path, level), read_band(scene.reference[key], level)
            mosaic[..., 256 // factor :, 256 // factor :] = expected[..., 256 // factor :, 256 // factor :]
            np.testing.assert_array_equal(mosaic, expected, err_msg=f"{key} x{factor}")
    assert not partials(tmp_path)
    blocks = sorted(os.listdir(tmp_path / "output_blocks"))
    classes = [name for name in blocks if re.match(r"^[0-9a-f]{12}_classes_r\d+_c\d+\.tif$", name)]
    row, col = NODATA_BLOCK
    assert len(classes) == 3 and not any(name.endswith(f"_r{row}_c{col}.tif") for name in classes)  # nodata: no file
    dataset = gdal.Open(outputs["OUTPUT"])
    band = dataset.GetRasterBand(1)
    assert _categories(outputs["OUTPUT"]) == ["soil", "roof", "road", "water"]
    assert band.GetColorTable().GetColorEntry(1)[:3] == (228, 26, 28)
    assert band.GetDescription() == "class index" and band.GetNoDataValue() == 255
    uncertainty = gdal.Open(outputs["OUTPUT_UNCERTAINTY"])
    reference = gdal.Open(scene.reference["OUTPUT_UNCERTAINTY"])
    assert uncertainty.GetMetadata() == {k: v for k, v in reference.GetMetadata().items() if k.startswith("MC_")}
    assert uncertainty.GetGeoTransform() == reference.GetGeoTransform()
    assert seen[-1].windows_done == seen[-1].windows_planned == result.windows
    assert seen[-1].blocks_done == seen[-1].blocks_total == 4


def test_tif_outputs_are_assembled_like_the_in_process_run_and_their_blocks_removed(cluster, scene, tmp_path):
    _, outputs = _run(scene, cluster, tmp_path, extension="tif", block_size=256)
    assert_same_as_reference(scene, outputs)
    assert _categories(outputs["OUTPUT"]) == ["soil", "roof", "road", "water"]
    assert not any(name.endswith("_blocks") for name in os.listdir(tmp_path))
    assert not partials(tmp_path)


def _exit_on_first_attempt(marker: str, block: int, index: int, done: int) -> None:
    """Kill the worker process in the middle of ``block``, once."""
    if index == block and done >= 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)


def test_a_worker_killed_mid_block_gives_the_same_bits(cluster, scene, tmp_path):
    marker = str(tmp_path / "killed")
    _, outputs = _run(
        scene, cluster, tmp_path / "out", block_size=256, probe=functools.partial(_exit_on_first_attempt, marker, 0)
    )
    assert os.path.exists(marker)  # the worker did die mid-block
    assert_same_as_reference(scene, outputs, overviews=False)
    assert not partials(tmp_path)


def test_a_worker_killed_in_a_seam_task_gives_the_same_bits(cluster, scene, tmp_path):
    marker = str(tmp_path / "killed")
    _, outputs = _run(
        scene, cluster, tmp_path / "out", block_size=256, probe=functools.partial(_exit_on_first_attempt, marker, -1)
    )
    assert os.path.exists(marker)  # a worker died running the windows shared between blocks
    assert_same_as_reference(scene, outputs, overviews=False)
    assert not partials(tmp_path)


def _cancel_waiting_blocks_once(marker: str, index: int, done: int) -> None:
    """From a seam task, have the scheduler cancel the blocks waiting for seams (what a lost worker can cause)."""
    if index != -1 or os.path.exists(marker):
        return
    open(marker, "w").close()
    client = distributed.get_client()
    for _ in range(100):  # the client may still be submitting the blocks
        keys = client.run_on_scheduler(
            lambda dask_scheduler: [
                key
                for key, task in dask_scheduler.tasks.items()
                if str(key).startswith("mcu-block-") and task.state == "waiting"
            ]
        )
        if keys:
            break
        time.sleep(0.05)
    client.cancel([distributed.Future(key, client) for key in keys], force=True)


def test_blocks_the_scheduler_cancels_run_again_without_their_seams(cluster, scene, tmp_path):
    marker, messages = str(tmp_path / "cancelled"), []
    _, outputs = _run(
        scene,
        cluster,
        tmp_path / "out",
        block_size=256,
        log=messages.append,
        probe=functools.partial(_cancel_waiting_blocks_once, marker),
    )
    assert os.path.exists(marker)
    assert any("was cancelled by the scheduler; it runs again" in message for message in messages), messages
    assert_same_as_reference(scene, outputs, overviews=False)
    assert not partials(tmp_path)


def _raise(marker: str | None, block: int, index: int, done: int) -> None:
    if index == block and done >= 1 and (marker is None or not os.path.exists(marker)):
        if marker is not None:
            open(marker, "w").close()
        raise RasterIOError("INPUT: reading pixels failed: connection reset.")


def test_a_transient_error_is_retried_and_a_lasting_one_names_its_block(cluster, scene, tmp_path):
    marker = str(tmp_path / "failed once")
    _, outputs = _run(scene, cluster, tmp_path / "retried", block_size=256, probe=functools.partial(_raise, marker, 3))
    assert os.path.exists(marker)
    assert_same_as_reference(scene, outputs, overviews=False)
    with pytest.raises(
        BlockFailedError,
        match=r"block 2 of blocks 0\.\.3 \(rows 256\.\.299, columns 0\.\.255\) failed "
        r"after 2 attempt\(s\): INPUT: reading pixels failed",
    ):
        _run(scene, cluster, tmp_path / "failing", block_size=256, retries=1, probe=functools.partial(_raise, None, 2))
    assert not os.path.exists(tmp_path / "failing" / "output.vrt")
    assert not partials(tmp_path)


def test_cancel_keeps_finished_blocks_and_a_rerun_resumes(cluster, scene, tmp_path):
    progress = []
    with pytest.raises(InferenceCancelled, match="finished block"):
        _run(
            scene,
            cluster,
            tmp_path,
            block_size=256,
            on_progress=progress.append,
            is_cancelled=lambda: bool(progress) and progress[-1].blocks_done >= 1,
        )
    assert not any(os.path.exists(path) for path in _outputs(tmp_path, "vrt").values())  # nothing final
    assert not partials(tmp_path)
    finished = [
        name for name in os.listdir(tmp_path / "output_blocks") if re.match(r"^[0-9a-f]{12}_r\d+_c\d+\.json$", name)
    ]
    assert 1 <= len(finished) < 4
    messages = []
    _, outputs = _run(scene, cluster, tmp_path, block_size=256, log=messages.append)
    assert any(f"Resuming: {len(finished)} of 4 block(s) already done" in m for m in messages), messages
    assert_same_as_reference(scene, outputs, overviews=False)


def test_workers_with_other_versions_are_refused(cluster, scene, tmp_path):
    model = scene.model()
    finals = check_job_outputs(_outputs(tmp_path, "vrt"), scene.config, scene.image, model)
    plan = plan_job(model, scene.config, scene.image, finals, lambda message: None)
    job = create_job(plan, choose_layout(plan.grid, 256), ModelBundle.of(model))
    job = replace(job, versions={**job.versions, "torch": "0.0.1"})
    client = distributed.Client(cluster)
    try:
        with pytest.raises(VersionMismatchError, match=r"torch.*0\.0\.1"):
            run_blocks_on_dask(job, client, RunCallbacks())
    finally:
        client.close()
    assert not os.path.exists(tmp_path / "output_blocks")


def _hide_model(folder: str, index: int, done: int) -> None:
    """Make the model unreadable by its path before the worker loads it (the other worker may have done so)."""
    with contextlib.suppress(FileNotFoundError):
        os.rename(folder, folder + "-hidden")


def test_a_model_workers_cannot_read_is_shipped_to_them(cluster, scene, tmp_path):
    folder, threads = tmp_path / "model", torch.get_num_threads()
    model = load_model(write_model(folder, seed=5))  # weights no worker has loaded yet
    with pytest.raises(BlockFailedError, match="cannot read .*net.pt"):
        _run(
            scene,
            cluster,
            tmp_path / "unreadable",
            model=model,
            retries=0,
            probe=functools.partial(_hide_model, str(folder)),
        )
    shutil.move(str(folder) + "-hidden", str(folder))
    _, outputs = _run(
        scene,
        cluster,
        tmp_path / "shipped",
        model=model,
        ship_model=True,
        probe=functools.partial(_hide_model, str(folder)),
    )
    assert not folder.exists()  # the workers computed with the shipped copies
    torch.set_num_threads(1)
    try:
        expected = MCDropoutInferenceProcessor(model, **SETTINGS).process(
            scene.image, output_path=str(tmp_path / "e.tif")
        )
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(read_band(outputs["OUTPUT"]), read_band(expected["segmentation"]))


def test_local_n_hosts_its_workers_in_a_helper_process(scene, tmp_path):
    checked = {}

    def inspect(message: str) -> None:  # the run says where the cluster is before submitting blocks
        found = re.match(r"^Dask at (tcp://\S+):", message)
        if found:
            with distributed.Client(found.group(1), timeout="10s") as client:
                checked["env"] = client.run(
                    lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("MALLOC_ARENA_MAX"), os.getppid())
                )
                checked["config"] = client.run(lambda: {key: dask.config.get(key) for key in QUIET_CONFIG})
                checked["imported"] = client.run_on_scheduler(lambda: BLOCK_MODULE in sys.modules)
                noisy = client.submit(print, "x" * (1 << 18), flush=True, pure=False)  # more than a pipe holds
                checked["printed"] = noisy.result(timeout=60) is None
                checked["address"] = found.group(1)

    processor = MCDropoutInferenceProcessor(scene.model(), **SETTINGS, scheduler="local:1")
    paths = processor.process(scene.image, output_path=str(tmp_path / "classes.vrt"), log=inspect)
    assert len(checked["env"]) == 1
    assert all(trim is None for trim, _, _ in checked["env"].values())  # the nanny's MALLOC_TRIM_THRESHOLD_ is off
    assert all(arenas == "1" for _, arenas, _ in checked["env"].values())  # the task thread uses the main arena
    assert all(parent != os.getpid() for _, _, parent in checked["env"].values())  # not children of this process
    assert list(checked["config"].values()) == [QUIET_CONFIG]  # Dask's profiler off, its housekeeping slowed
    assert checked["imported"]  # the scheduler unpickles tasks: the helper imported their code while starting
    assert checked["printed"]  # a worker's output is read: printing does not block it
    np.testing.assert_array_equal(read_band(paths["segmentation"]), read_band(scene.reference["OUTPUT"]))
    np.testing.assert_array_equal(read_band(paths["uncertainty"]), read_band(scene.reference["OUTPUT_UNCERTAINTY"]))
    assert paths["uncertainty"].endswith("classes_mc_uncertainty.vrt")
    with pytest.raises((OSError, TimeoutError)):  # the helper and its cluster are gone
        distributed.Client(checked["address"], timeout="2s")

"""Blocks without a cluster: layout and automatic size, halo overhead, plans as JSON, the job's fingerprint and
records, VRT text, the checks before a job, the ``local:N`` interpreter, and the job-array commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from core_fixtures import SmallConvNet, random_image, write_geotiff
from distributed_fixtures import KEYS, SETTINGS, assert_same_as_reference, read_band
from osgeo import gdal, osr

from mc_uncertainty_plugin.core import InferenceConfig, InferenceError, LoadedModel, McUncertaintyError, ParameterError
from mc_uncertainty_plugin.core.distributed.__main__ import main as cli
from mc_uncertainty_plugin.core.distributed.block_task import (
    VersionMismatchError,
    model_file_paths,
    run_block,
    shipped_name,
)
from mc_uncertainty_plugin.core.distributed.blocks import (
    MAX_BLOCK_EDGE,
    BlockLayout,
    alignment_unit,
    block_window_counts,
    choose_layout,
    halo_overhead,
    parse_block_size,
)
from mc_uncertainty_plugin.core.distributed.job import (
    BlockRecord,
    Job,
    ModelBundle,
    check_job_outputs,
    create_job,
    plan_job,
    read_record,
    write_record,
)
from mc_uncertainty_plugin.core.distributed.local_cluster import worker_python
from mc_uncertainty_plugin.core.distributed.mosaic import VrtSource, overview_factors, vrt_text
from mc_uncertainty_plugin.core.distributed.run import finish_job, parse_scheduler
from mc_uncertainty_plugin.core.distributed.seams import seam_tasks, shared_windows
from mc_uncertainty_plugin.core.distributed.serialise import plan_from_dict, plan_to_dict
from mc_uncertainty_plugin.core.inference.plan import Georeference, OutputSpec, region_batches
from mc_uncertainty_plugin.core.inference.tiling import TileGrid
from mc_uncertainty_plugin.core.io.raster_io import GeoTiffWriter

ROOT = Path(__file__).resolve().parents[2]


# -- layout ------------------------------------------------------------------------------------------------------
def test_block_edges_lie_on_256_px_tiles_and_on_the_step():
    assert alignment_unit((256, 256)) == (256, 256)
    assert alignment_unit((128, 192)) == (256, 768)
    assert alignment_unit((200, 256)) == (256, 256)  # lcm 6400 is too coarse: 256 only
    layout = choose_layout(TileGrid((1000, 3000), (512, 512), (256, 384)), block_size=300)
    assert layout.block_shape == (512, 768)  # 300 rounded up to multiples of lcm(256, step)
    covered = np.zeros((1000, 3000), np.int32)
    for region in layout:
        covered[region.row : region.row_end, region.col : region.col_end] += 1
    assert (covered == 1).all()  # every pixel in exactly one block


@pytest.mark.parametrize(
    "shape,tile,step,edge",
    [
        ((1000, 1300), (128, 128), (64, 64), 256),
        ((700, 900), (96, 80), (32, 40), 512),
        ((300, 300), (32, 32), (16, 16), 256),
    ],
)
def test_halo_overhead_counts_the_windows_every_block_runs(shape, tile, step, edge):
    grid = TileGrid(shape, tile, step)
    layout = choose_layout(grid, edge)
    per_block = [sum(len(batch.windows) for batch in region_batches(grid, region, 8192, 4)) for region in layout]
    assert block_window_counts(grid, layout) == per_block
    assert halo_overhead(grid, layout) == pytest.approx(sum(per_block) / len(grid))
    assert halo_overhead(grid, BlockLayout(shape, (4096, 4096))) == 1.0


def test_the_automatic_block_size_keeps_the_halo_small_and_the_workers_busy():
    grid = TileGrid((4096, 4096), (512, 512), (256, 256))
    two = choose_layout(grid, 0, slots=2)
    assert len(two) == 2 and halo_overhead(grid, two) <= 1.07  # two halves: 16 window rows for 15
    assert len(choose_layout(grid, 0, slots=1)) == 1
    country = TileGrid((200_000, 300_000), (512, 512), (256, 256))
    layout = choose_layout(country, 0, slots=64)
    assert max(layout.block_shape) <= MAX_BLOCK_EDGE and halo_overhead(country, layout) <= 1.07
    assert len(layout) >= 64 * 4


@pytest.mark.parametrize(
    "shape,tile,step,edge,pending",
    [
        ((1000, 900), (64, 64), (32, 32), 256, None),  # cuts crossed by one row or column of windows
        ((700, 1030), (96, 80), (40, 56), 256, [5, 0, 3, 6]),  # several rows cross a cut; some blocks done
        ((300, 300), (32, 32), (16, 16), 512, None),  # one block: nothing to share
    ],
)
def test_each_window_crossing_a_cut_runs_once_for_the_blocks_it_touches(shape, tile, step, edge, pending):
    grid = TileGrid(shape, tile, step)
    layout = choose_layout(grid, edge)
    pending = list(range(len(layout))) if pending is None else pending
    touched = {  # brute force: the pending blocks each window overlaps
        window: tuple(
            index
            for index, region in enumerate(layout)
            if index in pending
            and window.row < region.row_end
            and window.row + window.height > region.row
            and window.col < region.col_end
            and window.col + window.width > region.col
        )
        for window in grid
    }
    expected = {window: blocks for window, blocks in touched.items() if len(blocks) > 1}
    assert bool(expected) == (len(layout) > 1)
    assert shared_windows(grid, layout, pending) == expected
    assert list(shared_windows(grid, layout, pending)) == [window for window in grid if window in expected]
    tasks = seam_tasks(grid, layout, pending, 3, slots=2)
    listed = [
        (window, task.blocks, first) for first, group in tasks.items() for task in group for window in task.windows
    ]
    assert sorted(window.key for window, _, _ in listed) == sorted(w.key for w in expected)  # each in one task
    for window, blocks, first in listed:
        assert blocks == expected[window]  # a task holds windows shared by the same blocks
        assert first == min(blocks, key=pending.index)  # submitted before the first block that needs it
    assert all(1 <= len(task.windows) <= 12 for group in tasks.values() for task in group)
    if len(layout) == 1:
        assert not tasks


@pytest.mark.parametrize("value", [-1, "abc", 2.5, True])
def test_a_bad_block_size_is_named(value):
    with pytest.raises(ParameterError, match="BLOCK_SIZE must"):
        parse_block_size(value)
    assert parse_block_size("512") == 512 and parse_block_size(None) == 0


@pytest.mark.parametrize(
    "value,expected",
    [
        ("", ("", None)),
        (None, ("", None)),
        ("local:3", ("local", 3)),
        (" LOCAL:2 ", ("local", 2)),
        ("tcp://node7:8786", ("address", "tcp://node7:8786")),
        ("tls://10.0.0.1:8786", ("address", "tls://10.0.0.1:8786")),
    ],
)
def test_scheduler_values(value, expected):
    assert parse_scheduler(value) == expected


@pytest.mark.parametrize("value", ["local:0", "local:x", "http://node:8786", "8786", "local"])
def test_a_bad_scheduler_is_named_and_echoed(value):
    with pytest.raises(ParameterError, match=f"SCHEDULER must .*got '{value}'"):
        parse_scheduler(value)


# -- plans and jobs ----------------------------------------------------------------------------------------------
def _job(scene, folder: Path, extension: str = "vrt", config: InferenceConfig | None = None, edge: int = 256) -> Job:
    model = scene.model()
    config = config or scene.config
    paths = {key: str(folder / f"{key.lower()}.{extension}") for key in KEYS}
    finals = check_job_outputs(paths, config, scene.image, model)
    plan = plan_job(model, config, scene.image, finals, lambda message: None)
    return create_job(plan, choose_layout(plan.grid, edge), ModelBundle.of(model))


def test_a_plan_survives_json_unchanged(scene, tmp_path):
    job = _job(scene, tmp_path, config=replace(scene.config, seed=2**64 - 1, bands=(3, 1, 2)))
    gcps = Georeference(None, "", ((0.5, 0.5, 10.123456789012345, 20.0, 0.0), (99.0, 0.0, 11.0, 20.5, 1.0)), "WGS84")
    plan = replace(job.plan, georeference=gcps, notes=("a note",))
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan
    again = Job.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again == job and again.plan.outputs[0].color_table == job.plan.outputs[0].color_table
    assert job.plan.outputs[0].path == str(tmp_path / "output.vrt")


def test_the_fingerprint_follows_what_the_blocks_compute(scene, tmp_path):
    job = _job(scene, tmp_path)
    assert _job(scene, tmp_path / "..").fingerprint == job.fingerprint  # where the outputs go: same blocks
    assert _job(scene, tmp_path, config=replace(scene.config, seed=8)).fingerprint != job.fingerprint
    assert _job(scene, tmp_path, edge=512).fingerprint != job.fingerprint
    loaded, model = scene.model(), Path(scene.model_path)
    original = model.read_bytes()
    try:
        model.write_bytes(original + b"\0")  # other model bytes
        assert create_job(job.plan, job.layout, ModelBundle.of(loaded)).fingerprint != job.fingerprint
    finally:
        model.write_bytes(original)
    stat = os.stat(scene.image)
    try:
        os.utime(scene.image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the input changed
        assert create_job(job.plan, job.layout, job.model).fingerprint != job.fingerprint
    finally:
        os.utime(scene.image, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_record_counts_only_for_its_job_and_with_its_files(scene, tmp_path):
    job = _job(scene, tmp_path)
    os.makedirs(job.record_folder)
    block = Path(job.block_file("OUTPUT", 3))
    block.write_bytes(b"12345")
    record = BlockRecord(job.fingerprint, 3, job.layout.region(3), {"OUTPUT": block.name}, {"OUTPUT": 5}, windows=9)
    write_record(job, record)
    assert read_record(job, 3) == record
    assert read_record(replace(job, fingerprint="0" * 64), 3) is None  # another job
    block.write_bytes(b"1234")
    assert read_record(job, 3) is None  # the file is not the one recorded
    block.unlink()
    assert read_record(job, 3) is None
    assert read_record(job, 2) is None  # never written


def test_a_worker_with_other_versions_refuses_the_block(scene, tmp_path):
    job = _job(scene, tmp_path)
    with pytest.raises(VersionMismatchError, match=r"plugin 0\.1\.0 \(client: 9\.9\)"):
        run_block(replace(job, versions={**job.versions, "plugin": "9.9"}), 0)


def test_model_files_come_from_their_paths_or_from_the_shipped_copies(scene, tmp_path):
    bundle = ModelBundle.of(scene.model())
    assert model_file_paths(bundle) == {"model": scene.model_path, "sidecar": scene.model_path[:-3] + ".yaml"}
    moved = replace(
        bundle, files=tuple(replace(f, path=str(tmp_path / "gone" / Path(f.path).name)) for f in bundle.files)
    )
    with pytest.raises(Exception, match="cannot read .*gone/net.pt"):
        model_file_paths(moved, str(tmp_path))
    for original, file in zip(bundle.files, moved.files):
        (tmp_path / shipped_name(moved, file)).write_bytes(Path(original.path).read_bytes())
    shipped = model_file_paths(moved, str(tmp_path))
    assert shipped["model"] == str(tmp_path / shipped_name(moved, moved.files[0]))
    assert Path(shipped["sidecar"]).stem == Path(shipped["model"]).stem  # the TorchScript finds its YAML
    (tmp_path / shipped_name(moved, moved.files[0])).write_bytes(b"tampered")
    with pytest.raises(Exception, match="cannot read"):
        model_file_paths(moved, str(tmp_path))


def test_outputs_of_a_job_are_checked_before_any_work(scene, tmp_path):
    model = scene.model()
    with pytest.raises(ParameterError, match="OUTPUT must end in .vrt"):
        check_job_outputs({"OUTPUT": str(tmp_path / "out.png")}, scene.config, scene.image, model)
    with pytest.raises(ParameterError, match="OUTPUT must differ from INPUT"):
        check_job_outputs({"OUTPUT": scene.image}, scene.config, scene.image, model)
    (tmp_path / "out_blocks").write_text("in the way")
    with pytest.raises(ParameterError, match="block folder"):
        check_job_outputs({"OUTPUT": str(tmp_path / "out.vrt")}, scene.config, scene.image, model)
    with pytest.raises(ParameterError, match="MODEL must be a model file"):
        ModelBundle.of(LoadedModel(SmallConvNet(), in_channels=3))


# -- VRT -----------------------------------------------------------------------------------------------------------
def test_a_vrt_carries_what_the_geotiff_of_a_run_carries(tmp_path):
    spec = OutputSpec(
        "OUTPUT",
        "classes",
        "x.vrt",
        "uint8",
        255,
        "class index",
        (("MC_SEED", "7"), ("MC_X", "a<b")),
        "NEAREST",
        ((1, 2, 3, 255), (4, 5, 6, 128)),
        ("soil", "roof & road"),
    )
    block = tmp_path / "blocks" / "b.tif"
    block.parent.mkdir()
    write_geotiff(block, np.full((1, 20, 30), 1, np.uint8), epsg=None, geotransform=None)
    wgs84 = osr.SpatialReference()
    wgs84.ImportFromEPSG(4326)
    gcps = Georeference(
        None,
        "",
        ((0.0, 0.0, 10.0, 50.0, 0.0), (30.0, 0.0, 11.0, 50.0, 0.0), (0.0, 40.0, 10.0, 49.0, 0.0)),
        wgs84.ExportToWkt(),
    )
    (tmp_path / "m.vrt").write_text(
        vrt_text(spec, (40, 50), gcps, [VrtSource("blocks/b.tif", (20, 30), (10, 5, 20, 30))])
    )
    dataset = gdal.Open(str(tmp_path / "m.vrt"))
    band = dataset.GetRasterBand(1)
    assert dataset.GetMetadata() == {"MC_SEED": "7", "MC_X": "a<b"}
    assert band.GetDescription() == "class index" and band.GetNoDataValue() == 255
    assert band.GetCategoryNames() == ["soil", "roof & road"]
    assert band.GetColorTable().GetColorEntry(1) == (4, 5, 6, 128)
    assert dataset.GetGCPCount() == 3 and "WGS" in dataset.GetGCPProjection()
    values = band.ReadAsArray()
    assert (values[10:30, 5:35] == 1).all() and (values[:10] == 255).all()  # no source: nodata


@pytest.mark.parametrize("width,height", [(300, 44), (44, 44), (5000, 31), (64, 65)])
def test_vrt_overview_levels_follow_the_writer_of_the_blocks(tmp_path, width, height):
    writer = GeoTiffWriter(str(tmp_path / "x.tif"), width, height, np.dtype(np.uint8), 255, None, "")
    try:
        assert overview_factors(width, height) == writer.overview_levels()
    finally:
        writer.abort()


# -- local:N ---------------------------------------------------------------------------------------------------------
def test_inside_qgis_the_workers_get_the_configured_environments_python(tmp_path, monkeypatch):
    assert worker_python("/opt/venv/bin/python3.11") == ("/opt/venv/bin/python3.11", [])
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    monkeypatch.setenv("MC_UNCERTAINTY_PYTHON_ENV", str(env))
    assert worker_python("/usr/bin/qgis") == (str(env / "bin" / "python"), [])  # never the QGIS program
    # inside QGIS even a Python-looking sys.executable (the first python3 on the PATH, as qgis_process reports
    # it) is not the environment that has torch and Dask: the configured one wins
    monkeypatch.setitem(sys.modules, "qgis.core", sys.modules.get("qgis.core", object()))
    assert worker_python("/usr/bin/python3") == (str(env / "bin" / "python"), [])
    monkeypatch.delitem(sys.modules, "qgis.core")
    assert worker_python("/usr/bin/python3") == ("/usr/bin/python3", [])  # a script: its own interpreter


# -- the job array ---------------------------------------------------------------------------------------------------
def test_a_job_array_plans_runs_each_block_and_assembles(scene, tmp_path, capsys):
    plan = str(tmp_path / "job.json")
    settings = [f"--set={key}={json.dumps(value)}" for key, value in SETTINGS.items()]
    assert (
        cli(
            [
                "plan",
                "--input",
                scene.image,
                "--model",
                scene.model_path,
                "--output",
                str(tmp_path / "classes.tif"),
                "--output-uncertainty",
                str(tmp_path / "unc.vrt"),
                "--block-size",
                "256",
                "--plan",
                plan,
            ]
            + settings
        )
        == 0
    )
    assert "4 block(s) of 256x256 px" in capsys.readouterr().out
    with pytest.raises(InferenceError, match="4 of 4 block"):
        finish_job(Job.read(plan))  # nothing is published before every block is done
    assert cli(["assemble", "--plan", plan]) == 1 and "are not done: 0, 1, 2, 3" in capsys.readouterr().err
    for block in (0, 2, 3):
        assert cli(["run-block", "--plan", plan, "--block", str(block)]) == 0
    out = subprocess.run(
        [sys.executable, "-m", "mc_uncertainty_plugin.core.distributed", "run-block", "--plan", plan, "--block", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0 and "block 1 of 4: done" in out.stdout, out.stderr
    assert cli(["run-block", "--plan", plan, "--block", "1"]) == 0 and "already done" in capsys.readouterr().out
    assert cli(["assemble", "--plan", plan]) == 0
    outputs = {"OUTPUT": str(tmp_path / "classes.tif"), "OUTPUT_UNCERTAINTY": str(tmp_path / "unc.vrt")}
    assert_same_as_reference(scene, {"OUTPUT": outputs["OUTPUT"]})
    np.testing.assert_array_equal(
        read_band(outputs["OUTPUT_UNCERTAINTY"]), read_band(scene.reference["OUTPUT_UNCERTAINTY"])
    )
    assert not (tmp_path / "classes_tif_blocks").exists() and (tmp_path / "unc_blocks").is_dir()
    assert (
        cli(["run-block", "--plan", plan, "--block", "4"]) == 1 and "block must be in 0..3" in capsys.readouterr().err
    )


def test_blocks_of_an_earlier_job_go_once_this_one_is_published(scene, tmp_path):
    image = write_geotiff(tmp_path / "small.tif", random_image((40, 50), seed=1))
    earlier = tmp_path / "out_blocks"
    earlier.mkdir()
    stale = ["0123456789ab_classes_r0_c0.tif", "0123456789ab_r0_c0.json", "0123456789ab_job.json", "notes.txt"]
    for name in stale:
        (earlier / name).write_text("x")
    model = scene.model()
    finals = check_job_outputs(
        {"OUTPUT": str(tmp_path / "out.vrt")}, replace(scene.config, export_uncertainty_map=False), image, model
    )
    plan = plan_job(model, replace(scene.config, export_uncertainty_map=False), image, finals, lambda message: None)
    job = create_job(plan, choose_layout(plan.grid, 0), ModelBundle.of(model))
    run_block(job, 0)
    finish_job(job)
    left = sorted(os.listdir(earlier))
    assert not any(name.startswith("0123456789ab") for name in left)
    assert "notes.txt" in left  # not ours: left alone
    assert f"{job.tag}_r0_c0.json" in left and f"{job.tag}_classes_r0_c0.tif" in left  # the VRT's own blocks stay
    np.testing.assert_array_equal(read_band(str(tmp_path / "out.vrt")).shape, (1, 40, 50))


class _OneWorker:
    """A stand-in for a Dask client whose scheduler and one worker are this process."""

    def run(self, function, *args):
        return {"tcp://worker:1": function(*args)}

    def run_on_scheduler(self, function, *args):
        return function(*args)


class _SchedulerWithoutThePlugin(_OneWorker):
    """Its scheduler fails to unpickle calls, as one without the plugin on its path does."""

    def run_on_scheduler(self, function, *args):
        raise RuntimeError(f"Error during deserialization: No module named '{function.__module__.split('.')[0]}'")


def test_a_scheduler_that_cannot_import_the_plugin_is_refused(scene, tmp_path):
    from mc_uncertainty_plugin.core.distributed.workers import check_workers

    with pytest.raises(McUncertaintyError, match=r"Dask scheduler cannot import this plugin .*mc_uncertainty_plugin"):
        check_workers(_SchedulerWithoutThePlugin(), _job(scene, tmp_path))


def test_workers_of_other_versions_are_refused(scene, tmp_path):
    from mc_uncertainty_plugin.core.distributed.workers import check_workers

    job = _job(scene, tmp_path)
    check_workers(_OneWorker(), job)  # this process: the same versions
    with pytest.raises(VersionMismatchError, match="1 Dask worker"):
        check_workers(_OneWorker(), replace(job, versions={**job.versions, "torch": "1.0"}))


def test_processors_check_scheduler_and_block_size_when_built(scene):
    from mc_uncertainty_plugin.core import MCDropoutInferenceProcessor, MultiClassInferenceProcessor

    with pytest.raises(ParameterError, match="SCHEDULER must"):
        MCDropoutInferenceProcessor(scene.model(), scheduler="http://head:8786")
    with pytest.raises(ParameterError, match="BLOCK_SIZE must"):
        MultiClassInferenceProcessor(scene.model(), scheduler="local:2", block_size=-5)
    processor = MultiClassInferenceProcessor(scene.model(), scheduler="local:2", block_size="1024")
    assert processor.uncertainty_path_for("/out/c.vrt") == "/out/c_uncertainty.vrt"
    assert processor.uncertainty_path_for("/out/c.tif") == "/out/c_uncertainty.tif"

"""Nothing a user owns is overwritten, and no run leaves debris: output identities, publishing, temporaries."""

import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from core_fixtures import SmallConvNet, random_image, read_raster, write_geotiff
from osgeo import gdal

from mc_uncertainty_plugin.core import EvaluationConfig, MCDropoutInferenceProcessor, ParameterError, RasterIOError
from mc_uncertainty_plugin.core.evaluation.outputs import evaluate_to_files
from mc_uncertainty_plugin.core.io import output_files
from mc_uncertainty_plugin.core.io.output_files import (
    STALE_AFTER_SECONDS,
    host_tag,
    publish_together,
    remove_stale_temporaries,
    temporary_path,
)

ROOT = Path(__file__).resolve().parents[2]


def run(image: str, **paths) -> dict:
    processor = MCDropoutInferenceProcessor(SmallConvNet(p=0.2), n_samples=2, model_input_shape=32, step_shape=32)
    return processor.process(image, **paths)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_geotiff(folder / "scene.tif", random_image((40, 48)))
    return folder


def test_an_output_that_is_a_source_of_a_vrt_input_is_refused(scene, tmp_path):
    vrt = str(scene / "mosaic.vrt")
    gdal.BuildVRT(vrt, [str(scene / "scene.tif")]).FlushCache()
    before = snapshot(scene)
    with pytest.raises(ParameterError, match=r"OUTPUT must differ from INPUT .*scene\.tif"):
        run(vrt, output_path=str(scene / "scene.tif"))
    with pytest.raises(ParameterError, match=r"OUTPUT_UNCERTAINTY must differ from INPUT"):
        run(vrt, output_path=str(tmp_path / "c.tif"), uncertainty_path=str(scene / "scene.tif"))
    assert snapshot(scene) == before


def test_an_output_that_is_the_archive_of_the_input_is_refused(scene):
    archive = scene / "pack.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(scene / "scene.tif", "scene.tif")
    before = archive.read_bytes()
    with pytest.raises(ParameterError, match=r"OUTPUT must differ from INPUT .*pack\.zip"):
        run(f"/vsizip/{archive}/scene.tif", output_path=str(archive))
    assert archive.read_bytes() == before


def test_hard_links_and_symlinked_folders_are_seen_through(scene, tmp_path):
    linked = tmp_path / "linked.tif"
    os.link(scene / "scene.tif", linked)
    with pytest.raises(ParameterError, match="OUTPUT must differ from INPUT"):
        run(str(scene / "scene.tif"), output_path=str(linked))
    out = tmp_path / "out"
    out.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(out, target_is_directory=True)
    with pytest.raises(ParameterError, match="OUTPUT_UNCERTAINTY must differ from OUTPUT"):
        run(str(scene / "scene.tif"), output_path=str(out / "a.tif"), uncertainty_path=str(alias / "a.tif"))
    assert list(out.iterdir()) == []


def test_an_existing_folder_named_as_output_is_refused_before_any_computing(scene, monkeypatch):
    (scene / "result.tif").mkdir()
    calls = []
    monkeypatch.setattr("mc_uncertainty_plugin.core.inference.plan._probe_classes", lambda *a: calls.append(a))
    with pytest.raises(ParameterError, match="OUTPUT must name a file, not an existing folder"):
        run(str(scene / "scene.tif"), output_path=str(scene / "result.tif"))
    assert calls == []


@pytest.mark.parametrize("name", ["classes.png", "classes.jpg", "classes.xyz", "classes"])
def test_outputs_must_be_geotiffs(scene, tmp_path, name):
    with pytest.raises(ParameterError, match=r"OUTPUT must end in \.tif or \.tiff"):
        run(str(scene / "scene.tif"), output_path=str(tmp_path / name))
    with pytest.raises(ParameterError, match=r"OUTPUT_UNCERTAINTY must end in \.tif or \.tiff"):
        run(str(scene / "scene.tif"), output_path=str(tmp_path / "a.TIFF"), uncertainty_path=str(tmp_path / name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_failed_rename_restores_every_earlier_output(scene, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    image = str(scene / "scene.tif")
    run(image, output_path=str(out / "c.tif"))
    old = snapshot(out)
    real_replace = os.replace
    failures = []

    def failing(src, dst):  # the second output's rename fails (once: putting the old file back works)
        if str(dst).endswith("c_mc_uncertainty.tif") and ".mcu-" in os.path.basename(str(src)) and not failures:
            failures.append(src)
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(output_files.os, "replace", failing)
    processor = MCDropoutInferenceProcessor(
        SmallConvNet(p=0.2), n_samples=2, model_input_shape=32, step_shape=32, seed=99
    )
    with pytest.raises(RasterIOError, match="publishing the outputs failed"):
        processor.process(image, output_path=str(out / "c.tif"))
    assert failures and snapshot(out) == old  # the old pair, byte for byte; no temporary left


def test_publish_together_puts_new_files_in_place_and_drops_the_old_ones(tmp_path):
    finals = [tmp_path / "a.tif", tmp_path / "b.tif"]
    finals[0].write_text("old a")
    temporaries = [temporary_path(str(f)) for f in finals]
    for temporary, text in zip(temporaries, ("new a", "new b")):
        Path(temporary).write_text(text)
    stale_sidecar = tmp_path / "a.tif.aux.xml"
    stale_sidecar.write_text("old sidecar")
    publish_together([(temporaries[0], str(finals[0])), (temporaries[1], str(finals[1])), (None, str(stale_sidecar))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]
    assert finals[0].read_text() == "new a" and finals[1].read_text() == "new b"


def test_temporaries_have_a_fixed_short_name_so_long_output_names_work(scene, tmp_path):
    name = "c" * 236 + ".tif"  # 240 characters: legal on every common file system
    paths = run(
        str(scene / "scene.tif"),
        output_path=str(tmp_path / name),
        uncertainty_path=str(tmp_path / ("u" * 236 + ".tif")),
    )
    assert os.path.basename(paths["segmentation"]) == name
    assert len(os.path.basename(temporary_path(str(tmp_path / name)))) < 50


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_any_name_are_removed_only_when_their_writer_is_gone(tmp_path):
    here = host_tag()
    dead = tmp_path / f".mcu-{here}-{_dead_pid()}-0123abcd.partial"
    dead_sidecar = tmp_path / f"{dead.name}.aux.xml"
    live = tmp_path / f".mcu-{here}-{os.getpid()}-0123abcd.partial"
    other_host = tmp_path / f".mcu-{'f' * 8 if here != 'f' * 8 else 'e' * 8}-{_dead_pid()}-0123abcd.partial"
    old_other_host = tmp_path / f".mcu-{'f' * 8 if here != 'f' * 8 else 'e' * 8}-1-89abcdef.partial"
    earlier_version = tmp_path / f".other_name.tif.{_dead_pid()}-0123456789ab.partial"
    users = tmp_path / ".hidden_by_the_user.partial"
    for path in (dead, dead_sidecar, live, other_host, old_other_host, earlier_version, users):
        path.write_bytes(b"x")
    day_old = time.time() - STALE_AFTER_SECONDS - 60
    os.utime(old_other_host, (day_old, day_old))
    removed = sorted(os.path.basename(p) for p in remove_stale_temporaries(str(tmp_path)))
    assert removed == sorted(p.name for p in (dead, dead_sidecar, old_other_host, earlier_version))
    assert live.exists() and other_host.exists() and users.exists()


def test_a_run_cleans_the_folder_of_dead_runs_whatever_the_output_name(scene, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / f".mcu-{host_tag()}-{_dead_pid()}-0123abcd.partial"
    leftover.write_bytes(b"x")
    lines = []
    MCDropoutInferenceProcessor(SmallConvNet(p=0.2), n_samples=2, model_input_shape=32, step_shape=32).process(
        str(scene / "scene.tif"), output_path=str(out / "other.tif"), log=lines.append
    )
    assert not leftover.exists()
    assert any(leftover.name in line and "did not finish" in line for line in lines)


def test_a_killed_run_on_another_host_sharing_the_folder_is_not_touched(scene, tmp_path, monkeypatch):
    """A writer on another host (same pid space or not) keeps its temporary until it is a day old."""
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / f".mcu-{'0' * 8 if host_tag() != '0' * 8 else '1' * 8}-{_dead_pid()}-0123abcd.partial"
    foreign.write_bytes(b"x")
    run(str(scene / "scene.tif"), output_path=str(out / "c.tif"))
    assert foreign.exists()


# -- evaluation outputs -------------------------------------------------------------------------------------
@pytest.fixture
def evaluated(tmp_path: Path) -> EvaluationConfig:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, (30, 30)).astype(np.uint8)
    paths = {
        "classes_path": write_geotiff(tmp_path / "classes.tif", classes),
        "uncertainty_path": write_geotiff(tmp_path / "unc.tif", rng.random((30, 30)).astype(np.float32)),
        "reference_path": write_geotiff(tmp_path / "ref.tif", rng.integers(0, 3, (30, 30)).astype(np.uint8)),
    }
    return EvaluationConfig(**paths)


@pytest.mark.parametrize("which", ["classes_path", "uncertainty_path", "reference_path"])
def test_evaluate_refuses_to_write_over_its_inputs(evaluated, tmp_path, which):
    target = getattr(evaluated, which)
    before = Path(target).read_bytes()
    with pytest.raises(ParameterError, match=r"OUTPUT_HTML must differ from (CLASSES|UNCERTAINTY|REFERENCE)"):
        evaluate_to_files(evaluated, html_path=target, png_path=str(tmp_path / "r.png"))
    assert Path(target).read_bytes() == before
    assert not (tmp_path / "r.png").exists()


def test_evaluate_refuses_two_outputs_that_are_one_file(evaluated, tmp_path):
    with pytest.raises(ParameterError, match="OUTPUT_JSON must differ from OUTPUT_HTML"):
        evaluate_to_files(evaluated, html_path=str(tmp_path / "r.html"), json_path=str(tmp_path / "r.html"))
    assert not (tmp_path / "r.html").exists()


def test_evaluate_writes_its_three_files_together(evaluated, tmp_path):
    _, written = evaluate_to_files(
        evaluated,
        html_path=str(tmp_path / "r.html"),
        png_path=str(tmp_path / "r.png"),
        json_path=str(tmp_path / "r.json"),
    )
    assert sorted(written) == ["html", "json", "png"]
    assert all(Path(p).stat().st_size > 0 for p in written.values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mcu-")]


@pytest.mark.slow
def test_a_child_killed_while_publishing_never_leaves_a_mixed_pair(scene, tmp_path):
    """kill -9 at the worst moment (between the two renames) leaves the old pair or nothing of the new one."""
    out = tmp_path / "out"
    out.mkdir()
    image = str(scene / "scene.tif")
    run(image, output_path=str(out / "c.tif"))
    old_classes = read_raster(str(out / "c.tif"))
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(ROOT / "tests" / "core")!r})
        from core_fixtures import SmallConvNet
        from mc_uncertainty_plugin.core import MCDropoutInferenceProcessor
        from mc_uncertainty_plugin.core.io import output_files
        real = os.replace
        def replace(src, dst):
            if str(dst).endswith("c_mc_uncertainty.tif") and ".mcu-" in os.path.basename(str(src)):
                os.kill(os.getpid(), 9)
            return real(src, dst)
        output_files.os.replace = replace
        MCDropoutInferenceProcessor(SmallConvNet(p=0.2), n_samples=2, model_input_shape=32, step_shape=32,
                                    seed=5).process({image!r}, output_path={str(out / "c.tif")!r})
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    # the new class raster was in place when the process died: the old uncertainty raster had been moved aside
    # first, so it does not pass for the new one's partner; the next run cleans up what was moved aside
    names = [p.name for p in out.iterdir()]
    assert "c.tif" in names and "c_mc_uncertainty.tif" not in names
    run(image, output_path=str(out / "c.tif"))
    assert sorted(p.name for p in out.iterdir()) == ["c.tif", "c_mc_uncertainty.tif"]
    assert read_raster(str(out / "c.tif")).shape == old_classes.shape

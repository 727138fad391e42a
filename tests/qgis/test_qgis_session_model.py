"""Starting fast: the start-up stages are named and timed, and a model loaded by one run is reused by the next
(Processing and the desktop task share it) as long as its files are unchanged."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingFeedback

from mc_uncertainty_plugin.core.models.cache import SESSION_MODELS

FAST_RUN = {"MODEL_INPUT_SHAPE": "64", "STEP_SHAPE": "32", "N_SAMPLES": 2}


class TimedFeedback(RecordingFeedback):
    """Records each progress text (the label above the dialog's progress bar) with its time."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[tuple[float, str]] = []

    def setProgressText(self, text: str) -> None:  # noqa: N802
        self.texts.append((time.monotonic(), text))
        super().setProgressText(text)


@pytest.fixture
def small_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A YAML config (qgis_test_models.SleepyNet, no sleeping) with a state_dict checkpoint: every loading stage,
    at a small cost."""
    import torch
    from qgis_test_models import SleepyNet

    monkeypatch.setenv("MC_UNCERTAINTY_ALLOWED_TARGETS", "qgis_test_models.")
    torch.manual_seed(0)
    torch.save(SleepyNet(sleep_s=0.0).state_dict(), tmp_path / "small.pth")
    config = tmp_path / "small.yaml"
    config.write_text(
        "model:\n  _target_: qgis_test_models.SleepyNet\n  in_channels: 3\n  classes: 3\n  sleep_s: 0.0\n",
        encoding="utf-8",
    )
    return str(config), str(tmp_path / "small.pth")


@pytest.fixture
def empty_cache() -> Any:
    SESSION_MODELS.clear()
    yield SESSION_MODELS
    SESSION_MODELS.clear()


def run(raster_path: str, model: tuple[str, str | None], tmp_path: Path, name: str) -> tuple[TimedFeedback, float]:
    """processing.run of mc_dropout; returns the feedback and the seconds from the call to the inference stage."""
    import processing

    feedback = TimedFeedback()
    config, checkpoint = model
    started = time.monotonic()
    parameters = {"INPUT": raster_path, "MODEL": config, **FAST_RUN, "OUTPUT": str(tmp_path / f"{name}.tif")}
    if checkpoint:
        parameters["CHECKPOINT"] = checkpoint
    processing.run("mc_uncertainty:mc_dropout", parameters, feedback=feedback)
    computing = next(at for at, text in feedback.texts if text.startswith("Inference"))
    return feedback, computing - started


def test_stages_are_named_and_timed_then_the_model_is_reused(
    mc_plugin: Any, raster_path: str, small_config: tuple[str, str], tmp_path: Path, empty_cache: Any
) -> None:
    first, _ = run(raster_path, small_config, tmp_path, "first")
    labels = [text for _at, text in first.texts if text.endswith("…")]
    assert labels == ["Loading PyTorch…", "Building the model…", "Reading weights…"]
    log = "\n".join(first.infos)
    for stage in ("Loading PyTorch… ", "Building the model… ", "Reading weights… "):
        line = next(line for line in first.infos if line.startswith(stage))
        assert line.endswith(" s") and float(line[len(stage) : -2]) >= 0, line
    assert "Model loaded: small.yaml; kept for the next runs of this session." in log

    second, seconds_to_compute = run(raster_path, small_config, tmp_path, "second")
    log = "\n".join(second.infos)
    assert "Model reused from this session" in log and "small.yaml" in log
    assert not any(line.startswith(("Building the model…", "Reading weights…")) for line in second.infos)
    assert seconds_to_compute < 1.0, f"the second run took {seconds_to_compute:.2f} s to start computing"


def test_a_reused_model_still_reports_its_notes(
    mc_plugin: Any, raster_path: str, yaml_model: tuple[str, str], tmp_path: Path
) -> None:
    for name in ("first", "second"):
        feedback, _ = run(raster_path, yaml_model, tmp_path, name)
        assert any("decoder_dropout=0.2" in line for line in feedback.infos)  # where the dropout acts
    assert any("Model reused" in line for line in feedback.infos)


def test_a_changed_model_file_is_loaded_again(
    mc_plugin: Any, raster_path: str, torchscript_model: str, tmp_path: Path, empty_cache: Any
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(Path(torchscript_model).read_bytes())
    first, _ = run(raster_path, (str(model), None), tmp_path, "first")
    assert any(line.startswith("Reading weights… ") for line in first.infos)
    stat = os.stat(model)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # the file was replaced
    again, _ = run(raster_path, (str(model), None), tmp_path, "second")
    assert any(line.startswith("Reading weights… ") for line in again.infos)
    assert not any("Model reused" in line for line in again.infos)
    assert len(empty_cache) == 2  # both versions kept (bounded: 2)


def test_the_task_reuses_what_processing_loaded(
    mc_plugin: Any, raster_path: str, torchscript_model: str, tmp_path: Path, empty_cache: Any, clean_project: Any
) -> None:
    from test_qgis_task import start

    from mc_uncertainty_plugin.gui.task import McUncertaintyTask, TaskRequest, output_paths

    run(raster_path, (torchscript_model, None), tmp_path, "processing")
    classes, uncertainty = output_paths(str(tmp_path), "scene", "mc_dropout")
    request = TaskRequest(
        raster_path,
        "scene",
        torchscript_model,
        classes,
        uncertainty,
        options={"n_samples": 2, "model_input_shape": "64", "step_shape": "32"},
    )
    task = McUncertaintyTask(request, clean_project)
    watch = start(task)
    watch.wait()
    assert watch.ended == "completed", task.error
    assert any("Model reused from this session" in line for line in task.log)
    assert list(task.stage_seconds) == ["Loading PyTorch…"]  # nothing else to load
    assert len(empty_cache) == 1

"""Model loading as the QGIS user sees it: the allowlist setting and the model notes in the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from qgis.core import QgsProcessingException, QgsSettings

from mc_uncertainty_plugin.bridge import ALLOWED_TARGETS_KEY

TORCHVISION_MODEL = """model:
  _target_: torchvision.ops.misc.Conv2dNormActivation
  in_channels: 3
  out_channels: 3
  kernel_size: 1
"""


@pytest.fixture
def clean_setting():
    settings = QgsSettings()
    settings.remove(ALLOWED_TARGETS_KEY)
    yield settings
    settings.remove(ALLOWED_TARGETS_KEY)


def run(raster: str, model: Path, tmp_path: Path, feedback: Any = None) -> dict[str, Any]:
    import processing

    return processing.run(
        "mc_uncertainty:tta",
        {
            "INPUT": raster,
            "MODEL": str(model),
            "TTA_MODE": "none",
            "MODEL_INPUT_SHAPE": "64",
            "STEP_SHAPE": "64",
            "OUTPUT": str(tmp_path / "c.tif"),
        },
        feedback=feedback,
    )


def test_targets_outside_the_allowlist_need_the_setting(
    mc_plugin: Any, raster_path: str, tmp_path: Path, clean_setting: QgsSettings
) -> None:
    model = tmp_path / "tv.yaml"
    model.write_text(TORCHVISION_MODEL, encoding="utf-8")
    with pytest.raises(QgsProcessingException, match="not allowed"):
        run(raster_path, model, tmp_path)
    assert not (tmp_path / "c.tif").exists()
    clean_setting.setValue(ALLOWED_TARGETS_KEY, "torchvision.ops.")
    results = run(raster_path, model, tmp_path)
    assert Path(results["OUTPUT"]).is_file()


def test_injected_decoder_dropout_is_reported_in_the_log(
    mc_plugin: Any, raster_path: str, tmp_path: Path, feedback: Any
) -> None:
    import segmentation_models_pytorch as smp
    import torch

    net = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4), classes=3)
    torch.save(net.state_dict(), tmp_path / "unet.pth")
    model = tmp_path / "unet.yaml"
    model.write_text(
        "model:\n  _target_: segmentation_models_pytorch.Unet\n  encoder_name: resnet18\n"
        "  encoder_depth: 3\n  decoder_channels: [16, 8, 4]\n  classes: 3\n  decoder_dropout: 0.2\n"
        "checkpoint_path: unet.pth\n",
        encoding="utf-8",
    )
    run(raster_path, model, tmp_path, feedback=feedback)
    assert any("inserted Dropout2d before segmentation_head" in info for info in feedback.infos)


class _FailsLater(__import__("torch").nn.Module):
    def __init__(self) -> None:
        import torch

        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.calls = 0

    def forward(self, x):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls > 3:
            raise RuntimeError("simulated failure")
        return self.conv(x)


def test_a_model_failing_mid_run_gives_a_processing_error_not_a_traceback(
    mc_plugin: Any, raster_path: str, tmp_path: Path
) -> None:
    import torch

    model = tmp_path / "fails.pt"
    torch.jit.save(torch.jit.script(_FailsLater()), str(model))
    with pytest.raises(QgsProcessingException, match="MODEL failed on the window at row"):
        import processing

        processing.run(
            "mc_uncertainty:tta",
            {
                "INPUT": raster_path,
                "MODEL": str(model),
                "TTA_MODE": "none",
                "MODEL_INPUT_SHAPE": "32",
                "STEP_SHAPE": "32",
                "BATCH_SIZE": 1,
                "OUTPUT": str(tmp_path / "c.tif"),
            },
        )
    assert not list(tmp_path.glob("c*.tif"))


def test_the_desktop_task_honours_the_allowlist_setting_as_processing_does(
    mc_plugin: Any, raster_path: str, tmp_path: Path, clean_setting: QgsSettings, clean_project: Any
) -> None:
    """Both routes go through one bridge: a setting honoured by Processing is honoured by the task too."""
    from test_qgis_task import start

    from mc_uncertainty_plugin.gui.task import McUncertaintyTask, TaskRequest

    model = tmp_path / "tv.yaml"
    model.write_text(TORCHVISION_MODEL, encoding="utf-8")

    def task_run(name: str) -> McUncertaintyTask:
        request = TaskRequest(
            raster_path,
            "scene",
            str(model),
            str(tmp_path / f"{name}.tif"),
            method="tta",
            options={"model_input_shape": "64", "step_shape": "64", "tta_mode": "none"},
        )
        task = McUncertaintyTask(request)
        start(task).wait()
        return task

    refused = task_run("refused")
    assert refused.error and "not allowed" in refused.error and not (tmp_path / "refused.tif").exists()
    clean_setting.setValue(ALLOWED_TARGETS_KEY, "torchvision.ops.")
    trusted = task_run("trusted")
    assert trusted.error is None and Path(trusted.paths["segmentation"]).is_file()

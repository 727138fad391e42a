"""Progress (weighted stages, ETA lines), the algorithms' help, and the message for a missing
segmentation-models-pytorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from mc_uncertainty_plugin import python_env
from mc_uncertainty_plugin.progress import EtaLog, StagedFeedback, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_log_every_ten_percent() -> None:
    clock, values, lines = FakeClock(), [], []
    eta = EtaLog(values.append, lines.append, every=10, clock=clock)
    for percent in range(1, 101):
        clock.now += 0.5  # 0.5 s per percent: 50 s in all
        eta(float(percent))
    assert values == [float(p) for p in range(1, 101)]
    assert len(lines) == 9  # 10 % .. 90 %; nothing at 100 %
    assert lines[0] == "10 % — ETA 45 s (5 s elapsed)"
    assert lines[-1] == "90 % — ETA 5 s (45 s elapsed)"


def test_eta_log_skips_to_the_next_mark_after_a_jump() -> None:
    clock, lines = FakeClock(), []
    eta = EtaLog(lambda _p: None, lines.append, every=10, clock=clock)
    clock.now += 30
    eta(37.0)
    eta(38.0)
    clock.now += 10
    eta(41.0)
    assert [line.split(" —")[0] for line in lines] == ["37 %", "41 %"]


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (3.4, 125, 3725)] == ["3 s", "2 min 05 s", "1 h 02 min"]


def test_staged_feedback_weights_and_never_goes_back() -> None:
    feedback = QgsProcessingFeedback()
    values: list[float] = []
    feedback.progressChanged.connect(values.append)
    stages = StagedFeedback(feedback, (("Loading the model", 3), ("Inference", 97)))
    stages.start(0)
    stages.set_progress(100)
    assert feedback.progress() == pytest.approx(3)
    stages.start(1)
    for percent in (10, 50, 99, 99.5, 100):
        stages.set_progress(percent)
    assert feedback.progress() == pytest.approx(100)
    assert values == sorted(values)
    assert 3 + 0.97 * 50 in [pytest.approx(v) for v in values]


def test_mc_dropout_help_explains_costs_and_compatibility(registry: Any) -> None:
    help_text = registry.algorithmById("mc_uncertainty:mc_dropout").shortHelpString()
    for expected in (
        "Monte Carlo Dropout",
        "entropy",
        "mutual_information",
        "5 ≈ 5×",
        "10 ≈ 10×",
        "30 ≈ 30×",
        "diminishing returns",
        "decoder_dropout",
        "degenerate",
        "custom UNet with Dropout2d",
        "HRNet-OCR",
        "not recommended",
        "risky",
        "out of scope",
    ):
        assert expected in help_text, expected
    tta_help = registry.algorithmById("mc_uncertainty:tta").shortHelpString()
    assert "viridis" in tta_help and "group" in tta_help


def test_missing_smp_is_explained(
    run_mc_dropout: Any, yaml_model: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config, checkpoint = yaml_model
    monkeypatch.setattr(python_env, "_module_found", lambda name: name != "segmentation_models_pytorch")
    with pytest.raises(QgsProcessingException) as raised:
        run_mc_dropout(MODEL=config, CHECKPOINT=checkpoint, OUTPUT=str(tmp_path / "classes.tif"))
    message = str(raised.value)
    assert "segmentation_models_pytorch" in message and "pip install segmentation-models-pytorch==0.6.0" in message
    assert not (tmp_path / "classes.tif").exists()
    # a TorchScript model needs no SMP, and a config with another target neither
    assert python_env.missing_model_modules(str(tmp_path / "model.pt")) == []
    other = tmp_path / "other.yaml"
    other.write_text("model:\n  _target_: torch.nn.Identity\n", encoding="utf-8")
    assert python_env.missing_model_modules(str(other)) == []
    assert python_env.missing_model_modules(config) == ["segmentation_models_pytorch"]


@pytest.mark.parametrize("algorithm_id", ["mc_uncertainty:mc_dropout", "mc_uncertainty:tta", "mc_uncertainty:evaluate"])
def test_help_covers_every_parameter_by_its_label(registry: Any, algorithm_id: str) -> None:
    """The help panel names what users see (labels), not keys; every parameter is explained. Keys appear only
    in the command-line example, the help's last paragraph."""
    import re

    algorithm = registry.algorithmById(algorithm_id)
    help_text = algorithm.shortHelpString()
    *body, command_line = help_text.split("\n")
    body_text = "\n".join(body)
    assert command_line.startswith("Command line: qgis_process run " + algorithm_id)
    for definition in algorithm.parameterDefinitions():
        assert f"• {definition.description()}: " in body_text, definition.name()
        assert re.search(rf"\b{definition.name()}\b", body_text) is None, f"key {definition.name()} in the help"
    if algorithm_id != "mc_uncertainty:evaluate":
        for label in (
            "Checkpoint (weights for a YAML model)",
            "Input bands (in model order)",
            "Random seed",
            "Number of classes (0 = from the model)",
            "Batch size (0 = automatic)",
            "Device",
        ):
            assert f"• {label}: " in body_text, label

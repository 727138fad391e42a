"""load_model names its stages, and imports segmentation-models-pytorch only for a config that needs it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from mc_uncertainty_plugin.core.models.loading import STAGE_BUILD, STAGE_WEIGHTS, load_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_stages_of_a_config_and_of_torchscript(tmp_path: Path) -> None:
    net = torch.nn.Conv2d(3, 2, 1)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    config = tmp_path / "m.yaml"
    config.write_text(
        "model:\n  _target_: torch.nn.Conv2d\n  in_channels: 3\n  out_channels: 2\n  kernel_size: 1\n"
        "checkpoint_path: w.pth\n",
        encoding="utf-8",
    )
    stages: list[str] = []
    load_model(str(config), stage=stages.append)
    assert stages == [STAGE_BUILD, STAGE_WEIGHTS]
    stages.clear()
    (tmp_path / "no_weights.yaml").write_text(config.read_text().replace("checkpoint_path: w.pth\n", ""))
    load_model(str(tmp_path / "no_weights.yaml"), stage=stages.append)
    assert stages == [STAGE_BUILD]  # random weights: nothing to read
    stages.clear()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "m.pt"))
    load_model(str(tmp_path / "m.pt"), stage=stages.append)
    assert stages == [STAGE_WEIGHTS]


def test_architecture_modules_are_imported_only_to_build(tmp_path: Path) -> None:
    """In a fresh interpreter: loading a TorchScript model never imports segmentation-models-pytorch (seconds of
    imports), and a config's ``_target_`` module is imported while building (after the "build" stage began), not
    before. A stand-in module plays the architecture package, so the test does not pay SMP's import."""
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 2, 1)), str(tmp_path / "m.pt"))
    (tmp_path / "lazy_arch_for_test.py").write_text("import torch\nNet = torch.nn.Conv2d\n", encoding="utf-8")
    (tmp_path / "lazy.yaml").write_text(
        "model:\n  _target_: lazy_arch_for_test.Net\n  in_channels: 3\n  out_channels: 2\n  kernel_size: 1\n",
        encoding="utf-8",
    )
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path[:0] = [{str(REPO_ROOT)!r}, {str(tmp_path)!r}]
        os.environ["MC_UNCERTAINTY_ALLOWED_TARGETS"] = "lazy_arch_for_test."
        from mc_uncertainty_plugin.core import load_model
        arch = "lazy_arch_for_test"
        load_model({str(tmp_path / "m.pt")!r})
        report = {{"smp": "segmentation_models_pytorch" in sys.modules, "arch_before": arch in sys.modules}}
        seen = []
        load_model({str(tmp_path / "lazy.yaml")!r}, stage=lambda name: seen.append((name, arch in sys.modules)))
        report.update(stages=seen, arch_after=arch in sys.modules,
                      smp_after="segmentation_models_pytorch" in sys.modules)
        print("REPORT" + json.dumps(report))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(lines[-1][len("REPORT") :])
    assert report == {
        "smp": False,
        "arch_before": False,
        "stages": [["build", False]],
        "arch_after": True,
        "smp_after": False,
    }

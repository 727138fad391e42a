"""Models for the QGIS tests that a YAML config names by ``_target_`` (``qgis_test_models.SleepyNet``).

Importable because pytest puts ``tests/qgis`` on ``sys.path``; the tests trust the prefix through
``MC_UNCERTAINTY_ALLOWED_TARGETS`` (see the ``sleepy_model`` fixture).
"""

from __future__ import annotations

import time

import torch
from torch import nn

__all__ = ["SleepyNet"]


class SleepyNet(nn.Module):
    """``Conv(in,8,1) - ReLU - Dropout2d(0.3) - Conv(8,classes,1)`` that sleeps ``sleep_s`` per forward pass
    after the dropout, so every stochastic pass costs that long on any machine (the sleep releases the GIL, as
    torch's kernels do)."""

    def __init__(self, in_channels: int = 3, classes: int = 3, sleep_s: float = 0.02) -> None:
        super().__init__()
        self.sleep_s = sleep_s
        self.first = nn.Conv2d(in_channels, 8, 1)
        self.dropout = nn.Dropout2d(0.3)
        self.last = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.relu(self.first(x)))
        time.sleep(self.sleep_s)
        return self.last(x)

"""Fixtures for the QGIS-layer tests: the registered provider, tiny models and synthetic GeoTIFFs.

Models are built here (no downloads): a TorchScript ``Conv-ReLU-Dropout2d-Conv`` network, the same without
dropout, and an SMP FPN (resnet18, depth 3) described by a trainer-style YAML plus its state_dict. Rasters are
3-band uint8 GeoTIFFs of 100 x 80 px in EPSG:32633. Runs use 64 px tiles and 2-3 samples to stay fast.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from osgeo import gdal, osr
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback
from torch import nn

WIDTH, HEIGHT = 100, 80
EPSG = 32633
GEOTRANSFORM = (500000.0, 10.0, 0.0, 4600000.0, 0.0, -10.0)
NUM_CLASSES = 3
FAST = {"MODEL_INPUT_SHAPE": "64", "STEP_SHAPE": "32", "N_SAMPLES": 3}


def _write_geotiff(path: Path, array: np.ndarray) -> str:
    """Write ``(bands, H, W)`` uint8 ``array`` with the test grid and CRS."""
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(path), array.shape[2], array.shape[1], array.shape[0], gdal.GDT_Byte
    )
    dataset.SetGeoTransform(GEOTRANSFORM)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    dataset.SetProjection(srs.ExportToWkt())
    dataset.WriteArray(array)
    dataset = None
    return str(path)


@pytest.fixture(scope="session")
def mc_plugin(qgis_processing: None, qgis_iface: Any) -> Any:
    """The plugin, started as QGIS Desktop starts it (classFactory + initGui); unloaded at the end."""
    import mc_uncertainty_plugin

    plugin = mc_uncertainty_plugin.classFactory(qgis_iface)
    plugin.initGui()
    yield plugin
    plugin.unload()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mc_data")


@pytest.fixture(scope="session")
def raster_path(data_dir: Path) -> str:
    """A 3-band uint8 100x80 GeoTIFF, EPSG:32633, 10 m pixels, with structure (gradients + noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    bands = np.stack([xx * 2.5, yy * 3.0, (xx + yy) * 1.4]) + rng.normal(0, 20, (3, HEIGHT, WIDTH))
    return _write_geotiff(data_dir / "scene.tif", np.clip(bands, 0, 255).astype(np.uint8))


def _conv_net(dropout: float) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 1), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout2d(dropout))
    layers.append(nn.Conv2d(8, NUM_CLASSES, 1))
    return nn.Sequential(*layers)


def _save_torchscript(module: nn.Module, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.14 flags torch.jit as deprecated
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return str(path)


@pytest.fixture(scope="session")
def torchscript_model(data_dir: Path) -> str:
    """TorchScript ``Conv2d(3,8,1) - ReLU - Dropout2d(0.3) - Conv2d(8,3,1)`` as ``model.pt``."""
    return _save_torchscript(_conv_net(0.3), data_dir / "model.pt")


@pytest.fixture
def sleepy_model(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A YAML config of :class:`qgis_test_models.SleepyNet` (random weights, 20 ms per pass whatever the CPU),
    with ``qgis_test_models.`` trusted as a ``_target_`` prefix for the test."""
    monkeypatch.setenv("MC_UNCERTAINTY_ALLOWED_TARGETS", "qgis_test_models.")
    config = data_dir / "sleepy.yaml"
    config.write_text(
        "model:\n  _target_: qgis_test_models.SleepyNet\n  in_channels: 3\n"
        f"  classes: {NUM_CLASSES}\n  sleep_s: 0.02\n",
        encoding="utf-8",
    )
    return str(config)


@pytest.fixture
def clean_project() -> Any:
    """QGIS's project, emptied (layers and layer tree: result groups too) before and after the test."""
    from qgis.core import QgsProject

    project = QgsProject.instance()
    project.removeAllMapLayers()
    project.layerTreeRoot().removeAllChildren()
    yield project
    project.removeAllMapLayers()
    project.layerTreeRoot().removeAllChildren()


@pytest.fixture(scope="session")
def no_dropout_model(data_dir: Path) -> str:
    """The same network without dropout (MC dropout must warn)."""
    return _save_torchscript(_conv_net(0.0), data_dir / "no_dropout.pt")


@pytest.fixture(scope="session")
def yaml_model(data_dir: Path) -> tuple[str, str]:
    """A trainer-style YAML (SMP FPN, resnet18, depth 3, decoder_dropout 0.2) and its state_dict checkpoint."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.FPN(
        encoder_name="resnet18",
        encoder_depth=3,
        encoder_weights=None,
        in_channels=3,
        classes=NUM_CLASSES,
        decoder_dropout=0.2,
    )
    checkpoint = data_dir / "fpn.pth"
    torch.save(model.state_dict(), checkpoint)
    config = data_dir / "fpn.yaml"
    config.write_text(
        "model:\n"
        "  _target_: segmentation_models_pytorch.FPN\n"
        "  encoder_name: resnet18\n"
        "  encoder_depth: 3\n"
        "  encoder_weights: null\n"
        "  in_channels: 3\n"
        f"  classes: {NUM_CLASSES}\n"
        "  decoder_dropout: 0.2\n"
        "class_names: [background, building, water]\n",
        encoding="utf-8",
    )
    return str(config), str(checkpoint)


class RecordingFeedback(QgsProcessingFeedback):
    """Feedback that keeps what the algorithm reported."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.progress_values: list[float] = []
        self.progressChanged.connect(self.progress_values.append)

    def pushInfo(self, info: str) -> None:  # noqa: N802
        self.infos.append(info)
        super().pushInfo(info)

    def pushWarning(self, warning: str) -> None:  # noqa: N802
        self.warnings.append(warning)
        super().pushWarning(warning)


@pytest.fixture
def feedback() -> RecordingFeedback:
    return RecordingFeedback()


@pytest.fixture
def run_mc_dropout(mc_plugin: Any, raster_path: str, torchscript_model: str) -> Callable[..., dict[str, Any]]:
    """``run(**parameters)``: processing.run of mc_uncertainty:mc_dropout with fast defaults.

    INPUT, MODEL, 64 px tiles, step 32 and N_SAMPLES 3 are filled in unless given; pass ``feedback=`` /
    ``context=`` to watch the run.
    """
    import processing

    def run(
        feedback: QgsProcessingFeedback | None = None, context: QgsProcessingContext | None = None, **parameters: Any
    ) -> dict[str, Any]:
        values = {"INPUT": raster_path, "MODEL": torchscript_model, **FAST, **parameters}
        return processing.run("mc_uncertainty:mc_dropout", values, feedback=feedback, context=context)

    return run


@pytest.fixture(scope="session")
def registry(mc_plugin: Any) -> Any:
    """QGIS's Processing registry with the plugin's provider registered."""
    return QgsApplication.processingRegistry()

"""A scene for the block tests: a raster just over one block high and wide (odd sizes: the last windows of each
axis are shifted inwards), one block of it nodata, a TorchScript model with dropout and a YAML beside it (class
names and colours), and the in-process run with one torch thread to compare against."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from core_fixtures import SmallConvNet, random_image, write_geotiff
from osgeo import gdal

from mc_uncertainty_plugin.core import InferenceConfig, MCDropoutInferenceProcessor, load_model

HEIGHT, WIDTH = 300, 300  # blocks of 256 px: 2 x 2, the last row and column 44 px
NODATA_BLOCK = (0, 256)  # the block at row 0, column 256 (256 x 44 px) is all nodata in the input
SETTINGS = dict(
    n_samples=2,
    uncertainty_mode="mutual_information",
    model_input_shape=(32, 32),
    step_shape=(16, 16),
    seed=7,
    batch_size=3,
)
SIDECAR = (
    "class_names: [soil, roof, road, water]\n"
    "class_colors: ['#d2b48c', '#e41a1c', '#737373', '#377eb8']\n"
    "normalization: {mean: [0.5], std: [0.25], max_pixel_value: 255}\n"
)
KEYS = ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_CONFIDENCE", "OUTPUT_PROBABILITIES", "OUTPUT_CONFIDENT")
PATH_ARGUMENTS = {
    "OUTPUT_CONFIDENCE": "confidence_path",
    "OUTPUT_PROBABILITIES": "probabilities_path",
    "OUTPUT_CONFIDENT": "confident_path",
}
OPTIONAL_OUTPUTS = {"probabilities_dtype": "uint8", "confident_threshold": 0.3}  # stored values: scaled uint8


@dataclass
class Scene:
    folder: Path
    image: str
    model_path: str
    reference: dict[str, str]  # Processing key -> in-process output

    @property
    def config(self) -> InferenceConfig:
        return InferenceConfig(**SETTINGS)

    def model(self):
        return load_model(self.model_path)


def write_model(folder: Path, seed: int = 2) -> str:
    """A scripted SmallConvNet with Dropout2d and its YAML sidecar; returns the ``.pt`` path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "net.pt"
    torch.jit.save(torch.jit.script(SmallConvNet(p=0.3, seed=seed).eval()), str(path))
    (folder / "net.yaml").write_text(SIDECAR, encoding="utf-8")
    return str(path)


def make_scene(folder: Path) -> Scene:
    image = random_image((HEIGHT, WIDTH), seed=11)
    image[image == 0] = 1
    row, col = NODATA_BLOCK
    image[:, row : row + 256, col : col + 256] = 0
    raster = write_geotiff(folder / "scene.tif", image, nodata=0)
    model_path = write_model(folder / "model")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # exact mode: the blocks run with one torch thread
    try:
        processor = MCDropoutInferenceProcessor(load_model(model_path), **SETTINGS)
        paths = processor.process(
            raster,
            output_path=str(folder / "reference.tif"),
            **{name: str(folder / f"reference_{key.lower()}.tif") for key, name in PATH_ARGUMENTS.items()},
            **OPTIONAL_OUTPUTS,
        )
    finally:
        torch.set_num_threads(before)
    names = ("segmentation", "uncertainty", "confidence", "probabilities", "confident")
    reference = dict(zip(KEYS, (paths[name] for name in names)))
    return Scene(folder, raster, model_path, reference)


def read_band(path: str, overview: int | None = None) -> np.ndarray:
    """Every band of ``path`` (or of one overview level): ``(bands, h, w)``."""
    dataset = gdal.Open(path)
    assert dataset is not None, path
    bands = [dataset.GetRasterBand(number) for number in range(1, dataset.RasterCount + 1)]
    if overview is not None:
        bands = [band.GetOverview(overview) for band in bands]
    return np.stack([band.ReadAsArray() for band in bands])


def overview_count(path: str) -> int:
    dataset = gdal.Open(path)
    return dataset.GetRasterBand(1).GetOverviewCount()


def partials(folder: Path) -> list[str]:
    """Temporary files anywhere under ``folder``."""
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names if ".partial" in name]


def assert_same_as_reference(scene: Scene, outputs: dict[str, str], overviews: bool = True) -> None:
    """Every output equals the in-process run bit for bit, overviews included."""
    for key, path in outputs.items():
        expected = scene.reference[key]
        np.testing.assert_array_equal(read_band(path), read_band(expected), err_msg=key)
        if overviews:
            count = overview_count(expected)
            assert overview_count(path) == count, key
            for level in range(count):
                np.testing.assert_array_equal(
                    read_band(path, level), read_band(expected, level), err_msg=f"{key} {level}"
                )

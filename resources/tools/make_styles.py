"""Write the QGIS layer styles (.qml) shipped in ``resources/styles/`` for outputs opened by hand.

The plugin styles the layers it loads itself; these files are for users who open an output later (Layer
Properties ▸ Symbology ▸ Style ▸ Load Style…, or a copy named like the raster, ``X.qml`` beside ``X.tif``, which
QGIS applies when it opens ``X.tif``). They are made by the plugin's own styling functions
(``mc_uncertainty_plugin.map_layers.styling``) on two small GeoTIFFs and saved by QGIS:

- ``uncertainty_viridis.qml``: singleband pseudocolor, viridis, 0 .. ln 5 (the sample model's 5 classes);
  ``--classes N`` writes ``uncertainty_viridis_N.qml`` for 0 .. ln N instead.
- ``sample_classes.qml``: paletted, the class names and colours of ``resources/sample/model.yaml``.

Usage (needs QGIS's Python; offscreen is fine)::

    QT_QPA_PLATFORM=offscreen .venv/bin/python resources/tools/make_styles.py [--classes N] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STYLES_DIR = REPO_ROOT / "resources" / "styles"
SAMPLE_CONFIG = REPO_ROOT / "resources" / "sample" / "model.yaml"
UNCERTAINTY_STYLE = "uncertainty_viridis.qml"
CLASSES_STYLE = "sample_classes.qml"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _tiny_raster(path: Path, dtype: int, values: list[list[float]], metadata: dict[str, str]) -> str:
    from osgeo import gdal

    dataset = gdal.GetDriverByName("GTiff").Create(str(path), len(values[0]), len(values), 1, dtype)
    dataset.SetGeoTransform((0, 1, 0, 0, 0, -1))
    dataset.SetMetadata(metadata)
    band = dataset.GetRasterBand(1)
    band.SetNoDataValue(255 if dtype == gdal.GDT_Byte else -9999)
    import numpy as np

    band.WriteArray(np.array(values))
    dataset = None
    return str(path)


def sample_legend(config_path: Path = SAMPLE_CONFIG) -> tuple[list[str], list[str]]:
    """``class_names`` and ``class_colors`` of a model config."""
    import yaml

    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    return [str(n) for n in config["class_names"]], [str(c) for c in config["class_colors"]]


def write_styles(output_dir: Path, num_classes: int | None = None, config_path: Path = SAMPLE_CONFIG) -> list[Path]:
    """Write the styles into ``output_dir`` (QGIS must be initialised); returns their paths."""
    from osgeo import gdal
    from qgis.core import QgsMapLayer, QgsRasterLayer

    from mc_uncertainty_plugin.map_layers.styling import ClassLegend, style_class_layer, style_uncertainty_layer

    output_dir.mkdir(parents=True, exist_ok=True)
    categories = QgsMapLayer.Symbology | QgsMapLayer.Rendering
    names, colors = sample_legend(config_path)
    count = num_classes or len(names)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        maximum = math.log(count)
        unc_path = _tiny_raster(
            Path(tmp) / "u.tif",
            gdal.GDT_Float32,
            [[0.0, maximum / 2, maximum]],
            {"MC_UNCERTAINTY_MAX": f"{maximum:.6f}", "MC_NUM_CLASSES": str(count)},
        )
        layer = QgsRasterLayer(unc_path, "uncertainty")
        style_uncertainty_layer(layer, maximum)
        target = output_dir / (UNCERTAINTY_STYLE if num_classes is None else f"uncertainty_viridis_{count}.qml")
        _save(layer, target, categories)
        written.append(target)
        if num_classes is None:
            cls_path = _tiny_raster(
                Path(tmp) / "c.tif",
                gdal.GDT_Byte,
                [list(range(len(names))) + [255]],
                {"MC_NUM_CLASSES": str(len(names))},
            )
            layer = QgsRasterLayer(cls_path, "classes")
            style_class_layer(layer, ClassLegend(tuple(names), tuple(colors), True))
            target = output_dir / CLASSES_STYLE
            _save(layer, target, categories)
            written.append(target)
        del layer  # closes the temporary raster before its folder goes
    return written


def _save(layer: object, target: Path, categories: object) -> None:
    message, ok = layer.saveNamedStyle(str(target), categories)  # type: ignore[attr-defined]
    if not ok:
        raise SystemExit(f"make_styles: QGIS could not write {target}: {message}")
    _canonicalise(target)


def _canonicalise(path: Path) -> None:
    """Sort every element's attributes: Qt writes them in a random (hash) order, which would make each run of
    this script differ from the last."""
    import xml.etree.ElementTree as ET

    text = path.read_text(encoding="utf-8")
    doctype = text.splitlines()[0] if text.startswith("<!DOCTYPE") else ""
    root = ET.fromstring(text)
    for element in root.iter():
        items = sorted(element.attrib.items())
        element.attrib.clear()
        element.attrib.update(items)
    body = ET.tostring(root, encoding="unicode")
    path.write_text((doctype + "\n" if doctype else "") + body + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=None, help="write uncertainty_viridis_N.qml for 0 .. ln N")
    parser.add_argument("--output-dir", type=Path, default=STYLES_DIR)
    args = parser.parse_args(argv)
    if args.classes is not None and args.classes < 2:
        parser.error(f"--classes must be >= 2, got {args.classes}")

    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        for path in write_styles(args.output_dir, args.classes):
            print(f"make_styles: wrote {path}")
    finally:
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())

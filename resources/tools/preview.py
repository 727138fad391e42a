#!/usr/bin/env python3
"""Three-panel PNG preview of a segmentation run: input RGB | class map (with legend) | uncertainty (with colorbar).

Used by ``resources/tools/demo.py``; also a small command line tool::

    .venv/bin/python resources/tools/preview.py INPUT.tif CLASSES.tif UNCERTAINTY.tif PREVIEW.png [--model model.yaml]

Needs GDAL, numpy and matplotlib (Debian: ``python3-matplotlib``). Only the Agg canvas is used, so no display
and no pyplot state are involved.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mc_uncertainty_plugin.core.io.conventions import CLASS_NODATA, DEFAULT_CLASS_COLORS  # noqa: E402

__all__ = ["write_preview", "read_class_style", "DEFAULT_MAX_SIZE"]

DEFAULT_MAX_SIZE = 1024  # longest side of a panel in pixels; larger rasters are read decimated


def read_class_style(model_yaml: str | Path) -> tuple[list[str] | None, list[str] | None]:
    """``(class_names, class_colors)`` from a model config YAML; each None when the config does not give it."""
    import yaml

    with open(model_yaml, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    names = config.get("class_names")
    colors = config.get("class_colors")
    return (list(map(str, names)) if names else None, list(map(str, colors)) if colors else None)


def _read_size(ds: gdal.Dataset, max_size: int) -> tuple[int, int]:
    """Output (width, height) keeping the aspect ratio with the longest side at most ``max_size``."""
    w, h = ds.RasterXSize, ds.RasterYSize
    scale = min(1.0, max_size / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _read_band(ds: gdal.Dataset, index: int, size: tuple[int, int], resample: int) -> np.ndarray:
    band = ds.GetRasterBand(index)
    return band.ReadAsArray(buf_xsize=size[0], buf_ysize=size[1], resample_alg=resample)


def _open(path: str | Path) -> gdal.Dataset:
    """Open a raster or raise; leaves GDAL's global exception mode as it is (this module is imported by tests)."""
    dataset = gdal.Open(str(path))
    if dataset is None:
        raise ValueError(f"cannot open raster {str(path)!r}: {gdal.GetLastErrorMsg()}")
    return dataset


def _read_rgb(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: uint8 bands as they are, other types stretched to their 2-98 % percentiles.

    One-band rasters are shown in grey; nodata pixels are white.
    """
    ds = _open(path)
    indices = [1, 2, 3] if ds.RasterCount >= 3 else [1, 1, 1]
    bands, valid = [], np.ones((size[1], size[0]), bool)
    for i in indices:
        arr = _read_band(ds, i, size, gdal.GRIORA_Average).astype(np.float64)
        nodata = ds.GetRasterBand(i).GetNoDataValue()
        if nodata is not None:
            valid &= arr != nodata
        bands.append(arr)
    rgb = np.stack(bands, axis=-1)
    if ds.GetRasterBand(1).DataType == gdal.GDT_Byte:
        rgb = rgb / 255.0
    else:
        for c in range(3):
            v = rgb[..., c][valid]
            lo, hi = np.percentile(v, [2, 98]) if v.size else (0.0, 1.0)
            rgb[..., c] = (rgb[..., c] - lo) / (hi - lo if hi > lo else 1.0)
    rgb = np.clip(rgb, 0.0, 1.0)
    rgb[~valid] = 1.0
    return rgb


def _class_style(ds: gdal.Dataset, n: int, names: Sequence[str] | None, colors: Sequence[str] | None):
    """Names and matplotlib colours for classes 0..n-1: given ones, else the raster's own, else defaults."""
    band = ds.GetRasterBand(1)
    if colors is None:
        table = band.GetColorTable()
        if table is not None and table.GetCount() >= n:
            colors = ["#{:02x}{:02x}{:02x}".format(*table.GetColorEntry(i)[:3]) for i in range(n)]
    if colors is None:
        colors = [DEFAULT_CLASS_COLORS[i % len(DEFAULT_CLASS_COLORS)] for i in range(n)]
    if names is None:
        raster_names = band.GetCategoryNames()
        if raster_names and len(raster_names) >= n:
            names = list(raster_names[:n])
    if names is None:
        names = [f"class {i}" for i in range(n)]
    if len(colors) < n or len(names) < n:
        raise ValueError(
            f"the class raster holds classes up to {n - 1}, but only {len(names)} class names and "
            f"{len(colors)} class colours are given."
        )
    return list(names[:n]), list(colors[:n])


def write_preview(
    input_path: str | Path,
    classes_path: str | Path,
    uncertainty_path: str | Path,
    png_path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[str] | None = None,
    num_classes: int | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Draw input RGB | class map | uncertainty side by side and save them as one PNG.

    Args:
        input_path: the input raster; bands 1-3 are shown as RGB (a 1-band raster in grey).
        classes_path: 1-band uint8 class raster; 255 (or the band's nodata) is shown as "nodata" in light grey.
        uncertainty_path: 1-band float uncertainty raster on the same grid; nodata is left light grey.
        png_path: the PNG to write (its folder is created).
        class_names: legend labels per class index; default: the class raster's category names, else "class i".
        class_colors: colours per class index (hex or any matplotlib colour); default: the class raster's colour
            table, else matplotlib's tab10.
        num_classes: C, which fixes the uncertainty scale to [0, ln C]; default: the number of class names/colours
            given, else the highest class index + 1 (at least 2).
        max_size: longest side of each panel in pixels; larger rasters are read decimated (average for the
            RGB and the uncertainty, nearest neighbour for the classes).
        title: optional figure title.
        dpi: PNG resolution.

    Returns:
        The path of the PNG written.

    Raises:
        ValueError: when the three rasters differ in width or height, or too few class names/colours are given.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ds_in, ds_cls, ds_unc = (_open(p) for p in (input_path, classes_path, uncertainty_path))
    shapes = {
        str(p): (d.RasterXSize, d.RasterYSize)
        for p, d in ((input_path, ds_in), (classes_path, ds_cls), (uncertainty_path, ds_unc))
    }
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the rasters must have the same width and height, got {shapes}.")
    size = _read_size(ds_in, max_size)

    rgb = _read_rgb(input_path, size)

    classes = _read_band(ds_cls, 1, size, gdal.GRIORA_NearestNeighbour).astype(np.int64)
    cls_nodata = ds_cls.GetRasterBand(1).GetNoDataValue()
    cls_invalid = classes == CLASS_NODATA
    if cls_nodata is not None:
        cls_invalid |= classes == int(cls_nodata)
    given = len(class_colors) if class_colors is not None else (len(class_names) if class_names is not None else 0)
    n = max(given, int(num_classes or 0), int(classes[~cls_invalid].max()) + 1 if (~cls_invalid).any() else 1)
    names, colors = _class_style(ds_cls, n, class_names, class_colors)

    unc = _read_band(ds_unc, 1, size, gdal.GRIORA_Average).astype(np.float64)
    unc_nodata = ds_unc.GetRasterBand(1).GetNoDataValue()
    unc_invalid = ~np.isfinite(unc)
    if unc_nodata is not None:
        unc_invalid |= unc == unc_nodata
    c_scale = int(num_classes) if num_classes else max(n, 2)
    vmax = math.log(c_scale)
    unc_label = ds_unc.GetRasterBand(1).GetDescription() or "uncertainty"

    h, w = classes.shape
    panel_in = 4.6
    fig = Figure(figsize=(3 * panel_in + 1.4, panel_in * h / w + 1.5), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("#dddddd")

    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title(f"Input RGB\n{Path(input_path).name}", fontsize=10)

    cmap_cls = ListedColormap(colors)
    cmap_cls.set_bad("#dddddd")
    axes[1].imshow(
        np.ma.masked_array(classes, cls_invalid),
        cmap=cmap_cls,
        norm=BoundaryNorm(np.arange(-0.5, n + 0.5), n),
        interpolation="nearest",
    )
    axes[1].set_title(f"Classes\n{Path(classes_path).name}", fontsize=10)
    handles = [
        Patch(facecolor=c, edgecolor="black", linewidth=0.5, label=f"{i} {name}")
        for i, (name, c) in enumerate(zip(names, colors))
    ]
    if cls_invalid.any():
        handles.append(Patch(facecolor="#dddddd", edgecolor="black", linewidth=0.5, label="nodata"))
    axes[1].legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=min(3, len(handles)),
        fontsize=8,
        frameon=False,
    )

    cmap_unc = colormaps["viridis"].copy()
    cmap_unc.set_bad("#dddddd")
    im = axes[2].imshow(
        np.ma.masked_array(unc, unc_invalid), cmap=cmap_unc, vmin=0.0, vmax=vmax, interpolation="nearest"
    )
    axes[2].set_title(f"Uncertainty: {unc_label}\n{Path(uncertainty_path).name}", fontsize=10)
    cbar = fig.colorbar(im, cax=axes[2].inset_axes([1.03, 0.0, 0.045, 1.0]))  # keeps the 3 panels equal
    cbar.set_ticks([0.0, vmax / 2, vmax])
    cbar.set_ticklabels(["0", f"{vmax / 2:.2f}", f"ln {c_scale} = {vmax:.2f}"])
    cbar.ax.tick_params(labelsize=8)

    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.905, top=0.84 if title else 0.89, bottom=0.14, wspace=0.06)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=dpi)
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input")
    parser.add_argument("classes")
    parser.add_argument("uncertainty")
    parser.add_argument("png")
    parser.add_argument("--model", help="model config YAML with class_names / class_colors")
    parser.add_argument("--num-classes", type=int, default=None, help="C for the uncertainty scale [0, ln C]")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE)
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    names, colors = read_class_style(args.model) if args.model else (None, None)
    out = write_preview(
        args.input,
        args.classes,
        args.uncertainty,
        args.png,
        class_names=names,
        class_colors=colors,
        num_classes=args.num_classes,
        max_size=args.max_size,
        title=args.title,
    )
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

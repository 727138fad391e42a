#!/usr/bin/env python3
"""PNG of the regions to review: the patches of a review_regions layer drawn over the input and the uncertainty.

Used by ``resources/tools/demo.py`` (``demo_output/sample_review.png``, copied to
``resources/docs/sample_review.png`` for the README); also a small command line tool::

    .venv/bin/python resources/tools/review_preview.py INPUT.tif UNCERTAINTY.tif REVIEW.gpkg PREVIEW.png [--palette]

The README's figure is ``make demo`` followed by::

    .venv/bin/python resources/tools/review_preview.py resources/sample/sample.tif \
        demo_output/sample_classes_mc_uncertainty.tif demo_output/sample_review.gpkg \
        resources/docs/sample_review.png --num-classes 5 --palette \
        --title "Regions to review: 8 patches of 64 px, ranked by mean uncertainty"

Outlines are coloured by rank as the QGIS style colours them (red = rank 1 ... white = last, on a dark halo) and
labelled with the rank. Needs GDAL, numpy and matplotlib; only the Agg canvas is used.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from preview import DEFAULT_MAX_SIZE, _open, _read_rgb, _read_size  # noqa: E402

from mc_uncertainty_plugin.core.review.vector import RANK_COLORS  # noqa: E402

__all__ = ["read_patches", "write_review_preview"]


def read_patches(vector_path: str | Path, raster: gdal.Dataset) -> list[tuple[int, np.ndarray, dict]]:
    """``(rank, (5, 2) pixel corners (col, row), attributes)`` per patch, in rank order.

    Map coordinates go back to the raster's pixels through its inverse geotransform (the default
    ``(0, 1, 0, 0, 0, -1)`` of the vector writer when the raster has none).
    """
    gt = raster.GetGeoTransform(can_return_null=True) or (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    inverse = gdal.InvGeoTransform(gt)
    dataset = ogr.Open(str(vector_path))
    if dataset is None:
        raise ValueError(f"cannot open vector file {str(vector_path)!r}: {gdal.GetLastErrorMsg()}")
    layer = dataset.GetLayer(0)
    patches = []
    for feature in layer:
        points = feature.GetGeometryRef().GetGeometryRef(0).GetPoints()
        pixels = np.array([gdal.ApplyGeoTransform(inverse, x, y) for x, y, *_ in points])
        patches.append((int(feature.GetField("rank")), pixels, feature.items()))
        feature = None
    layer = None
    dataset = None
    return sorted(patches, key=lambda item: item[0])


def _rank_colors(count: int) -> list[tuple[float, float, float, float]]:
    from matplotlib.colors import LinearSegmentedColormap

    ramp = LinearSegmentedColormap.from_list("ranks", list(RANK_COLORS))
    return [ramp(i / (count - 1) if count > 1 else 0.0) for i in range(count)]


def write_review_preview(
    input_path: str | Path,
    uncertainty_path: str | Path,
    review_path: str | Path,
    png_path: str | Path,
    *,
    num_classes: int | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    title: str | None = None,
    dpi: int = 110,
    palette: bool = False,
) -> Path:
    """Draw input RGB | uncertainty, both with the ranked patches, and save them as one PNG.

    Args:
        input_path: the segmented raster (bands 1-3 as RGB).
        uncertainty_path: the uncertainty raster the patches were chosen on (same size as the input).
        review_path: the review_regions output (GeoPackage, GeoJSON, FlatGeobuf).
        png_path: the PNG to write (its folder is created).
        num_classes: C, for the uncertainty scale [0, ln C]; default: the raster's maximum.
        max_size: longest side of each panel in pixels.
        title: optional figure title.
        dpi: PNG resolution.
        palette: store the PNG with a 256-colour palette (a third of the size; for the README).

    Returns:
        The path of the PNG written.
    """
    from matplotlib import colormaps, patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon

    ds_in, ds_unc = _open(input_path), _open(uncertainty_path)
    if (ds_in.RasterXSize, ds_in.RasterYSize) != (ds_unc.RasterXSize, ds_unc.RasterYSize):
        raise ValueError("the input and the uncertainty raster must have the same width and height.")
    size = _read_size(ds_unc, max_size)
    scale = size[0] / ds_unc.RasterXSize
    rgb = _read_rgb(input_path, size)
    band = ds_unc.GetRasterBand(1)
    unc = band.ReadAsArray(buf_xsize=size[0], buf_ysize=size[1], resample_alg=gdal.GRIORA_Average).astype(np.float64)
    invalid = ~np.isfinite(unc) | ((unc == band.GetNoDataValue()) if band.GetNoDataValue() is not None else False)
    vmax = math.log(num_classes) if num_classes else float(np.nanmax(np.where(invalid, np.nan, unc)))
    patches = read_patches(review_path, ds_unc)
    colors = _rank_colors(len(patches))

    fig = Figure(figsize=(2 * 4.6 + 1.0, 4.6 * size[1] / size[0] + 1.2), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title(f"Input\n{Path(input_path).name}", fontsize=10)
    cmap = colormaps["viridis"].copy()
    cmap.set_bad("#dddddd")
    image = axes[1].imshow(np.ma.masked_array(unc, invalid), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    axes[1].set_title(f"Uncertainty and the {len(patches)} regions to review\n{Path(review_path).name}", fontsize=10)
    colorbar = fig.colorbar(image, cax=axes[1].inset_axes([1.03, 0.0, 0.045, 1.0]))
    colorbar.ax.tick_params(labelsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for (rank, pixels, _attributes), color in zip(patches, colors):
            corners = pixels * scale - 0.5  # pixel edges, in imshow's pixel-centre coordinates
            ax.add_patch(
                Polygon(
                    corners,
                    closed=True,
                    fill=False,
                    edgecolor=color,
                    linewidth=1.8,
                    path_effects=[patheffects.withStroke(linewidth=3.4, foreground="black")],
                )
            )
            centre = corners[:4].mean(axis=0)
            ax.text(
                centre[0],
                centre[1],
                str(rank),
                color="white",
                fontsize=9,
                fontweight="bold",
                ha="center",
                va="center",
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "black", "alpha": 0.55, "edgecolor": "none"},
            )
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.93, top=0.84 if title else 0.89, bottom=0.02, wspace=0.06)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=dpi)
    if palette:
        from PIL import Image

        with Image.open(png_path) as image:
            indexed = image.convert("RGB").quantize(
                colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
            )
        indexed.save(png_path, optimize=True)
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input")
    parser.add_argument("uncertainty")
    parser.add_argument("review")
    parser.add_argument("png")
    parser.add_argument("--num-classes", type=int, default=None, help="C for the uncertainty scale [0, ln C]")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE)
    parser.add_argument("--title", default=None)
    parser.add_argument("--palette", action="store_true", help="256-colour PNG (smaller, for the README)")
    args = parser.parse_args(argv)
    print(
        write_review_preview(
            args.input,
            args.uncertainty,
            args.review,
            args.png,
            num_classes=args.num_classes,
            max_size=args.max_size,
            title=args.title,
            palette=args.palette,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Build the demo data in ``resources/sample/``: a synthetic scene, its reference labels and a small trained model.

Run from anywhere (about 3-5 minutes on 2 CPU cores, no GPU, nothing downloaded)::

    .venv/bin/python resources/tools/make_sample.py [--out resources/sample] [--steps 700]

Everything is deterministic: numpy ``Generator`` seeds, ``torch.manual_seed``,
``torch.use_deterministic_algorithms(True)`` and 2 torch threads. The same machine gives the same bytes.

What it writes
--------------
``sample.tif``
    512 x 512 px, 3-band uint8 RGB GeoTIFF, EPSG:32633 (WGS 84 / UTM 33N), 0.5 m pixels, upper-left corner
    E 389000 / N 5820000 (a plausible spot near Berlin). Tiled 256 x 256, DEFLATE. A synthetic scene with five
    classes drawn by :func:`make_scene`:

    0 background  bare soil: brown, multi-scale noise texture (also under building shadows)
    1 building    bright roof rectangles (some rotated) with a ridge line, casting shadows to the south-east
    2 road        straight grey bands 6-14 px wide, some with a dashed centre line
    3 water       smooth blue blobs, darker toward their centre
    4 vegetation  green noisy texture: fields and scattered tree crowns

    Plus one **out-of-distribution region**, never present in training: the pixel window
    ``OOD_WINDOW`` (x 336..463, y 48..175, 128 x 128 px, over soil, a road and a building) is painted saturated
    magenta with grey per-pixel noise (think of a tarp or a sensor artefact), see :func:`paint_ood`. The model
    has never seen such a colour, so its predictions there are wrong and its MC-dropout uncertainty lights up.

``labels.tif``
    The reference class raster of ``sample.tif``: 1 band uint8, same grid and CRS, class indices 0..4, colour
    table from the config, band metadata ``CLASS_NAMES=background,building,...`` (GTiff keeps GDAL category
    names only in a side-car .aux.xml, which is not written), nodata value 255 (no pixel holds it).
    Inside ``OOD_WINDOW`` it keeps the **true class underneath** the painted patch (the scene is drawn first,
    the patch painted over it), so one can measure how wrong the model is there. The window is recorded in the
    metadata of both rasters (``OOD_WINDOW=xoff,yoff,xsize,ysize`` in pixels).

``model.yaml``
    Trainer-style model config (see docs/contract.md): ``segmentation_models_pytorch.FPN`` with the timm encoder
    ``tu-mobilenetv2_050``, small decoder, ``decoder_dropout: 0.2``, the normalization used in training,
    class names and colours, ``checkpoint_path: model.pth``.

``model.pth``
    Plain float32 ``state_dict`` (``torch.save(model.state_dict())``), 918k parameters, about 3.8 MB, loadable
    with ``torch.load(..., weights_only=True)`` into ``FPN(**model_kwargs, encoder_weights=None)``, strict keys.
    Trained here on CPU on 512 x 512 scenes from the same generator with other seeds (without the OOD patch),
    random 128 x 128 crops with flips / 90 degree rotations and brightness/contrast jitter, Adam with a one-cycle
    (cosine) schedule.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: degrade gently on a busy CPU

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from osgeo import gdal, osr  # noqa: E402

gdal.UseExceptions()

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "resources" / "sample"

CLASS_NAMES = ["background", "building", "road", "water", "vegetation"]
CLASS_COLORS = ["#d2b48c", "#e41a1c", "#737373", "#377eb8", "#4daf4a"]
BACKGROUND, BUILDING, ROAD, WATER, VEGETATION = range(5)

SCENE_SIZE = 512
SAMPLE_SEED = 20240
TRAIN_SEEDS = tuple(range(1000, 1024))  # 24 training scenes, disjoint from SAMPLE_SEED
OOD_WINDOW = (336, 48, 128, 128)  # xoff, yoff, xsize, ysize in pixels

EPSG = 32633
GEOTRANSFORM = (389000.0, 0.5, 0.0, 5820000.0, 0.0, -0.5)

MODEL_KWARGS = {
    "_target_": "segmentation_models_pytorch.FPN",
    "encoder_name": "tu-mobilenetv2_050",
    "encoder_weights": "imagenet",
    "in_channels": 3,
    "classes": len(CLASS_NAMES),
    "decoder_pyramid_channels": 128,
    "decoder_segmentation_channels": 64,
    "decoder_dropout": 0.2,
}


# --------------------------------------------------------------------------------------------------------------
# Scene generator (pure numpy)
# --------------------------------------------------------------------------------------------------------------
def smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, periodic, normalised to zero mean and unit std. Returns (H, W) float32."""
    white = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    kernel = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fx**2 + fy**2))
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * kernel))
    field -= field.mean()
    field /= field.std() + 1e-12
    return field.astype(np.float32)


def _band_mask(h: int, w: int, x0: float, y0: float, angle: float, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels within ``half_width`` of the line through (x0, y0) at ``angle``; also the along-line coordinate."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = math.cos(angle), math.sin(angle)
    across = (xx - x0) * (-dy) + (yy - y0) * dx
    along = (xx - x0) * dx + (yy - y0) * dy
    return np.abs(across) <= half_width, along, across


def _rect_mask(h: int, w: int, cx: float, cy: float, half_l: float, half_w: float, angle: float):
    """Rotated rectangle mask and its local coordinates (u along the long side, v across)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (np.abs(u) <= half_l) & (np.abs(v) <= half_w), u, v


def make_scene(rng: np.random.Generator, h: int = SCENE_SIZE, w: int = SCENE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic scene.

    Returns:
        rgb: (H, W, 3) uint8.
        labels: (H, W) uint8 class indices 0..4 (background, building, road, water, vegetation).
    """
    labels = np.zeros((h, w), np.uint8)
    img = np.zeros((h, w, 3), np.float32)

    # background: bare soil
    soil = np.array([150, 122, 92], np.float32) + rng.uniform(-12, 12, 3)
    tex = 0.55 * smooth_noise(rng, h, w, 24) + 0.3 * smooth_noise(rng, h, w, 4) + 0.25 * rng.standard_normal((h, w))
    img[:] = soil + 16.0 * tex[..., None] * np.array([1.0, 0.9, 0.8], np.float32)

    # vegetation: fields (thresholded smooth noise) and tree crowns
    veg_field = smooth_noise(rng, h, w, 28) > rng.uniform(0.3, 0.9)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    crowns = np.zeros((h, w), bool)
    crown_shade = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(25, 60))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3.5, 9.0)
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2
        inside = d2 <= 1.0
        crowns |= inside
        crown_shade = np.where(inside, np.maximum(crown_shade, 1.0 - d2), crown_shade)
    veg = veg_field | crowns
    green = np.array([62, 108, 44], np.float32) + rng.uniform(-10, 10, 3)
    veg_tex = 0.5 * smooth_noise(rng, h, w, 3) + 0.7 * rng.standard_normal((h, w)) + 0.6 * smooth_noise(rng, h, w, 12)
    veg_rgb = green + 18.0 * veg_tex[..., None] + 28.0 * (crown_shade[..., None] - 0.3) * np.array([0.6, 1.0, 0.5])
    img[veg] = veg_rgb[veg]
    labels[veg] = VEGETATION

    # water: smooth blobs
    wfield = smooth_noise(rng, h, w, 45)
    water = wfield > rng.uniform(1.0, 1.6)
    depth = np.clip((wfield - wfield[water].min()) / (np.ptp(wfield[water]) + 1e-6), 0, 1) if water.any() else wfield
    water_rgb = (
        np.array([52, 92, 150], np.float32)
        + rng.uniform(-8, 8, 3)
        - 30.0 * depth[..., None] * np.array([0.6, 0.8, 0.5])
        + 3.0 * smooth_noise(rng, h, w, 6)[..., None]
    )
    img[water] = water_rgb[water]
    labels[water] = WATER

    # roads: straight grey bands, painted over everything so far (bridges over water)
    road = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(2, 5))):
        angle = rng.uniform(0, math.pi)
        half = rng.uniform(3.0, 7.0)
        band, along, across = _band_mask(h, w, rng.uniform(0, w), rng.uniform(0, h), angle, half)
        grey = rng.uniform(115, 150)
        band_rgb = np.full((h, w, 3), grey, np.float32) + np.array([0, 0, 3], np.float32)
        band_rgb += 4.0 * rng.standard_normal((h, w))[..., None]
        if half >= 5.0:  # dashed centre line
            dash = (np.abs(across) <= 0.8) & ((along % 12.0) < 6.0)
            band_rgb[dash] = 215.0
        img[band] = band_rgb[band]
        road |= band
    labels[road] = ROAD

    # buildings: bright roofs with a ridge, shadows to the south-east
    building = np.zeros((h, w), bool)
    roofs = np.array([[212, 210, 204], [232, 226, 214], [205, 112, 88], [188, 178, 168], [220, 196, 150]], np.float32)
    n_target, tries = int(rng.integers(12, 26)), 0
    placed = 0
    while placed < n_target and tries < 400:
        tries += 1
        cx, cy = rng.uniform(10, w - 10), rng.uniform(10, h - 10)
        half_l, half_w = rng.uniform(7, 22), rng.uniform(5, 13)
        angle = 0.0 if rng.random() < 0.5 else rng.uniform(0, math.pi)
        rect, u, v = _rect_mask(h, w, cx, cy, half_l, half_w, angle)
        grown, _, _ = _rect_mask(h, w, cx, cy, half_l + 3, half_w + 3, angle)
        if not rect.any() or (grown & (road | water | building)).any():
            continue
        roof = roofs[rng.integers(len(roofs))] + rng.uniform(-10, 10, 3)
        side = np.where(v >= 0, 1.0, 0.86)[..., None]  # two roof planes
        ridge = (np.abs(v) < 0.8)[..., None]
        roof_rgb = roof * side + 3.0 * rng.standard_normal((h, w))[..., None]
        roof_rgb = np.where(ridge, roof * 0.75, roof_rgb)
        img[rect] = roof_rgb[rect]
        building |= rect
        placed += 1
    labels[building] = BUILDING
    sh_dy, sh_dx = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    shadow = np.zeros((h, w), bool)
    shadow[sh_dy:, sh_dx:] = building[:-sh_dy, :-sh_dx]
    shadow &= ~building
    img[shadow] *= 0.5

    # sensor noise
    img += 2.0 * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def paint_ood(rgb: np.ndarray, window: tuple[int, int, int, int] = OOD_WINDOW, seed: int = 7) -> np.ndarray:
    """Paint the out-of-distribution patch: saturated magenta (255, 0, 255) with grey per-pixel noise (sigma 15).

    Think of a magenta tarp or a sensor artefact. No training scene has saturated magenta (nor any colour with
    so little green), so the model has to extrapolate there. Returns a copy of ``rgb`` (H, W, 3) uint8.
    """
    xoff, yoff, xs, ys = window
    out = rgb.copy()
    noise = 15.0 * np.random.default_rng(seed).standard_normal((ys, xs, 1))
    patch = np.array([255.0, 0.0, 255.0]) + noise
    out[yoff : yoff + ys, xoff : xoff + xs] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------------------------
# GeoTIFF writing
# --------------------------------------------------------------------------------------------------------------
def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def write_geotiff(path: Path, array: np.ndarray, *, labels: bool) -> None:
    """Write (H, W, 3) RGB or (H, W) class raster as a tiled, DEFLATE-compressed GeoTIFF on the sample grid."""
    h, w = array.shape[:2]
    bands = 1 if array.ndim == 2 else array.shape[2]
    options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "PREDICTOR=2"]
    if bands == 3:
        options.append("PHOTOMETRIC=RGB")
    mem = gdal.GetDriverByName("MEM").Create("", w, h, bands, gdal.GDT_Byte)
    mem.SetGeoTransform(GEOTRANSFORM)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    mem.SetProjection(srs.ExportToWkt())
    xoff, yoff, xs, ys = OOD_WINDOW
    mem.SetMetadata(
        {
            "OOD_WINDOW": f"{xoff},{yoff},{xs},{ys}",
            "OOD_NOTE": "pixel window xoff,yoff,xsize,ysize painted with an out-of-distribution texture in sample.tif",
            "SOURCE": "resources/tools/make_sample.py (synthetic)",
        }
    )
    if labels:
        band = mem.GetRasterBand(1)
        band.WriteArray(array)
        band.SetNoDataValue(255)
        band.SetDescription("class")
        ct = gdal.ColorTable()
        for i, color in enumerate(CLASS_COLORS):
            ct.SetColorEntry(i, (*_hex_to_rgb(color), 255))
        band.SetRasterColorTable(ct)
        band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
        band.SetMetadataItem("CLASS_NAMES", ",".join(CLASS_NAMES))  # GTiff keeps category names only in .aux.xml
    else:
        interps = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)
        for i, (name, interp) in enumerate(zip(("red", "green", "blue"), interps)):
            band = mem.GetRasterBand(i + 1)
            band.WriteArray(array[..., i])
            band.SetDescription(name)
            band.SetColorInterpretation(interp)
    path.unlink(missing_ok=True)
    out = gdal.GetDriverByName("GTiff").CreateCopy(str(path), mem, strict=1, options=options)
    out.FlushCache()
    out = mem = None  # close before anything else touches the file
    aux = Path(str(path) + ".aux.xml")
    aux.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Model, normalisation and training
# --------------------------------------------------------------------------------------------------------------
def build_model() -> torch.nn.Module:
    """The model exactly as a loader builds it from the YAML: ``_target_`` kwargs with ``encoder_weights=None``."""
    import segmentation_models_pytorch as smp

    kwargs = {k: v for k, v in MODEL_KWARGS.items() if k != "_target_"}
    kwargs["encoder_weights"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smp.FPN(**kwargs)


def normalization_from(scenes: list[np.ndarray]) -> dict:
    """Per-channel mean/std of the training scenes in [0, 1] units, rounded to 3 decimals (albumentations style)."""
    stack = np.stack(scenes).reshape(-1, 3).astype(np.float64) / 255.0
    return {
        "mean": [round(float(m), 3) for m in stack.mean(0)],
        "std": [round(float(s), 3) for s in stack.std(0)],
        "max_pixel_value": 255,
    }


def normalize(rgb_u8: np.ndarray, norm: dict) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 -> (N, 3, H, W) float32: ``(x / max_pixel_value - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(rgb_u8)).float()
    if x.ndim == 3:
        x = x[None]
    x = x.permute(0, 3, 1, 2) / float(norm["max_pixel_value"])
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def train(model, scenes, scene_labels, norm, *, steps: int, batch: int, crop: int, seed: int) -> float:
    """Adam + cosine LR on random crops with flips, 90 degree rotations and brightness/contrast jitter."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    t0, running = time.time(), None
    n, size = len(scenes), scenes[0].shape[0]
    for step in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            i = int(rng.integers(n))
            r, c = (int(v) for v in rng.integers(0, size - crop + 1, 2))
            x = scenes[i][r : r + crop, c : c + crop].astype(np.float32)
            y = scene_labels[i][r : r + crop, c : c + crop]
            k = int(rng.integers(4))
            x, y = np.rot90(x, k), np.rot90(y, k)
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            x = (x - 128.0) * rng.uniform(0.85, 1.15) + 128.0 + rng.uniform(-12, 12)
            xs.append(np.clip(x, 0, 255))
            ys.append(y.copy())
        xb = normalize(np.stack(xs), norm)
        yb = torch.from_numpy(np.stack(ys).astype(np.int64))
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 100 == 0 or step == 0:
            print(f"  step {step + 1:4d}/{steps}  loss {running:.4f}  {time.time() - t0:6.1f} s", flush=True)
    return time.time() - t0


@torch.no_grad()
def evaluate(model, rgb: np.ndarray, labels: np.ndarray, norm: dict, n_samples: int = 10, seed: int = 0) -> dict:
    """Deterministic and MC-dropout predictions on the full scene; accuracy and entropy in/outside OOD_WINDOW."""
    x = normalize(rgb, norm)
    model.eval()
    pred = model(x).argmax(1)[0].numpy()
    for m in model.modules():  # MC dropout: dropout layers sampling, BatchNorm frozen
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.train()
    torch.manual_seed(seed)
    probs = torch.stack([model(x).softmax(1)[0] for _ in range(n_samples)])  # (T, C, H, W)
    model.eval()
    sys.path.insert(0, str(REPO_ROOT))
    from mc_uncertainty_plugin.core import mutual_information, predictive_entropy

    p_mean = probs.mean(0)
    entropy = predictive_entropy(probs.numpy())
    mi = mutual_information(probs.numpy())
    mc_pred = p_mean.argmax(0).numpy()
    ood = np.zeros(labels.shape, bool)
    xoff, yoff, xs, ys = OOD_WINDOW
    ood[yoff : yoff + ys, xoff : xoff + xs] = True
    out = {}
    for name, mask in (("outside_ood", ~ood), ("inside_ood", ood)):
        out[name] = {
            "acc": float((pred[mask] == labels[mask]).mean()),
            "acc_mc": float((mc_pred[mask] == labels[mask]).mean()),
            "entropy": float(entropy[mask].mean()),
            "mi": float(mi[mask].mean()),
        }
    out["per_class_acc"] = {
        name: float((pred[(labels == c) & ~ood] == c).mean())
        for c, name in enumerate(CLASS_NAMES)
        if ((labels == c) & ~ood).any()
    }
    return out


def model_yaml_text(norm: dict) -> str:
    kw = MODEL_KWARGS
    return f"""\
# Demo model for the MC Uncertainty QGIS plugin. Written by resources/tools/make_sample.py: a small FPN trained
# for a few minutes on CPU on synthetic scenes (same generator as sample.tif, other seeds, no OOD texture).
model:
  _target_: {kw["_target_"]}
  encoder_name: {kw["encoder_name"]}
  encoder_weights: {kw["encoder_weights"]}   # ignored at inference: weights come from the checkpoint
  in_channels: {kw["in_channels"]}
  classes: {kw["classes"]}
  decoder_pyramid_channels: {kw["decoder_pyramid_channels"]}
  decoder_segmentation_channels: {kw["decoder_segmentation_channels"]}
  decoder_dropout: {kw["decoder_dropout"]}       # Dropout2d before the segmentation head: what MC dropout samples
checkpoint_path: model.pth    # plain float32 state_dict, relative to this file
normalization:                # used in training: (x / max_pixel_value - mean) / std, per band
  mean: {norm["mean"]}
  std: {norm["std"]}
  max_pixel_value: {norm["max_pixel_value"]}
class_names: [{", ".join(CLASS_NAMES)}]
class_colors: [{", ".join(f'"{c}"' for c in CLASS_COLORS)}]
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: resources/sample)")
    parser.add_argument("--steps", type=int, default=700, help="training steps (default: 700)")
    parser.add_argument("--batch", type=int, default=16, help="crops per step (default: 16)")
    parser.add_argument("--crop", type=int, default=128, help="crop size in pixels (default: 128)")
    args = parser.parse_args(argv)

    t_start = time.time()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)  # denormal weights/activations late in training slow CPU kernels down 10x
    torch.manual_seed(0)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # the demo scene and its labels
    rgb, labels = make_scene(np.random.default_rng(SAMPLE_SEED))
    rgb = paint_ood(rgb)
    write_geotiff(out / "sample.tif", rgb, labels=False)
    write_geotiff(out / "labels.tif", labels, labels=True)
    counts = np.bincount(labels.ravel(), minlength=len(CLASS_NAMES)) / labels.size
    print(f"wrote {out / 'sample.tif'}  ({rgb.shape[1]}x{rgb.shape[0]} RGB uint8, EPSG:{EPSG}, 0.5 m)")
    shares = ", ".join(f"{n} {c:.1%}" for n, c in zip(CLASS_NAMES, counts))
    print(f"wrote {out / 'labels.tif'}  class shares: {shares}")

    # training data: same generator, other seeds, no OOD patch
    t0 = time.time()
    train_scenes, train_labels = zip(*(make_scene(np.random.default_rng(s)) for s in TRAIN_SEEDS))
    norm = normalization_from(list(train_scenes))
    print(f"generated {len(train_scenes)} training scenes in {time.time() - t0:.1f} s; normalization {norm}")

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: FPN / {MODEL_KWARGS['encoder_name']}, {n_params:,} parameters; training {args.steps} steps "
        f"of {args.batch} x {args.crop}^2 crops"
    )
    train_s = train(
        model, list(train_scenes), list(train_labels), norm, steps=args.steps, batch=args.batch, crop=args.crop, seed=1
    )
    print(f"training took {train_s:.1f} s")

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert all(not v.is_floating_point() or v.dtype == torch.float32 for v in state.values())
    torch.save(state, out / "model.pth")
    (out / "model.yaml").write_text(model_yaml_text(norm), encoding="utf-8")

    # check the written files load the way the plugin loads them
    config = yaml.safe_load((out / "model.yaml").read_text(encoding="utf-8"))
    assert config["model"]["_target_"] == MODEL_KWARGS["_target_"]
    reloaded = build_model()
    reloaded.load_state_dict(torch.load(out / "model.pth", weights_only=True), strict=True)
    size_mb = (out / "model.pth").stat().st_size / 1e6
    print(f"wrote {out / 'model.pth'}  ({size_mb:.2f} MB, float32 state_dict)")
    print(f"wrote {out / 'model.yaml'}")

    metrics = evaluate(reloaded, rgb, labels, config["normalization"])
    for region in ("outside_ood", "inside_ood"):
        m = metrics[region]
        print(
            f"sample.tif {region:11s}: pixel accuracy {m['acc']:.2%} (eval mode), {m['acc_mc']:.2%} "
            f"(MC mean of 10); mean entropy {m['entropy']:.3f}, mean MI {m['mi']:.4f} (ln 5 = {math.log(5):.3f})"
        )
    print("per-class accuracy outside OOD: " + ", ".join(f"{k} {v:.1%}" for k, v in metrics["per_class_acc"].items()))
    print(f"total {time.time() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

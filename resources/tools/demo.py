#!/usr/bin/env python3
"""The demo behind ``make demo``: MC-dropout segmentation of the sample scene through ``qgis_process``.

Runs, from the repository root and with the plugin deployed into the QGIS profile (``make install``)::

    qgis_process.bin run mc_uncertainty:mc_dropout --json -- INPUT=resources/sample/sample.tif \
        MODEL=resources/sample/model.yaml N_SAMPLES=10 MODEL_INPUT_SHAPE=256,256 STEP_SHAPE=128,128 \
        OUTPUT=demo_output/sample_classes.tif

then prints the class and uncertainty rasters it wrote (``results`` OUTPUT and OUTPUT_UNCERTAINTY of the JSON
answer), compares the classes with ``resources/sample/labels.tif`` inside and outside the sample's
out-of-distribution patch, and draws ``demo_output/sample_preview.png`` (input | classes | uncertainty).

Then it picks the regions to review on that uncertainty::

    qgis_process.bin run mc_uncertainty:review_regions --json -- \
        UNCERTAINTY=demo_output/sample_classes_mc_uncertainty.tif CLASSES=demo_output/sample_classes.tif \
        PATCH_SIZE=64 COUNT=8 OUTPUT=demo_output/sample_review.gpkg

prints the ranked patches (and which of them cover the out-of-distribution patch) and draws
``demo_output/sample_review.png`` (the patches over the input and the uncertainty).

Environment: ``QGIS_PROCESS`` overrides the qgis_process executable (default ``qgis_process.bin``: Debian's
``qgis_process`` wrapper script is broken); ``QT_QPA_PLATFORM`` defaults to ``offscreen``.
Exit status: 0 on success, 1 when qgis_process fails or writes no outputs, 2 when qgis_process cannot be run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from osgeo import gdal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preview import read_class_style, write_preview  # noqa: E402
from review_preview import read_patches, write_review_preview  # noqa: E402

gdal.UseExceptions()

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = Path("resources/sample")
OUTPUT_DIR = Path("demo_output")
ALGORITHM = "mc_uncertainty:mc_dropout"
PARAMETERS = {
    "INPUT": str(SAMPLE_DIR / "sample.tif"),
    "MODEL": str(SAMPLE_DIR / "model.yaml"),
    "N_SAMPLES": "10",
    "MODEL_INPUT_SHAPE": "256,256",
    "STEP_SHAPE": "128,128",
    "OUTPUT": str(OUTPUT_DIR / "sample_classes.tif"),
}
DEFAULT_UNCERTAINTY = OUTPUT_DIR / "sample_classes_mc_uncertainty.tif"
PREVIEW = OUTPUT_DIR / "sample_preview.png"
REVIEW_ALGORITHM = "mc_uncertainty:review_regions"
REVIEW_PARAMETERS = {"PATCH_SIZE": "64", "COUNT": "8", "OUTPUT": str(OUTPUT_DIR / "sample_review.gpkg")}
REVIEW_PREVIEW = OUTPUT_DIR / "sample_review.png"
TIMEOUT_S = 1800


def qgis_process_executable() -> str | None:
    """``$QGIS_PROCESS``, else ``qgis_process.bin`` on PATH or in /usr/bin."""
    override = os.environ.get("QGIS_PROCESS")
    if override:
        return override
    found = shutil.which("qgis_process.bin")
    if found:
        return found
    return "/usr/bin/qgis_process.bin" if Path("/usr/bin/qgis_process.bin").exists() else None


def qgis_environment() -> dict[str, str]:
    """The environment for qgis_process: headless Qt, a private runtime dir, and this venv for torch."""
    env = dict(os.environ)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    if "XDG_RUNTIME_DIR" not in env:
        runtime = Path(f"/tmp/runtime-{os.getuid()}")
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    if sys.prefix != sys.base_prefix:  # running in a venv: let the plugin find torch there (see python_env.py)
        env.setdefault("MC_UNCERTAINTY_PYTHON_ENV", sys.prefix)
    return env


def parse_json_answer(stdout: str) -> dict:
    """The JSON object qgis_process printed; tolerates log lines before it."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        start = stdout.find("{")
        if start < 0:
            raise
        return json.JSONDecoder().raw_decode(stdout[start:])[0]


def run_algorithm(
    executable: str, algorithm: str = ALGORITHM, parameters: dict[str, str] | None = None
) -> tuple[dict, float]:
    """Run the algorithm; return (JSON "results", seconds). Exits with status 1 on failure."""
    parameters = PARAMETERS if parameters is None else parameters
    command = [executable, "run", algorithm, "--json", "--"] + [f"{k}={v}" for k, v in parameters.items()]
    print("running:", " ".join(command), flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            command, cwd=REPO_ROOT, env=qgis_environment(), capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        _fail(f"qgis_process did not finish within {TIMEOUT_S} s", exc.stdout, exc.stderr)
    except OSError as exc:
        print(f"demo: cannot run {executable!r}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        _fail(f"qgis_process failed with exit status {proc.returncode}", proc.stdout, proc.stderr)
    try:
        answer = parse_json_answer(proc.stdout)
    except (json.JSONDecodeError, ValueError):
        _fail("qgis_process printed no JSON answer", proc.stdout, proc.stderr)
    results = answer.get("results")
    if not isinstance(results, dict):
        _fail('the JSON answer of qgis_process has no "results"', proc.stdout, proc.stderr)
    return results, seconds


def _fail(message: str, stdout: str | bytes | None, stderr: str | bytes | None) -> None:
    def text(s):
        return s.decode(errors="replace") if isinstance(s, bytes) else (s or "")

    print(f"demo: {message}.", file=sys.stderr)
    if text(stderr).strip():
        print("---- qgis_process stderr ----", file=sys.stderr)
        print(text(stderr).rstrip(), file=sys.stderr)
    if text(stdout).strip():
        print("---- qgis_process stdout (last 4000 characters) ----", file=sys.stderr)
        print(text(stdout)[-4000:].rstrip(), file=sys.stderr)
    raise SystemExit(1)


def _resolve(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def summarise(classes: Path, uncertainty: Path, labels: Path, num_classes: int) -> None:
    """Print accuracy against the reference labels and mean uncertainty, inside and outside the OOD window."""
    cls = gdal.Open(str(classes)).ReadAsArray()
    unc = gdal.Open(str(uncertainty)).ReadAsArray().astype(np.float64)
    ds_ref = gdal.Open(str(labels))
    ref = ds_ref.ReadAsArray()
    if cls.shape != ref.shape or unc.shape != ref.shape:
        print(f"(no comparison with {labels.name}: shapes {cls.shape}, {unc.shape} and {ref.shape} differ)")
        return
    ood = np.zeros(ref.shape, bool)
    window = (ds_ref.GetMetadataItem("OOD_WINDOW") or "").split(",")
    if len(window) == 4:
        xoff, yoff, xs, ys = (int(v) for v in window)
        ood[yoff : yoff + ys, xoff : xoff + xs] = True
    valid = (ref != 255) & (cls != 255) & np.isfinite(unc)
    print(f"uncertainty scale: 0 .. ln {num_classes} = {math.log(num_classes):.3f}")
    for name, mask in (("outside the OOD patch", valid & ~ood), ("inside the OOD patch ", valid & ood)):
        if mask.any():
            print(
                f"{name}: pixel accuracy vs {labels.name} {np.mean(cls[mask] == ref[mask]):6.1%}, "
                f"mean uncertainty {unc[mask].mean():.3f}"
            )


def _ood_window(labels: Path) -> tuple[int, int, int, int] | None:
    """The sample's out-of-distribution window ``(xoff, yoff, xsize, ysize)``, from the labels' metadata."""
    if not labels.is_file():
        return None
    window = (gdal.Open(str(labels)).GetMetadataItem("OOD_WINDOW") or "").split(",")
    return tuple(int(v) for v in window) if len(window) == 4 else None


def review(executable: str, classes: Path, uncertainty: Path, names: list[str] | None) -> int:
    """Run review_regions on the demo's uncertainty, print the ranked patches, draw their preview."""
    parameters = {
        "UNCERTAINTY": os.path.relpath(uncertainty, REPO_ROOT),
        "CLASSES": os.path.relpath(classes, REPO_ROOT),
        **REVIEW_PARAMETERS,
    }
    results, seconds = run_algorithm(executable, REVIEW_ALGORITHM, parameters)
    layer = _resolve(results.get("OUTPUT") or REVIEW_PARAMETERS["OUTPUT"])
    if not layer.is_file():
        print(f"demo: review_regions reported success but {layer} is missing", file=sys.stderr)
        return 1
    print(f"review_regions finished in {seconds:.1f} s")
    print(f"regions to review:  {layer}")
    ood = _ood_window(REPO_ROOT / SAMPLE_DIR / "labels.tif")
    print("rank  pixels (col, row)  mean   max    dominant class  share in the OOD patch")
    for rank, pixels, fields in read_patches(layer, gdal.Open(str(uncertainty))):
        col, row = (int(round(v)) for v in pixels[:4].min(axis=0))
        size = int(round(pixels[:4, 0].max() - pixels[:4, 0].min()))
        share = ""
        if ood is not None:
            dx = max(0, min(col + size, ood[0] + ood[2]) - max(col, ood[0]))
            dy = max(0, min(row + size, ood[1] + ood[3]) - max(row, ood[1]))
            share = f"{dx * dy / size**2:.0%}"
        dominant = fields.get("dominant_class")
        label = names[dominant] if names and dominant is not None and dominant < len(names) else str(dominant)
        print(
            f"{rank:>4}  {col:>5}, {row:<5}         {fields['mean_uncertainty']:.3f}  "
            f"{fields['max_uncertainty']:.3f}  {label:<14}  {share}"
        )
    png = write_review_preview(
        REPO_ROOT / PARAMETERS["INPUT"],
        uncertainty,
        layer,
        REPO_ROOT / REVIEW_PREVIEW,
        num_classes=len(names) if names else None,
        title=f"Regions to review: {REVIEW_PARAMETERS['COUNT']} patches of "
        f"{REVIEW_PARAMETERS['PATCH_SIZE']} px, ranked by mean uncertainty",
    )
    print(f"review preview:     {png}")
    return 0


def main() -> int:
    os.chdir(REPO_ROOT)
    executable = qgis_process_executable()
    if executable is None:
        print("demo: qgis_process.bin not found (install QGIS: `make setup`, or set QGIS_PROCESS).", file=sys.stderr)
        return 2
    (REPO_ROOT / OUTPUT_DIR).mkdir(exist_ok=True)
    for stale in (
        PARAMETERS["OUTPUT"],
        DEFAULT_UNCERTAINTY,
        PREVIEW,
        REVIEW_PARAMETERS["OUTPUT"],
        REVIEW_PREVIEW,
    ):  # and GDAL side-cars of earlier runs
        for path in (_resolve(stale), _resolve(f"{stale}.aux.xml")):
            path.unlink(missing_ok=True)

    results, seconds = run_algorithm(executable)
    classes = _resolve(results.get("OUTPUT") or PARAMETERS["OUTPUT"])
    uncertainty = _resolve(results.get("OUTPUT_UNCERTAINTY") or DEFAULT_UNCERTAINTY)
    missing = [str(p) for p in (classes, uncertainty) if not p.is_file()]
    if missing:
        print(
            f"demo: qgis_process reported success but these outputs are missing: {', '.join(missing)}", file=sys.stderr
        )
        return 1
    print(f"qgis_process finished in {seconds:.1f} s")
    print(f"class raster:       {classes}")
    print(f"uncertainty raster: {uncertainty}")

    names, colors = read_class_style(REPO_ROOT / PARAMETERS["MODEL"])
    num_classes = len(colors or names or []) or 5
    labels = REPO_ROOT / SAMPLE_DIR / "labels.tif"
    if labels.is_file():
        summarise(classes, uncertainty, labels, num_classes)
    png = write_preview(
        REPO_ROOT / PARAMETERS["INPUT"],
        classes,
        uncertainty,
        REPO_ROOT / PREVIEW,
        class_names=names,
        class_colors=colors,
        num_classes=num_classes,
        title=f"MC dropout, T = {PARAMETERS['N_SAMPLES']} (resources/sample)",
    )
    print(f"preview:            {png}")
    return review(executable, classes, uncertainty, names)


if __name__ == "__main__":
    raise SystemExit(main())

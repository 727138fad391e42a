"""A real QGIS Desktop run of the plugin, captured to ``resources/docs/qgis_desktop.png``.

Run it as a script (it needs Xvfb when there is no display: ``apt-get install -y xvfb``)::

    .venv/bin/python resources/tools/desktop_screenshot.py [--output PNG] [--keep]

As a launcher it deploys the plugin (``deploy.py --enable``) into a throw-away QGIS profile, then starts
``qgis --profiles-path <tmp> --code <this file>`` under ``xvfb-run`` (1600x1000). Inside QGIS the same file
(detected by ``qgis.utils.iface``) adds ``resources/sample/sample.tif``, runs ``mc_uncertainty:mc_dropout`` with
``processing.runAndLoadResults`` (MODEL ``resources/sample/model.yaml``, N_SAMPLES 10, MODEL_INPUT_SHAPE 256,
STEP_SHAPE 128) exactly as the Toolbox loads results, zooms to the outputs, waits for the canvas to render,
grabs the main window (layer panel with the result group and the viridis map) and the canvas, writes a JSON
report (layer tree, renderers) and quits. ``--via task`` runs the plugin's QgsTask instead (what the
"MC uncertainty on the active layer…" action starts). The launcher prints the report and fails when the styled layers or
the group are missing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPORT_ENV = "MC_SHOT_REPORT"  # where QGIS writes the JSON report
N_SAMPLES = 10
SETTINGS_ENV = "MC_SHOT_SETTINGS"  # JSON: paths for the run inside QGIS


# ---------------------------------------------------------------------------------------------------------
# Inside QGIS Desktop
# ---------------------------------------------------------------------------------------------------------
def _inside_qgis() -> bool:
    try:
        from qgis.utils import iface
    except ImportError:
        return False
    return iface is not None


def _run_in_qgis() -> None:
    from qgis.PyQt.QtCore import QTimer

    QTimer.singleShot(2000, _capture)  # after the main window is shown and plugins are loaded


def _capture() -> None:
    import traceback

    settings = json.loads(os.environ[SETTINGS_ENV])
    report: dict[str, object] = {"ok": False}
    try:
        _capture_steps(settings, report)
        report["ok"] = True
    except Exception:  # noqa: BLE001 - everything goes into the report
        report["error"] = traceback.format_exc()
    finally:
        Path(os.environ[REPORT_ENV]).write_text(json.dumps(report, indent=2), encoding="utf-8")
        from qgis.core import QgsProject

        QgsProject.instance().setDirty(False)
        os._exit(0)  # no "save the project?" prompt, no shutdown surprises under Xvfb


def _wait_for_canvas(canvas: object, seconds: float = 30.0) -> None:
    from qgis.PyQt.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    canvas.mapCanvasRefreshed.connect(loop.quit)  # type: ignore[attr-defined]
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    canvas.refreshAllLayers()  # type: ignore[attr-defined]
    loop.exec_()


def _pump(seconds: float) -> None:
    from qgis.PyQt.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def _run_task(scene: object, settings: dict[str, str]) -> dict[str, object]:
    """The same run through the plugin's task (what "MC uncertainty on the active layer…" starts)."""
    from qgis.PyQt.QtCore import QEventLoop, QTimer
    from qgis.utils import plugins

    from mc_uncertainty_plugin.gui.task import TaskRequest

    plugin = plugins["mc_uncertainty_plugin"]
    request = TaskRequest(
        input_path=scene.source(),
        input_name=scene.name(),
        model_path=settings["model"],  # type: ignore[attr-defined]
        output_path=settings["output"],
        uncertainty_path=settings["output"].replace(".tif", "_mc_uncertainty.tif"),
        options={"n_samples": N_SAMPLES, "model_input_shape": "256", "step_shape": "128"},
    )
    task = plugin.start_task(request)
    loop = QEventLoop()
    task.taskCompleted.connect(loop.quit)
    task.taskTerminated.connect(loop.quit)
    QTimer.singleShot(300_000, loop.quit)
    loop.exec_()
    return {"paths": task.paths, "error": task.error, "layers": [layer.name() for layer in task.layers]}


def _capture_steps(settings: dict[str, str], report: dict[str, object]) -> None:
    import processing
    from qgis.core import QgsApplication, QgsLayerTreeGroup, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QDockWidget
    from qgis.utils import iface

    window = iface.mainWindow()
    window.resize(1600, 1000)
    window.showMaximized()
    docks = {dock.objectName(): dock for dock in window.findChildren(QDockWidget)}
    if "Browser" in docks:
        docks["Browser"].hide()  # the Layers panel gets the whole height
    if "Layers" in docks:
        window.resizeDocks(
            [docks["Layers"]], [480], Qt.Horizontal
        )  # room for "sample — MC uncertainty (entropy, T = 10)"
    report["providers"] = [p.id() for p in QgsApplication.processingRegistry().providers()]
    from qgis.PyQt.QtWidgets import QAction

    report["actions"] = [
        a.text()
        for a in window.findChildren(QAction)
        if a.objectName() in ("mcUncertaintyOnActiveLayer", "mcUncertaintyInstallPyTorch")
    ]
    project = QgsProject.instance()
    scene = QgsRasterLayer(settings["input"], "sample")
    project.addMapLayer(scene)
    if settings.get("via") == "task":
        report["results"] = _run_task(scene, settings)
    else:
        report["results"] = processing.runAndLoadResults(
            "mc_uncertainty:mc_dropout",
            {
                "INPUT": scene,
                "MODEL": settings["model"],
                "N_SAMPLES": N_SAMPLES,
                "MODEL_INPUT_SHAPE": "256",
                "STEP_SHAPE": "128",
                "OUTPUT": settings["output"],
            },
        )
    root = project.layerTreeRoot()
    report["tree"] = [
        {"group": node.name(), "layers": [child.name() for child in node.children()]}
        if isinstance(node, QgsLayerTreeGroup)
        else {"layer": node.name()}
        for node in root.children()
    ]
    report["renderers"] = {layer.name(): type(layer.renderer()).__name__ for layer in project.mapLayers().values()}
    for node in root.findLayers():
        node.setExpanded(True)
    scene_node = root.findLayer(scene.id())
    if scene_node is not None:
        scene_node.setExpanded(False)
    uncertainty = project.mapLayersByName(f"sample — MC uncertainty (entropy, T = {N_SAMPLES})")
    canvas = iface.mapCanvas()
    if uncertainty:
        iface.setActiveLayer(uncertainty[0])
        canvas.setExtent(uncertainty[0].extent())
    _pump(1.0)
    _wait_for_canvas(canvas)
    _pump(1.0)
    window.grab().save(settings["png"])
    canvas.saveAsImage(settings["canvas_png"])
    report["png"] = settings["png"]


# ---------------------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------------------
def _launch(argv: list[str] | None = None) -> int:
    import argparse
    import shutil
    import subprocess
    import tempfile

    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=repo / "resources" / "docs" / "qgis_desktop.png")
    parser.add_argument("--keep", action="store_true", help="keep the temporary profile and outputs")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument(
        "--via",
        choices=("processing", "task"),
        default="processing",
        help="run through processing.runAndLoadResults (default) or the plugin's QgsTask",
    )
    args = parser.parse_args(argv)

    qgis = shutil.which("qgis")
    xvfb_run = shutil.which("xvfb-run")
    if qgis is None:
        raise SystemExit("desktop_screenshot: qgis is not installed (make setup)")
    display = os.environ.get("DISPLAY")
    if not display and xvfb_run is None:
        raise SystemExit("desktop_screenshot: no display and no xvfb-run (apt-get install -y xvfb)")
    for needed in (repo / "resources" / "sample" / "sample.tif", repo / "resources" / "sample" / "model.yaml"):
        if not needed.is_file():
            raise SystemExit(f"desktop_screenshot: {needed} is missing (resources/tools/make_sample.py makes it)")

    work = Path(tempfile.mkdtemp(prefix="mc_desktop_"))
    profiles = work / "profiles_root"
    deploy = [
        sys.executable,
        str(repo / "resources" / "tools" / "deploy.py"),
        "--enable",
        "--profile-dir",
        str(profiles / "profiles" / "default"),
    ]
    subprocess.run(deploy, check=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir()
    settings = {
        "input": str(repo / "resources" / "sample" / "sample.tif"),
        "model": str(repo / "resources" / "sample" / "model.yaml"),
        "output": str(work / "out" / "sample_classes.tif"),
        "png": str(args.output.resolve()),
        "canvas_png": str(work / "canvas.png"),
        "via": args.via,
    }
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "QGIS_CUSTOM_CONFIG_PATH")}
    env.update(
        {
            REPORT_ENV: str(work / "report.json"),
            SETTINGS_ENV: json.dumps(settings),
            "XDG_RUNTIME_DIR": env.get("XDG_RUNTIME_DIR", str(work / "runtime")),
        }
    )
    Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    command = [
        qgis,
        "--nologo",
        "--noversioncheck",
        "--profiles-path",
        str(profiles),
        "--code",
        str(Path(__file__).resolve()),
    ]
    if not display:
        command = [xvfb_run, "-a", "-s", "-screen 0 1600x1000x24"] + command
    with open(work / "qgis.log", "w", encoding="utf-8") as qgis_log:
        done = subprocess.run(command, env=env, timeout=args.timeout, stdout=qgis_log, stderr=subprocess.STDOUT)
    report_path = work / "report.json"
    if not report_path.is_file():
        raise SystemExit(
            f"desktop_screenshot: QGIS wrote no report (exit {done.returncode}); its output is in {work / 'qgis.log'}"
        )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    expected_group = {
        "group": f"sample — MC Dropout (T = {N_SAMPLES}, entropy)",
        "layers": [f"sample — MC uncertainty (entropy, T = {N_SAMPLES})", f"sample — MC classes (T = {N_SAMPLES})"],
    }
    if len(report.get("actions", [])) != 2:
        raise SystemExit(
            "desktop_screenshot: the plugin's actions (active layer, Install PyTorch…) are not in the main window"
        )
    if not report.get("ok") or expected_group not in report.get("tree", []):
        raise SystemExit("desktop_screenshot: the styled result group is missing (see the report above)")
    print(f"desktop_screenshot: wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")
    return 0


if _inside_qgis():
    _run_in_qgis()
elif __name__ == "__main__":
    sys.exit(_launch())

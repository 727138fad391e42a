"""Deploy the plugin into a QGIS user profile (used by ``make install``).

Copies ``mc_uncertainty_plugin/`` (without ``__pycache__`` and tests), the top-level ``metadata.txt`` and the
``.qml`` styles of ``resources/styles`` (into ``styles/``) into
``<profile>/python/plugins/mc_uncertainty_plugin``, writes ``python_env.txt`` there (the absolute path of the
virtual environment that provides torch, by default the repository's ``.venv``), and with ``--enable`` enables
the plugin so that, in a new shell::

    qgis_process.bin run mc_uncertainty:mc_dropout -- INPUT=image.tif MODEL=model.yaml OUTPUT=classes.tif

works. The profile is ``$QGIS_CUSTOM_CONFIG_PATH/profiles/default`` when that variable is set, else
``~/.local/share/QGIS/QGIS3/profiles/default``. For a profile elsewhere (``--profile-dir ROOT/profiles/NAME``)
qgis_process needs ``QGIS_CUSTOM_CONFIG_PATH=ROOT`` (and NAME must be ROOT's default profile, normally
``default``). On a machine without a display, qgis_process also needs ``QT_QPA_PLATFORM=offscreen``.

Usage::

    .venv/bin/python resources/tools/deploy.py [--enable] [--profile-dir DIR] [--python-env DIR]
"""

from __future__ import annotations

import argparse
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

PLUGIN_NAME = "mc_uncertainty_plugin"
REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / PLUGIN_NAME
METADATA = REPO_ROOT / "metadata.txt"
STYLES_DIR = REPO_ROOT / "resources" / "styles"
ENV_FILE_NAME = "python_env.txt"  # read by mc_uncertainty_plugin/python_env.py
IGNORED = ("__pycache__", "*.pyc", "*.pyo", "tests", "test", ".pytest_cache", ".mypy_cache", ".ruff_cache")


def default_profile_dir() -> Path:
    """The profile qgis_process uses in this shell: ``$QGIS_CUSTOM_CONFIG_PATH`` or the standard location."""
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    root = Path(custom) if custom else Path.home() / ".local" / "share" / "QGIS" / "QGIS3"
    return root / "profiles" / "default"


def default_python_env() -> Path | None:
    """The repository's ``.venv``, else the running virtual environment, else None."""
    venv = REPO_ROOT / ".venv"
    if venv.is_dir():
        return venv
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix)
    return None


def config_root(profile_dir: Path) -> Path | None:
    """``ROOT`` for a profile ``ROOT/profiles/NAME`` (the value of ``QGIS_CUSTOM_CONFIG_PATH``), else None."""
    return profile_dir.parent.parent if profile_dir.parent.name == "profiles" else None


def copy_plugin(profile_dir: Path, python_env: Path | None) -> Path:
    """Replace ``<profile>/python/plugins/mc_uncertainty_plugin`` with a fresh copy; return its path."""
    if not (PACKAGE_DIR / "__init__.py").is_file():
        raise SystemExit(f"deploy: package not found: {PACKAGE_DIR}")
    if not METADATA.is_file():
        raise SystemExit(f"deploy: metadata.txt not found: {METADATA}")
    target = profile_dir / "python" / "plugins" / PLUGIN_NAME
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns(*IGNORED))
    shutil.copy2(METADATA, target / "metadata.txt")
    styles = sorted(STYLES_DIR.glob("*.qml"))  # as in the ZIP of `make package`
    if styles:
        (target / "styles").mkdir(exist_ok=True)
        for style in styles:
            shutil.copy2(style, target / "styles" / style.name)
    if python_env is not None:
        (target / ENV_FILE_NAME).write_text(f"{python_env.resolve()}\n", encoding="utf-8")
    return target


def _qgis_process() -> str | None:
    """The qgis_process executable (Debian's ``qgis_process`` wrapper can be broken: prefer ``.bin``)."""
    return shutil.which("qgis_process.bin") or shutil.which("qgis_process")


def _enabled_in_ini(profile_dir: Path) -> bool:
    ini = profile_dir / "QGIS" / "QGIS3.ini"
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read(ini, encoding="utf-8")
    except configparser.Error:
        return False
    return parser.get("PythonPlugins", PLUGIN_NAME, fallback="").strip().lower() == "true"


def _write_enabled_ini(profile_dir: Path) -> None:
    """Set ``[PythonPlugins] mc_uncertainty_plugin=true`` in the profile's QGIS3.ini (what QGIS itself writes)."""
    from qgis.PyQt.QtCore import QSettings

    settings = QSettings(str(profile_dir / "QGIS" / "QGIS3.ini"), QSettings.IniFormat)
    settings.setValue(f"PythonPlugins/{PLUGIN_NAME}", True)
    settings.sync()


def enable_plugin(profile_dir: Path) -> None:
    """Enable the plugin for qgis_process and QGIS Desktop in ``profile_dir``.

    Runs ``qgis_process.bin plugins enable mc_uncertainty_plugin`` with ``QGIS_CUSTOM_CONFIG_PATH`` pointing at
    the profile's root; if that did not enable it in this profile (qgis_process missing, another default profile),
    writes the setting into the profile's QGIS3.ini directly.
    """
    env = dict(os.environ)
    root = config_root(profile_dir)
    if root is not None:
        env["QGIS_CUSTOM_CONFIG_PATH"] = str(root)
    else:
        env.pop("QGIS_CUSTOM_CONFIG_PATH", None)
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    executable = _qgis_process()
    if executable and root is not None:
        result = subprocess.run(
            [executable, "plugins", "enable", PLUGIN_NAME], env=env, capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0 and "already enabled" not in result.stdout + result.stderr:
            sys.stderr.write(result.stdout + result.stderr)
            print(
                f"deploy: '{executable} plugins enable {PLUGIN_NAME}' failed (exit {result.returncode})",
                file=sys.stderr,
            )
    if not _enabled_in_ini(profile_dir):
        _write_enabled_ini(profile_dir)
    if not _enabled_in_ini(profile_dir):
        raise SystemExit(f"deploy: could not enable {PLUGIN_NAME} in {profile_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help=f"QGIS user profile folder (default: {default_profile_dir()})".replace("%", "%%"),
    )
    parser.add_argument(
        "--python-env",
        type=Path,
        default=None,
        help="virtual environment with torch, written to python_env.txt (default: the repo's .venv)",
    )
    parser.add_argument("--enable", action="store_true", help="enable the plugin (qgis_process plugins enable)")
    args = parser.parse_args(argv)

    profile_dir = (args.profile_dir or default_profile_dir()).expanduser().resolve()
    python_env = args.python_env.expanduser().resolve() if args.python_env else default_python_env()
    target = copy_plugin(profile_dir, python_env)
    print(f"deploy: copied {PLUGIN_NAME} to {target}")
    if python_env is not None:
        print(f"deploy: torch environment {python_env} (in {target / ENV_FILE_NAME})")
    else:
        print("deploy: no virtual environment found; torch must be importable by QGIS's Python", file=sys.stderr)
    if args.enable:
        enable_plugin(profile_dir)
        print(f"deploy: enabled {PLUGIN_NAME} in {profile_dir}")
        root = config_root(profile_dir)
        if (
            root is not None
            and profile_dir != Path.home().joinpath(".local/share/QGIS/QGIS3/profiles/default").resolve()
        ):
            print(f"deploy: for qgis_process in this profile: export QGIS_CUSTOM_CONFIG_PATH={root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the plugin ZIP that QGIS installs with Plugins ▸ Manage and Install Plugins ▸ Install from ZIP (``make package``).

``dist/mc_uncertainty_plugin-<version>.zip`` (version from ``metadata.txt``) holds one top folder::

    mc_uncertainty_plugin/
        __init__.py, plugin.py, python_env.py, icon.svg, core/, processing_provider/, map_layers/, gui/   the package, without caches
        metadata.txt                                                          copy of the top-level one
        styles/*.qml                                                          from resources/styles
        LICENSE                                                               when the repository has one

Tests, virtual environments, ``__pycache__``, ``*.pyc``, tool caches and ``python_env.txt`` (a path on the
machine that deployed it) are left out. Entries are sorted and dated 1980-01-01, so the same sources give the
same bytes. The metadata is checked first: a missing required key, ``hasProcessingProvider`` other than ``yes``
or an icon that is not in the package stops the build.

Usage::

    python3 resources/tools/package.py [--output-dir DIR]      # stdlib only; no QGIS needed
"""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import sys
import zipfile
from pathlib import Path

PLUGIN_NAME = "mc_uncertainty_plugin"
REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / PLUGIN_NAME
METADATA = REPO_ROOT / "metadata.txt"
STYLES_DIR = REPO_ROOT / "resources" / "styles"
LICENSE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "COPYING")
EXCLUDED = (
    "__pycache__",
    "*.pyc",
    "*.pyo",
    "tests",
    "test",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".venv",
    "venv",
    "python_env.txt",
    ".DS_Store",
    "*.swp",
    "*~",
)
# QGIS's plugin repository refuses a plugin without these.
REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository")
RECOMMENDED_METADATA = ("tracker", "homepage", "tags", "icon", "category", "hasProcessingProvider")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def read_metadata(path: Path = METADATA) -> dict[str, str]:
    """The ``[general]`` section of ``metadata.txt``."""
    parser = configparser.RawConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    if not parser.read(path, encoding="utf-8") or not parser.has_section("general"):
        raise SystemExit(f"package: {path} has no [general] section")
    return dict(parser.items("general"))


def check_metadata(metadata: dict[str, str], package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Problems of ``metadata`` (an empty list when it is complete)."""
    problems = [
        f"metadata.txt: {key} is missing or empty"
        for key in REQUIRED_METADATA + RECOMMENDED_METADATA
        if not metadata.get(key, "").strip()
    ]
    if metadata.get("hasProcessingProvider", "").strip().lower() != "yes":
        problems.append("metadata.txt: hasProcessingProvider must be yes (the plugin is a Processing provider)")
    icon = metadata.get("icon", "").strip()
    if icon and not (package_dir / icon).is_file():
        problems.append(f"metadata.txt: icon {icon!r} is not in {package_dir.name}/")
    minimum = metadata.get("qgisMinimumVersion", "").strip()
    parts = minimum.split(".")
    if minimum and (not all(p.isdigit() for p in parts) or tuple(int(p) for p in parts) > (3, 22)):
        problems.append(f"metadata.txt: qgisMinimumVersion must be 3.22 or older (the tested QGIS), got {minimum!r}")
    return problems


def _excluded(relative: Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in EXCLUDED)


def plugin_entries(repo_root: Path = REPO_ROOT) -> list[tuple[Path, str]]:
    """``(source file, name in the ZIP)`` for every file of the plugin, sorted by name."""
    package_dir = repo_root / PLUGIN_NAME
    entries = [
        (path, f"{PLUGIN_NAME}/{path.relative_to(package_dir).as_posix()}")
        for path in package_dir.rglob("*")
        if path.is_file() and not _excluded(path.relative_to(package_dir))
    ]
    entries.append((repo_root / "metadata.txt", f"{PLUGIN_NAME}/metadata.txt"))
    styles_dir = repo_root / "resources" / "styles"
    entries += [(path, f"{PLUGIN_NAME}/styles/{path.name}") for path in sorted(styles_dir.glob("*.qml"))]
    entries += [(repo_root / name, f"{PLUGIN_NAME}/{name}") for name in LICENSE_NAMES if (repo_root / name).is_file()]
    return sorted(entries, key=lambda entry: entry[1])


def build_package(output_dir: Path, repo_root: Path = REPO_ROOT) -> Path:
    """Check the metadata and write ``{output_dir}/mc_uncertainty_plugin-<version>.zip``; returns its path.

    Raises:
        SystemExit: the metadata is incomplete (every problem is listed).
    """
    metadata = read_metadata(repo_root / "metadata.txt")
    problems = check_metadata(metadata, repo_root / PLUGIN_NAME)
    if problems:
        raise SystemExit("package: incomplete metadata:\n  " + "\n  ".join(problems))
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{PLUGIN_NAME}-{metadata['version'].strip()}.zip"
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for source, name in plugin_entries(repo_root):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, source.read_bytes())
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "dist")
    args = parser.parse_args(argv)
    target = build_package(args.output_dir.resolve())
    with zipfile.ZipFile(target) as archive:
        count = len(archive.namelist())
    print(f"package: wrote {target} ({count} files, {target.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Find torch for QGIS's Python: the plugin looks for it itself.

QGIS runs its own Python interpreter, which usually lacks torch. When ``import torch`` fails, this module adds
the ``site-packages`` of a configured virtual environment to the front of ``sys.path`` (before the system's
``dist-packages``: torch 2.14 needs the venv's newer sympy, not Debian's; the venv made by ``make install``
holds no numpy, so QGIS's numpy and GDAL stay those of the system) and tries again. The environment is taken from, in priority order:

1. the environment variable ``MC_UNCERTAINTY_PYTHON_ENV`` (path of a venv, or of a ``site-packages`` folder);
2. the QGIS setting ``mc_uncertainty_plugin/python_env`` (same meaning);
3. the environment made by *Plugins ▸ MC Uncertainty ▸ Install PyTorch…* (:mod:`.installer`), recorded in the
   QGIS setting ``mc_uncertainty_plugin/install/environment``;
4. the file ``python_env.txt`` in the plugin folder (written by ``make install``: the repository's ``.venv``).

Nothing here imports torch at module import time, so the Processing provider loads without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import site
import sys
from pathlib import Path

__all__ = [
    "ENV_VAR",
    "SETTINGS_KEY",
    "ENV_FILE_NAME",
    "INSTALL_COMMAND",
    "configured_environments",
    "site_packages_dirs",
    "INSTALLED_ENV_KEY",
    "INSTALL_MENU",
    "torch_available",
    "activate_environment",
    "torch_findable",
    "ensure_torch",
    "guard_against_llvm_clash",
    "missing_torch_message",
    "missing_model_modules",
    "missing_modules_message",
]

ENV_VAR = "MC_UNCERTAINTY_PYTHON_ENV"
ALLOW_TRITON_ENV_VAR = "MC_UNCERTAINTY_ALLOW_TRITON"
SETTINGS_KEY = "mc_uncertainty_plugin/python_env"
INSTALLED_ENV_KEY = "mc_uncertainty_plugin/install/environment"  # written by the installer when it succeeded
INSTALL_MENU = "Plugins ▸ MC Uncertainty ▸ Install PyTorch…"
ENV_FILE_NAME = "python_env.txt"
INSTALL_COMMAND = "pip install torch==2.14.1 torchvision==0.29.1 segmentation-models-pytorch==0.6.0"
REQUIRED_MODULES = ("torch",)
# Needed for YAML (SMP) models only; looked up in the environment too, but not imported here (slow).
COMPANION_MODULES = ("segmentation_models_pytorch",)
# pip distribution of each importable module a model config may need.
DISTRIBUTIONS = {"segmentation_models_pytorch": "segmentation-models-pytorch==0.6.0"}

PLUGIN_DIR = Path(__file__).resolve().parent


def _setting_value(key: str = SETTINGS_KEY) -> str:
    """The QGIS setting ``key`` (by default ``mc_uncertainty_plugin/python_env``), or "" outside QGIS."""
    try:
        from qgis.core import QgsSettings
    except ImportError:  # pure-Python use of the package
        return ""
    value = QgsSettings().value(key, "")
    return str(value or "").strip()


def _file_value(plugin_dir: Path) -> str:
    """The first non-empty line of ``python_env.txt`` in the plugin folder, or ""."""
    path = plugin_dir / ENV_FILE_NAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")), "")


def configured_environments(plugin_dir: Path | None = None) -> list[tuple[str, str]]:
    """The configured environments, highest priority first.

    Returns:
        ``(source, path)`` pairs, e.g. ``("MC_UNCERTAINTY_PYTHON_ENV", "/home/me/venv")``; unset sources are left out.
    """
    plugin_dir = PLUGIN_DIR if plugin_dir is None else plugin_dir
    candidates = [
        (ENV_VAR, os.environ.get(ENV_VAR, "").strip()),
        (f"QGIS setting {SETTINGS_KEY}", _setting_value()),
        ("Install PyTorch…", _setting_value(INSTALLED_ENV_KEY)),
        (str(plugin_dir / ENV_FILE_NAME), _file_value(plugin_dir)),
    ]
    return [(source, os.path.expanduser(path)) for source, path in candidates if path]


def site_packages_dirs(env_path: str | os.PathLike[str]) -> list[Path]:
    """The ``site-packages`` folders of ``env_path`` that match the running Python.

    ``env_path`` may be a venv (``lib/python3.X/site-packages``, ``lib64/...``, Windows ``Lib/site-packages``)
    or a ``site-packages`` folder itself. Returns an empty list when nothing matches.
    """
    root = Path(env_path)
    if root.name in ("site-packages", "dist-packages") and root.is_dir():
        return [root]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        root / "lib" / version / "site-packages",
        root / "lib64" / version / "site-packages",
        root / "Lib" / "site-packages",
    ]
    found: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and all(candidate.resolve() != f.resolve() for f in found):
            found.append(candidate)
    return found


def _other_pythons(env_path: str) -> list[str]:
    """Python versions an environment was made for (to explain a version mismatch)."""
    lib = Path(env_path) / "lib"
    if not lib.is_dir():
        return []
    return sorted(p.name for p in lib.glob("python3.*") if (p / "site-packages").is_dir())


def torch_available() -> bool:
    """True when every required module imports in this interpreter (no sys.path change)."""
    for name in REQUIRED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            return False
    return True


def _companions_found() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in COMPANION_MODULES)


class _ModuleBlocker:
    """A ``sys.meta_path`` finder that makes ``import NAME`` (and its submodules) fail with ImportError."""

    def __init__(self, names: tuple[str, ...], reason: str) -> None:
        self.names = names
        self.reason = reason

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} ({self.reason})", name=name)
        return None


def _llvm_loaded(maps_path: str) -> bool:
    """Whether a shared LLVM (``libLLVM-*.so``, e.g. Mesa's llvmpipe under QGIS Desktop) is mapped in this process."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:  # not Linux
        return False


def guard_against_llvm_clash(maps_path: str = "/proc/self/maps") -> bool:
    """Keep triton out of a process that already holds a shared LLVM; True when the guard is (now) active.

    QGIS Desktop on Linux loads Mesa, which links ``libLLVM-15.so``; ``import torch._dynamo`` (pulled in by
    segmentation-models-pytorch / timm) imports triton when it is installed, and libtriton's own LLVM then
    resolves symbols against Mesa's and crashes QGIS in its static initialisers. triton is optional for torch
    (it only compiles kernels; eager CPU and CUDA inference never use it), so it is made unimportable instead.
    ``MC_UNCERTAINTY_ALLOW_TRITON=1`` turns this off.
    """
    if any(isinstance(finder, _ModuleBlocker) for finder in sys.meta_path):
        return True
    if os.environ.get(ALLOW_TRITON_ENV_VAR) == "1":
        return False
    if "triton" in sys.modules or not _llvm_loaded(maps_path):
        return False
    sys.meta_path.insert(
        0,
        _ModuleBlocker(
            ("triton",),
            "kept out by MC Uncertainty: its LLVM clashes with the one "
            f"already loaded; {ALLOW_TRITON_ENV_VAR}=1 allows it",
        ),
    )
    return True


def activate_environment(env_path: str | os.PathLike[str]) -> list[str]:
    """Put the ``site-packages`` of ``env_path`` (and what its ``.pth`` files name) at the front of ``sys.path``.

    Nothing is imported: the next ``import torch`` finds the environment's packages, in this session already.

    Returns:
        The entries added (empty when they were there already or the environment has none for this Python).
    """
    added_all: list[str] = []
    for folder in site_packages_dirs(env_path):
        if str(folder) in sys.path:
            continue
        before = list(sys.path)
        site.addsitedir(str(folder))  # appends, and runs the folder's .pth files
        added = [entry for entry in sys.path if entry not in before]
        sys.path[:] = added + before  # the environment's packages win over the system's
        added_all += added
    importlib.invalidate_caches()
    return added_all


def torch_findable(plugin_dir: Path | None = None) -> bool:
    """Whether ``import torch`` would find torch, after adding the configured environments; imports nothing
    (cheap enough for the main thread)."""
    if _module_found("torch"):
        return True
    for _source, env_path in configured_environments(plugin_dir):
        activate_environment(env_path)
        if _module_found("torch"):
            return True
    return False


def ensure_torch(plugin_dir: Path | None = None) -> bool:
    """Make torch (and segmentation-models-pytorch) importable, adding a configured environment to
    ``sys.path`` when needed (and keeping triton out where it would crash QGIS: :func:`guard_against_llvm_clash`).

    Returns:
        True when torch imports afterwards.
    """
    guard_against_llvm_clash()
    if torch_available() and _companions_found():
        return True
    for _source, env_path in configured_environments(plugin_dir):
        activate_environment(env_path)
        if torch_available() and _companions_found():
            return True
    return torch_available()


def missing_torch_message(plugin_dir: Path | None = None) -> str:
    """A one-paragraph explanation of why torch is missing and how to install it."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [
        f"MC Uncertainty needs PyTorch, which QGIS's Python {version} cannot import.",
    ]
    environments = configured_environments(plugin_dir)
    for source, env_path in environments:
        if not Path(env_path).exists():
            lines.append(f"The environment from {source} does not exist: {env_path!r}.")
        elif not site_packages_dirs(env_path):
            others = _other_pythons(env_path)
            made_for = f" (it has {', '.join(others)})" if others else ""
            lines.append(
                f"The environment from {source} ({env_path!r}) has no site-packages for python{version}{made_for}."
            )
        else:
            lines.append(f"The environment from {source} ({env_path!r}) does not provide a working torch.")
    if not environments:
        lines.append("No Python environment is configured.")
    lines.append(
        f"Install it with {INSTALL_MENU} (it sets up a Python environment in your QGIS profile and needs no "
        f"restart). Or install it yourself into a virtual environment made with python{version} "
        f"(python{version} -m venv --system-site-packages ENV; ENV/bin/{INSTALL_COMMAND}) "
        f"and point the environment variable {ENV_VAR} or the QGIS setting {SETTINGS_KEY} at ENV."
    )
    return " ".join(lines)


def _module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_model_modules(model_path: str | os.PathLike[str]) -> list[str]:
    """Modules a model config YAML needs that this interpreter cannot import (after :func:`ensure_torch`).

    A YAML whose ``model._target_`` starts with ``segmentation_models_pytorch.`` needs that package; TorchScript
    files and unreadable configs need nothing here (the core reports unreadable configs itself).
    """
    if Path(model_path).suffix.lower() not in (".yaml", ".yml"):
        return []
    try:
        import yaml

        with open(model_path, encoding="utf-8") as stream:
            config = yaml.safe_load(stream)
        target = config["model"]["_target_"]
    except Exception:  # noqa: BLE001 - any unreadable config is the core's to report
        return []
    if not isinstance(target, str):
        return []
    return [name for name in COMPANION_MODULES if target.startswith(name + ".") and not _module_found(name)]


def missing_modules_message(modules: list[str], plugin_dir: Path | None = None) -> str:
    """A one-paragraph explanation that ``modules`` (e.g. segmentation_models_pytorch) are missing, and how to
    install them where torch was found."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    packages = " ".join(DISTRIBUTIONS.get(name, name) for name in modules)
    environments = configured_environments(plugin_dir)
    where = (
        f"into the environment that provides torch ({environments[0][1]!r}, from {environments[0][0]})"
        if environments
        else f"into QGIS's Python {version}"
    )
    return (
        f"MC Uncertainty: this model config needs {', '.join(modules)}, which QGIS's Python {version} cannot "
        f"import (torch itself was found). Install it with {INSTALL_MENU}, or yourself {where}: "
        f"pip install {packages} (all requirements: {INSTALL_COMMAND})."
    )

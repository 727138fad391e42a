"""Installing PyTorch for the plugin from inside QGIS: what to run (the *Install PyTorch…* dialog runs it).

The plan, in three commands run one after the other:

1. create a dedicated virtual environment in the QGIS profile (``<profile>/mc_uncertainty_plugin/env-python3.X``)
   with QGIS's own Python and ``--system-site-packages``, so QGIS's numpy and GDAL stay visible and are not
   installed again (numpy is also pinned to QGIS's version: a numpy 2 would break GDAL's Python bindings). When
   QGIS's Python has pip, the environment reuses it (``--without-pip``: fast); otherwise ``ensurepip`` adds one;
2. ``python -m pip install`` the pinned packages into it: CPU wheels by default, CUDA wheels when an NVIDIA driver
   is found; ``--no-index --find-links FOLDER`` when a wheel folder is set (offline installs), pip's own
   configuration (``pip.conf``, ``PIP_INDEX_URL``, ``HTTPS_PROXY``) otherwise, plus QGIS's proxy when one is set;
3. import the packages with the environment's Python, to check them.

On success the environment is recorded in the QGIS setting ``mc_uncertainty_plugin/install/environment`` and
put on ``sys.path`` (:func:`mc_uncertainty_plugin.python_env.activate_environment`): the algorithms work at
once, without restarting QGIS.

QGIS's own Python: inside QGIS ``sys.executable`` is the QGIS program, not a Python interpreter;
:func:`find_python` looks for the interpreter QGIS embeds, by name next to ``sys.executable`` and under
``sys.base_prefix`` / ``sys.exec_prefix`` (``bin/python3.X`` on Linux and macOS, ``python.exe`` on Windows,
where OSGeo4W's ``sys.base_prefix`` is ``apps/Python3X``), then on ``PATH``; a candidate counts only when it
reports the same ``major.minor`` version as QGIS's Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PINNED_PACKAGES",
    "CHECK_MODULES",
    "CPU",
    "CUDA",
    "DEFAULT_INDEX",
    "VARIANTS",
    "WHEEL_FOLDER_KEY",
    "Step",
    "InstallPlan",
    "find_python",
    "nvidia_driver_version",
    "default_variant",
    "environment_dir",
    "numpy_constraint",
    "qgis_proxy",
    "wheel_folder_setting",
]

PINNED_PACKAGES = (
    "torch==2.14.1",
    "torchvision==0.29.1",
    "segmentation-models-pytorch==0.6.0",
    "safetensors==0.8.0",
    "dask[distributed]==2026.8.0",  # SCHEDULER: blocks on local worker processes or a Dask cluster
)
CHECK_MODULES = ("torch", "torchvision", "segmentation_models_pytorch", "safetensors", "distributed")
PINNED_CONSTRAINTS = ("timm==1.0.31",)  # segmentation-models-pytorch's encoders, as tested
CPU, CUDA, DEFAULT_INDEX = "cpu", "cuda", "default"
VARIANTS = (CPU, CUDA, DEFAULT_INDEX)
PYPI = "https://pypi.org/simple"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"  # Windows; on Linux PyPI's torch is the CUDA build
WHEEL_FOLDER_KEY = "mc_uncertainty_plugin/install/wheel_folder"
CONSTRAINTS_FILE = "mc_uncertainty_constraints.txt"
# Create the environment; reuse the base interpreter's pip when it has one (much faster than ensurepip).
_CREATE_VENV = (
    "import importlib.util, sys, venv; "
    "venv.EnvBuilder(system_site_packages=True, with_pip=importlib.util.find_spec('pip') is None).create(sys.argv[1])"
)


@dataclass(frozen=True)
class Step:
    """One command of the installation: what the dialog shows while it runs, and the command line."""

    label: str
    argv: tuple[str, ...]


def _same_version(python: str, version: tuple[int, int]) -> bool:
    """Whether ``python`` runs and reports ``major.minor`` = ``version``."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print('{}.{}'.format(*sys.version_info[:2]))"],
            capture_output=True,
            text=True,
            timeout=20,
            env=_clean_environment(),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "{}.{}".format(*version)


def find_python(
    executable: str | None = None,
    prefixes: Sequence[str] | None = None,
    version: tuple[int, int] | None = None,
    verify: bool = True,
) -> str | None:
    """The Python interpreter of QGIS (the running Python), or None when none is found.

    Args:
        executable: ``sys.executable`` (the QGIS program inside QGIS; a Python under pytest or qgis_process's
            Python scripts).
        prefixes: where the interpreter may live: ``sys.base_prefix``, ``sys.exec_prefix``, ``sys.prefix``.
        version: ``sys.version_info[:2]``; a candidate must report this version.
        verify: run each candidate to check its version (tests of the search itself turn it off).
    """
    executable = sys.executable if executable is None else executable
    prefixes = (sys.base_prefix, sys.exec_prefix, sys.prefix) if prefixes is None else prefixes
    version = tuple(sys.version_info[:2]) if version is None else version  # type: ignore[assignment]
    major_minor = "{}.{}".format(*version)
    names = (f"python{major_minor}", "python3", "python", f"python{major_minor}.exe", "python3.exe", "python.exe")
    candidates: list[Path] = []
    if executable and Path(executable).name.lower().startswith("python"):
        candidates.append(Path(executable))
    folders = [Path(executable).parent] if executable else []
    for prefix in prefixes:
        folders += [Path(prefix) / "bin", Path(prefix)]
    candidates += [folder / name for folder in folders for name in names]
    candidates += [Path(found) for found in (shutil.which(f"python{major_minor}"), shutil.which("python3")) if found]
    seen: set[str] = set()
    for candidate in candidates:
        key = os.path.normcase(str(candidate))
        if key in seen or not candidate.is_file():
            continue
        seen.add(key)
        if not verify or _same_version(str(candidate), version):  # type: ignore[arg-type]
            return str(candidate)
    return None


def nvidia_driver_version(proc_file: str = "/proc/driver/nvidia/version") -> str | None:
    """The NVIDIA driver version when a driver is installed (Linux: ``/proc``; elsewhere ``nvidia-smi``)."""
    try:
        text = Path(proc_file).read_text(encoding="utf-8", errors="replace")
        for word in text.split():
            if word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = done.stdout.strip().splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else ""
    return first or None


def default_variant(driver: str | None) -> str:
    """CUDA wheels when an NVIDIA driver is present (and the platform has CUDA wheels), CPU wheels otherwise."""
    return CUDA if driver and sys.platform != "darwin" else CPU


def environment_dir(profile_dir: str | os.PathLike[str]) -> Path:
    """The environment the installer makes in QGIS profile ``profile_dir`` (one per Python version)."""
    return Path(profile_dir) / "mc_uncertainty_plugin" / ("env-python{}.{}".format(*sys.version_info[:2]))


def numpy_constraint() -> tuple[str, ...]:
    """``numpy==<QGIS's numpy>`` when QGIS's Python has numpy: pip keeps it instead of installing another."""
    try:
        import numpy
    except ImportError:
        return ()
    return (f"numpy=={numpy.__version__}",)


def _setting(key: str) -> str:
    try:
        from qgis.core import QgsSettings
    except ImportError:
        return ""
    return str(QgsSettings().value(key, "") or "").strip()


def wheel_folder_setting() -> str:
    """The wheel folder of offline installs (QGIS setting ``mc_uncertainty_plugin/install/wheel_folder``)."""
    return _setting(WHEEL_FOLDER_KEY)


def qgis_proxy() -> str | None:
    """``http://[user:password@]host:port`` of QGIS's proxy (*Settings ▸ Options ▸ Network*), when one is set.

    A "Default proxy" (the system's) is left to pip, which reads ``HTTP(S)_PROXY`` itself.
    """
    try:
        from qgis.core import QgsSettings
    except ImportError:
        return None
    settings = QgsSettings()
    enabled = str(settings.value("proxy/proxyEnabled", "false")).lower() == "true"
    host = str(settings.value("proxy/proxyHost", "") or "").strip()
    kind = str(settings.value("proxy/proxyType", "") or "")
    if not enabled or not host or kind not in ("HttpProxy", "HttpCachingProxy"):
        return None
    from urllib.parse import quote

    port = str(settings.value("proxy/proxyPort", "") or "").strip()
    user = str(settings.value("proxy/proxyUser", "") or "")
    password = str(settings.value("proxy/proxyPassword", "") or "")
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
    return f"http://{credentials}{host}" + (f":{port}" if port else "")


def _clean_environment() -> dict[str, str]:
    """The environment for the child Pythons: QGIS's PYTHONHOME / PYTHONPATH would make them ignore the venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


@dataclass(frozen=True)
class InstallPlan:
    """Everything the installation does, decided before it starts (the dialog shows it).

    Attributes:
        python: QGIS's Python interpreter (:func:`find_python`).
        environment: the virtual environment to create or complete.
        packages: pip requirements to install.
        check_modules: modules that must import afterwards.
        constraints: pip constraints (versions to keep, e.g. QGIS's numpy).
        variant: :data:`CPU`, :data:`CUDA` or :data:`DEFAULT_INDEX` (pip's own configuration decides).
        wheel_folder: install only from this folder (offline), or None.
        proxy: ``--proxy`` for pip, or None.
    """

    python: str
    environment: Path
    packages: tuple[str, ...] = PINNED_PACKAGES
    check_modules: tuple[str, ...] = CHECK_MODULES
    constraints: tuple[str, ...] = field(default_factory=lambda: PINNED_CONSTRAINTS + numpy_constraint())
    variant: str = CPU
    wheel_folder: str | None = None
    proxy: str | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}.")

    @property
    def env_python(self) -> str:
        """The environment's interpreter (it exists once step 1 ran)."""
        if sys.platform == "win32":
            return str(self.environment / "Scripts" / "python.exe")
        return str(self.environment / "bin" / "python")

    @property
    def constraints_file(self) -> Path:
        return self.environment / CONSTRAINTS_FILE

    def index_options(self) -> list[str]:
        """Where pip looks for packages."""
        if self.wheel_folder:
            return ["--no-index", "--find-links", self.wheel_folder]
        if self.variant == CPU and sys.platform != "darwin":
            return ["--index-url", CPU_INDEX, "--extra-index-url", PYPI]
        if self.variant == CUDA and sys.platform == "win32":
            return ["--index-url", CUDA_INDEX, "--extra-index-url", PYPI]
        return []  # CUDA on Linux (PyPI's build), macOS, or pip's own configuration

    def pip_command(self) -> tuple[str, ...]:
        argv = [
            self.env_python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            *self.index_options(),
        ]
        if self.proxy:
            argv += ["--proxy", self.proxy]
        if self.constraints:
            argv += ["--constraint", str(self.constraints_file)]
        return tuple(argv + list(self.packages))

    def check_command(self) -> tuple[str, ...]:
        script = (
            "import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    module = importlib.import_module(name)\n"
            "    print(name, getattr(module, '__version__', ''), 'OK', flush=True)\n"
        )
        return (self.env_python, "-c", script, *self.check_modules)

    def steps(self) -> list[Step]:
        """The commands, in order."""
        return [
            Step("Creating the Python environment…", (self.python, "-c", _CREATE_VENV, str(self.environment))),
            Step("Installing with pip…", self.pip_command()),
            Step("Checking the installation…", self.check_command()),
        ]

    def prepare(self) -> None:
        """Create the environment's folder and write the constraints file (before step 2 reads it)."""
        self.environment.mkdir(parents=True, exist_ok=True)
        if self.constraints:
            self.constraints_file.write_text("\n".join(self.constraints) + "\n", encoding="utf-8")

    @staticmethod
    def process_environment() -> dict[str, str]:
        """Environment variables for the commands."""
        return _clean_environment()

    def describe(self) -> str:
        """The pip command as one line, for the dialog."""
        return " ".join(self.pip_command()[1:])

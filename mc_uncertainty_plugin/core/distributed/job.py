"""A job: the plan of a run cut into blocks, the model files every worker loads, and a fingerprint of it all.

Layout on disk, for each output ``{folder}/{stem}.vrt`` (or ``.tif``):

- ``{folder}/{stem}_blocks/`` (``{stem}_tif_blocks/`` for a ``.tif``, whose blocks go once it is assembled) holds
  the block files ``{tag}_{kind}_r{row}_c{col}.tif`` (tiled, compressed, with
  overviews; ``kind`` is ``classes``, ``uncertainty`` or ``confidence``), each written under a temporary name and
  renamed when complete;
- the block folder of the first ``.vrt`` output (else OUTPUT's) also holds the job (``{tag}_job.json``) and one
  record per finished block (``{tag}_r{row}_c{col}.json``), written after the block's files.

``tag`` is the start of the job's *fingerprint*: a SHA-256 of the plan (without the output paths), the block
layout, the model files' contents, the input files' sizes and modification times, and the versions of the plugin,
torch and segmentation-models-pytorch. Rerunning the same job finds the records of the blocks already done and
skips them; a record counts only when its fingerprint is the job's and its files are there with the recorded
sizes. A changed parameter, model or input gives another tag, so block files of an earlier job are never taken
for this one's (they are removed once this job has published its outputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from ..config import InferenceConfig
from ..errors import ParameterError
from ..inference.device import ModelOnDevice, resolve_device, resolve_memory_format
from ..inference.output_specs import OutputOptions
from ..inference.plan import OutputSpec, Region, RunPlan, plan_run
from ..io.output_files import check_outputs, input_files, temporary_path
from ..models.loading import CONFIG_SUFFIXES, LoadedModel, allowed_prefixes_from_environment
from .blocks import BlockLayout
from .serialise import plan_from_dict, plan_to_dict, region_from_list, region_to_list

__all__ = [
    "JOB_FORMAT",
    "OUTPUT_SUFFIXES",
    "ModelFile",
    "ModelBundle",
    "BlockRecord",
    "Job",
    "local_versions",
    "input_identity",
    "block_folder_for",
    "check_job_outputs",
    "plan_job",
    "create_job",
    "write_record",
    "read_record",
    "sha256_of",
]

JOB_FORMAT = 1
OUTPUT_SUFFIXES = (".vrt", ".tif", ".tiff")
# what this package writes in a block folder: block files and sidecars, records, the job, overview VRTs
BLOCK_FILE = re.compile(
    r"^([0-9a-f]{12})_(?:(?:[a-z]+_)?r\d+_c\d+\.(?:tif|tif\.aux\.xml|json)|job\.json|[a-z]+_ovr\d+\.vrt)$"
)
_PLUGIN_ROOT = Path(__file__).resolve().parents[2]  # mc_uncertainty_plugin/


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plugin_version() -> str:
    """``version=`` of metadata.txt: in the deployed plugin folder, or at the repository root."""
    for candidate in (_PLUGIN_ROOT / "metadata.txt", _PLUGIN_ROOT.parent / "metadata.txt"):
        try:
            for line in candidate.read_text(encoding="utf-8").splitlines():
                if line.strip().startswith("version="):
                    return line.split("=", 1)[1].strip()
        except OSError:
            continue
    return "unknown"


def local_versions() -> dict[str, str]:
    """The versions a worker must share with the client: the plugin, torch, segmentation-models-pytorch."""
    import torch

    try:
        smp = metadata.version("segmentation-models-pytorch")
    except metadata.PackageNotFoundError:
        smp = "not installed"
    return {"plugin": _plugin_version(), "torch": str(torch.__version__), "segmentation-models-pytorch": smp}


def input_identity(path: str) -> list[list[Any]]:
    """``[file, size, mtime]`` of every file a GDAL source consists of (a VRT's sources too); for remote paths
    (``/vsicurl/``, ``/vsis3/``) what GDAL's stat tells."""
    from osgeo import gdal

    identity = []
    for name in input_files(path) or [path]:
        try:
            info = os.stat(name)
            identity.append([os.path.abspath(name), info.st_size, info.st_mtime_ns])
        except OSError:
            stat = gdal.VSIStatL(name)
            identity.append([name, stat.size, stat.mtime] if stat is not None else [name, None, None])
    return identity


@dataclass(frozen=True)
class ModelFile:
    """One file of the model: ``role`` is ``model`` (YAML or TorchScript), ``checkpoint`` or ``sidecar`` (the
    YAML beside a TorchScript file)."""

    role: str
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelBundle:
    """The files a worker loads the model from, and the ``_target_`` prefixes the client trusted."""

    files: tuple[ModelFile, ...]
    allowed_prefixes: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return hashlib.sha256(";".join(f"{f.role}:{f.sha256}" for f in self.files).encode()).hexdigest()

    def file(self, role: str) -> ModelFile | None:
        return next((f for f in self.files if f.role == role), None)

    @classmethod
    def of(cls, model: LoadedModel, allowed_prefixes: tuple[str, ...] = ()) -> ModelBundle:
        """The files ``model`` was loaded from (workers load it again, with the same safe loading).

        Raises:
            ParameterError: the model was not loaded from a file (an in-memory module).
        """
        if not os.path.isfile(model.source):
            raise ParameterError(
                "MODEL",
                model.source,
                "be a model file (YAML config or TorchScript) that workers can load when SCHEDULER is set",
            )
        roles = [("model", model.source)]
        if model.checkpoint:
            roles.append(("checkpoint", model.checkpoint))
        if not model.source.lower().endswith(CONFIG_SUFFIXES):
            stem = os.path.splitext(model.source)[0]
            sidecar = next((stem + s for s in CONFIG_SUFFIXES if os.path.isfile(stem + s)), None)
            if sidecar:
                roles.append(("sidecar", sidecar))
        files = tuple(
            ModelFile(role, os.path.abspath(path), sha256_of(path), os.path.getsize(path)) for role, path in roles
        )
        trusted = tuple(allowed_prefixes) + allowed_prefixes_from_environment()
        if model.source.lower().endswith(CONFIG_SUFFIXES):  # the class the client built is trusted there
            module_class = type(model.module)
            trusted += (f"{module_class.__module__}.{module_class.__qualname__}",)
        return cls(files, tuple(dict.fromkeys(trusted)))


@dataclass(frozen=True)
class BlockRecord:
    """What a finished block wrote: ``files`` (Processing key -> file name in its block folder), empty when the
    block held no valid pixel (nothing written: the mosaic is nodata there)."""

    fingerprint: str
    index: int
    region: Region
    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    skipped: int = 0
    valid_pixels: int = 0
    nonfinite_pixels: int = 0
    seconds: float = 0.0
    execution_path: str = ""
    passes_per_window: int = 0


def block_folder_for(final_path: str) -> str:
    """The block folder beside an output: ``{stem}_blocks`` for ``{stem}.vrt``, ``{stem}_tif_blocks`` for
    ``{stem}.tif`` (one folder per output, even when a VRT and a GeoTIFF share a stem)."""
    stem, extension = os.path.splitext(os.path.abspath(final_path))
    extension = extension.lower().lstrip(".")
    return f"{stem}_blocks" if extension == "vrt" else f"{stem}_{extension}_blocks"


@dataclass(frozen=True)
class Job:
    """Everything a block needs, as data (it travels to workers and to ``plan.json``).

    Attributes:
        plan: the run's plan; its output paths are the final ``.vrt`` / ``.tif`` paths.
        layout: the blocks.
        model: the model files.
        versions: the client's :func:`local_versions`.
        input: :func:`input_identity` of the input.
        fingerprint: SHA-256 hex of all of the above (module docstring).
    """

    plan: RunPlan
    layout: BlockLayout
    model: ModelBundle
    versions: dict[str, str]
    input: list[list[Any]]
    fingerprint: str

    @property
    def tag(self) -> str:
        return self.fingerprint[:12]

    def spec(self, key: str) -> OutputSpec:
        return next(spec for spec in self.plan.outputs if spec.key == key)

    def block_folder(self, key: str) -> str:
        return block_folder_for(self.spec(key).path)

    @property
    def record_folder(self) -> str:
        """Where the job and the block records are: beside the first VRT output's blocks (they stay with it),
        else beside OUTPUT's (removed with them once assembled)."""
        kept = next((spec.key for spec in self.plan.outputs if spec.path.lower().endswith(".vrt")), "OUTPUT")
        return self.block_folder(kept)

    def block_file(self, key: str, index: int) -> str:
        region = self.layout.region(index)
        return os.path.join(self.block_folder(key), f"{self.tag}_{self.spec(key).kind}_r{region.row}_c{region.col}.tif")

    def record_file(self, index: int) -> str:
        region = self.layout.region(index)
        return os.path.join(self.record_folder, f"{self.tag}_r{region.row}_c{region.col}.json")

    @property
    def job_file(self) -> str:
        return os.path.join(self.record_folder, f"{self.tag}_job.json")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": JOB_FORMAT,
            "plan": plan_to_dict(self.plan),
            "layout": {"raster_shape": list(self.layout.raster_shape), "block_shape": list(self.layout.block_shape)},
            "model": {
                "files": [vars(f) for f in self.model.files],
                "allowed_prefixes": list(self.model.allowed_prefixes),
            },
            "versions": dict(self.versions),
            "input": self.input,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        if data.get("format") != JOB_FORMAT:
            raise ParameterError(
                "--plan", data.get("format"), f"be a job of format {JOB_FORMAT} (written by this version)"
            )
        layout = BlockLayout(tuple(data["layout"]["raster_shape"]), tuple(data["layout"]["block_shape"]))
        model = ModelBundle(
            tuple(ModelFile(**f) for f in data["model"]["files"]), tuple(data["model"]["allowed_prefixes"])
        )
        return cls(
            plan_from_dict(data["plan"]),
            layout,
            model,
            dict(data["versions"]),
            list(data["input"]),
            str(data["fingerprint"]),
        )

    def write(self, path: str) -> None:
        """Write the job as JSON (crash-safe: a temporary file renamed when complete)."""
        _write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str) -> Job:
        try:
            with open(path, encoding="utf-8") as stream:
                return cls.from_dict(json.load(stream))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ParameterError("--plan", path, f"be a job file written by this plugin ({error})") from None


def _write_json(path: str, data: Any) -> None:
    temporary = temporary_path(path)
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=1)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _fingerprint(
    plan: RunPlan, layout: BlockLayout, model: ModelBundle, versions: Mapping[str, str], identity: list[list[Any]]
) -> str:
    plan_data = plan_to_dict(plan)
    for spec in plan_data["outputs"]:
        spec["path"] = ""  # where the outputs go does not change what a block computes
    content = {
        "plan": plan_data,
        "block_shape": list(layout.block_shape),
        "model": [[f.role, f.sha256] for f in model.files],
        "versions": dict(versions),
        "input": identity,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def create_job(plan: RunPlan, layout: BlockLayout, model: ModelBundle) -> Job:
    """The job of ``plan`` cut by ``layout``, with its fingerprint (reads the input files' sizes and times)."""
    versions = local_versions()
    identity = input_identity(plan.input_path)
    return Job(plan, layout, model, versions, identity, _fingerprint(plan, layout, model, versions, identity))


def check_job_outputs(
    paths: Mapping[str, str | None], config: InferenceConfig, input_path: str, model: LoadedModel
) -> dict[str, str]:
    """The final outputs of a job, checked before any work: ``.vrt`` or ``.tif``, not an input, not each other,
    in writable folders, no file where a block folder goes. Returns key -> absolute path.

    Raises:
        ParameterError: naming the output's key.
    """
    wanted = {
        key: path
        for key, path in paths.items()
        if path and (key != "OUTPUT_UNCERTAINTY" or config.export_uncertainty_map)
    }
    for key, path in wanted.items():
        if not str(path).lower().endswith(OUTPUT_SUFFIXES):
            raise ParameterError(
                key, path, "end in .vrt (a mosaic of block files) or .tif/.tiff (one GeoTIFF) when SCHEDULER is set"
            )
    finals = check_outputs(
        wanted, rasters={"INPUT": input_path}, files={"MODEL": model.source, "CHECKPOINT": model.checkpoint}
    )
    for key, path in finals.items():  # outputs of one stem share a folder: block file names hold the kind
        folder = block_folder_for(path)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ParameterError(key, path, f"leave room for its block folder, but {folder} is a file")
    return finals


def plan_job(
    model: LoadedModel,
    config: InferenceConfig,
    input_path: str,
    finals: Mapping[str, str],
    caution: Callable[[str], None],
    options: OutputOptions | None = None,
) -> RunPlan:
    """The whole-input plan (:func:`~..inference.plan.plan_run`: bands, probe, warnings, free space, output
    descriptions) with the final ``.vrt`` / ``.tif`` paths of :func:`check_job_outputs` as its output paths."""
    device = resolve_device(config.device)
    memory_format = resolve_memory_format(config.memory_format, device, model.module)
    stand_ins = {
        key: path if path.lower().endswith((".tif", ".tiff")) else path + ".tif" for key, path in finals.items()
    }
    with ModelOnDevice(model, device, memory_format):
        plan, _ = plan_run(model, config, input_path, stand_ins, device, caution, options)
    return replace(plan, outputs=tuple(replace(spec, path=finals[spec.key]) for spec in plan.outputs))


def write_record(job: Job, record: BlockRecord) -> None:
    """Record a finished block (after its files are in place)."""
    data = {
        "fingerprint": record.fingerprint,
        "index": record.index,
        "region": region_to_list(record.region),
        "files": record.files,
        "sizes": record.sizes,
        "windows": record.windows,
        "skipped": record.skipped,
        "valid_pixels": record.valid_pixels,
        "nonfinite_pixels": record.nonfinite_pixels,
        "seconds": record.seconds,
        "execution_path": record.execution_path,
        "passes_per_window": record.passes_per_window,
    }
    _write_json(job.record_file(record.index), data)


def read_record(job: Job, index: int, check: Callable[[str], int] = os.path.getsize) -> BlockRecord | None:
    """The record of block ``index`` when the block is done for this job: same fingerprint and region, every file
    present with its recorded size; otherwise None (the block runs again)."""
    try:
        with open(job.record_file(index), encoding="utf-8") as stream:
            data = json.load(stream)
        record = BlockRecord(
            data["fingerprint"],
            int(data["index"]),
            region_from_list(data["region"]),
            dict(data["files"]),
            {k: int(v) for k, v in data["sizes"].items()},
            int(data["windows"]),
            int(data["skipped"]),
            int(data["valid_pixels"]),
            int(data["nonfinite_pixels"]),
            float(data["seconds"]),
            str(data["execution_path"]),
            int(data["passes_per_window"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.fingerprint != job.fingerprint or record.region != job.layout.region(index):
        return None
    for key, name in record.files.items():
        try:
            if check(os.path.join(job.block_folder(key), name)) != record.sizes.get(key):
                return None
        except (OSError, StopIteration):
            return None
    return record

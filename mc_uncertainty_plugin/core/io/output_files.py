"""Output files that never clobber what a user owns: checks before a run, temporaries, all-or-nothing publishing.

- :func:`check_outputs` compares real identities, not path text: every output against every file an input
  consists of (a VRT's sources, the archive behind ``/vsizip/…``, hard links, symlinked folders) and against the
  other outputs. An output that is an existing folder, or sits in a missing or read-only folder, is refused.
- :func:`temporary_path` gives a hidden name of fixed length in the destination folder,
  ``.mcu-{host}-{pid}-{random}.partial``, where ``{host}`` is 8 hex digits of a hash of the host name. Its length
  does not depend on the output's name, so any output name the file system accepts can be written.
- :func:`remove_stale_temporaries` deletes temporaries of this plugin in a folder whose writer is dead: written on
  this host by a process that no longer exists, or (any host) not modified for a day. A live run on another host
  or container sharing the folder keeps its files.
- :func:`publish_together` renames finished temporaries onto their final names as one step: if any rename fails,
  every final path is restored to what it held before (the old file, or nothing).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence

from ..errors import ParameterError, RasterIOError

__all__ = [
    "TEMPORARY_PATTERN",
    "STALE_AFTER_SECONDS",
    "host_tag",
    "temporary_path",
    "remove_stale_temporaries",
    "publish_together",
    "input_files",
    "check_outputs",
    "check_extension",
]

STALE_AFTER_SECONDS = 24 * 3600
TEMPORARY_PATTERN = re.compile(r"^\.mcu-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}\.partial(\.[A-Za-z0-9.]+)?$")
# temporaries of earlier versions, ``.{name}.{pid}-{12 hex}.partial``: written on this host
_EARLIER_PATTERN = re.compile(r"^\..+\.(\d+)-[0-9a-f]{12}\.partial(\.aux\.xml)?$")
_ARCHIVE_PREFIXES = ("/vsizip/", "/vsitar/", "/vsigzip/", "/vsi7z/", "/vsirar/", "/vsisubfile/")


def host_tag() -> str:
    """8 hex digits naming this host (a hash of its host name): fixed length whatever the name."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temporary_path(final_path: str) -> str:
    """A new hidden temporary path in the folder of ``final_path``, of fixed length."""
    folder = os.path.dirname(os.path.abspath(final_path))
    return os.path.join(folder, f".mcu-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(folder: str, now: float | None = None) -> list[str]:
    """Delete this plugin's temporaries in ``folder`` whose writer is dead; returns the paths removed.

    A temporary (``.mcu-{host}-{pid}-{random}.partial`` and sidecars such as ``….partial.aux.xml``) is stale when
    it was written on this host by a process that no longer exists, or when it was not modified for
    :data:`STALE_AFTER_SECONDS` (whatever the host: a writer elsewhere that went silent for a day is gone).
    """
    now = time.time() if now is None else now
    here = host_tag()
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = TEMPORARY_PATTERN.match(name)
        earlier = None if match else _EARLIER_PATTERN.match(name)
        if not (match or earlier):
            continue
        path = os.path.join(folder, name)
        try:
            age = now - os.lstat(path).st_mtime
        except OSError:
            continue
        host, pid = (match.group(1), match.group(2)) if match else (here, earlier.group(1))  # type: ignore[union-attr]
        dead_here = host == here and not _process_alive(int(pid))
        if dead_here or age > STALE_AFTER_SECONDS:
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def publish_together(moves: Sequence[tuple[str | None, str]]) -> None:
    """Rename each finished temporary onto its final path, all or nothing.

    Args:
        moves: ``(temporary, final)`` pairs; a temporary of ``None`` means "no new file": a file at ``final``
            (e.g. a stale sidecar) is removed as part of the same step.

    Existing finals are first moved aside under temporary names; if any rename fails, the finals already
    replaced are removed and the old files put back, so no final path holds a file of this run beside a
    partner from another run. The moved-aside old files are deleted once everything is in place.

    Raises:
        RasterIOError: a rename failed (everything is as it was before the call).
    """
    aside: list[tuple[str, str]] = []  # (final, where the old file waits)
    placed: list[str] = []
    try:
        for temporary, final in moves:
            if os.path.lexists(final):
                backup = temporary_path(final)
                os.replace(final, backup)
                aside.append((final, backup))
            if temporary is not None:
                os.replace(temporary, final)
                placed.append(final)
    except OSError as error:
        for final in placed:
            _remove_quietly(final)
        for final, backup in aside:
            try:
                os.replace(backup, final)
            except OSError:
                pass
        raise RasterIOError(f"publishing the outputs failed, the earlier files are back in place: {error}.") from None
    for _, backup in aside:
        _remove_quietly(backup)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# -- identities --------------------------------------------------------------------------------------------
def _archive_behind(path: str) -> str | None:
    """The local file an archive path such as ``/vsizip//data/pack.zip/scene.tif`` reads from, if any."""
    inner = path
    while True:
        prefix = next((p for p in _ARCHIVE_PREFIXES if inner.startswith(p)), None)
        if prefix is None:
            break
        inner = inner[len(prefix) :]
        if prefix == "/vsisubfile/" and "," in inner:
            inner = inner.split(",", 1)[1]
        if inner.startswith("{") and "}" in inner:
            inner = inner[1 : inner.index("}")]
    if inner == path or inner.startswith("/vsi"):
        return None
    parts = inner.split("/")
    for end in range(1, len(parts) + 1):
        candidate = "/".join(parts[:end]) or "/"
        if os.path.isfile(candidate):
            return candidate
    return None


def input_files(path: str) -> list[str]:
    """The local files a GDAL source consists of: the file, a VRT's sources, sidecars, the archive behind
    ``/vsizip/…`` and similar. Paths that cannot be opened or are not local give what can be told from the text."""
    from osgeo import gdal

    files = [path]
    try:
        dataset = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
    except RuntimeError:
        dataset = None
    if dataset is not None:
        folder = os.path.dirname(os.path.abspath(path)) if not path.startswith("/vsi") else ""
        for name in dataset.GetFileList() or []:
            if not name.startswith("/vsi") and not os.path.isabs(name) and folder:
                relative_to_source = os.path.join(folder, name)
                name = relative_to_source if os.path.exists(relative_to_source) else os.path.abspath(name)
            files.append(name)
        dataset = None
    local = []
    for name in files:
        archive = _archive_behind(name) if name.startswith("/vsi") else None
        if archive is not None:
            local.append(archive)
        elif not name.startswith("/vsi"):
            local.append(name)
    return list(dict.fromkeys(local))


def _real(path: str) -> str:
    """The path with its folder's symlinks resolved (the name itself too, when it exists), case-normalised."""
    return os.path.normcase(os.path.realpath(os.path.abspath(path)))


def _identity(path: str) -> tuple[str, tuple[int, int] | None]:
    try:
        info = os.stat(path)
        inode = (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) and info.st_ino else None
    except OSError:
        inode = None
    return _real(path), inode


def _same(a: tuple[str, tuple[int, int] | None], b: tuple[str, tuple[int, int] | None]) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def check_extension(parameter: str, path: str, extensions: Iterable[str]) -> None:
    """Refuse ``path`` unless it ends in one of ``extensions`` (case-insensitive, e.g. ``(".tif", ".tiff")``)."""
    allowed = tuple(extensions)
    if not path.lower().endswith(allowed):
        raise ParameterError(parameter, path, f"end in {' or '.join(allowed)} (the only formats written)")


def _check_folder(parameter: str, path: str) -> None:
    if os.path.isdir(path):
        raise ParameterError(parameter, path, "name a file, not an existing folder")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise ParameterError(parameter, path, "be in an existing folder")
    if not os.access(folder, os.W_OK):
        raise ParameterError(parameter, path, "be in a writable folder")


def check_outputs(
    outputs: Mapping[str, str | None],
    rasters: Mapping[str, str | None] | None = None,
    files: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Check output paths before any work; returns them made absolute (``None`` entries dropped).

    Args:
        outputs: Processing key -> output path (in a stable order: a clash names the later key).
        rasters: Processing key -> GDAL source read by the run (a path, a VRT, ``/vsizip/…``): every file it
            consists of is protected.
        files: Processing key -> plain file read by the run (model, checkpoint).

    Raises:
        ParameterError: an output is an existing folder, lies in a missing or read-only folder, is one of the
            files an input consists of (same real file: symlinks, hard links, VRT sources, archives), or is the
            same file as another output. The message names the output's key and the clash.
    """
    protected = [
        (key, _identity(name)) for key, source in (rasters or {}).items() if source for name in input_files(str(source))
    ]
    protected += [(key, _identity(str(path))) for key, path in (files or {}).items() if path and os.path.isfile(path)]
    checked: dict[str, str] = {}
    identities: list[tuple[str, tuple[str, tuple[int, int] | None]]] = []
    for key, path in outputs.items():
        if not path:
            continue
        path = os.path.abspath(os.fspath(path))
        _check_folder(key, path)
        identity = _identity(path)
        for input_key, input_identity in protected:
            if _same(identity, input_identity):
                raise ParameterError(key, path, f"differ from {input_key} and the files it reads ({input_identity[0]})")
        for other_key, other in identities:
            if _same(identity, other):
                raise ParameterError(key, path, f"differ from {other_key}")
        identities.append((key, identity))
        checked[key] = path
    return checked

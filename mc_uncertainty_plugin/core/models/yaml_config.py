"""Reading model config YAML safely: bounded in size and expansion, interpolated only where used.

A config is data from a file a user may have downloaded; reading it must never hang or exhaust memory:

- the file is at most :data:`MAX_CONFIG_BYTES`, parsed with PyYAML's safe loader (the C one when present: the
  pure-Python one takes seconds on a megabyte);
- aliases are not expanded by parsing (an alias is a reference to one node), but anything that copies the data
  would expand them: the document is refused when, with every alias expanded, it would hold more than
  :data:`MAX_NODES` nodes ("billion laughs") or when an alias refers to a node that contains it (a cycle);
- OmegaConf-style ``${a.b.c}`` interpolations are resolved lazily, only in the values the plugin reads
  (:class:`Interpolator`), each reference once (memoised), with cycles refused and every resulting string bounded
  by :data:`MAX_STRING_CHARS` (``b: ${a}${a}``, ``c: ${b}${b}``, … doubles at every level), all of them together
  by :data:`MAX_INTERPOLATED_CHARS`.

No resolvers (``${oc.env:X}``) and no tags that build Python objects: safe loading only.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ..errors import ModelLoadError, ParameterError

__all__ = [
    "MAX_INTERPOLATED_CHARS",
    "MAX_CONFIG_BYTES",
    "MAX_NODES",
    "MAX_STRING_CHARS",
    "read_config",
    "Interpolator",
    "resolve_interpolations",
]

MAX_CONFIG_BYTES = 4 * 2**20
MAX_NODES = 200_000
MAX_STRING_CHARS = 2**20
MAX_INTERPOLATED_CHARS = 8 * 2**20  # all interpolated strings of one config together
_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int], parameter: str) -> int:
    """Nodes under ``node`` with every alias expanded (memoised by node identity, so linear in the document)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ModelLoadError(f"{parameter}: the YAML refers to itself through an alias (a cycle).")
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, sizes, open_nodes, parameter)
        if size > MAX_NODES:
            raise ModelLoadError(
                f"{parameter}: the YAML expands to more than {MAX_NODES:,} values through its aliases; refused "
                "(a config is a few hundred values)."
            )
    open_nodes.discard(key)
    sizes[key] = size
    return size


def _parse(text: str, parameter: str, path: str) -> Any:
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), parameter)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_config(path: str, parameter: str = "MODEL") -> dict:
    """The YAML mapping in ``path``, checked but not interpolated (see :class:`Interpolator`).

    Raises:
        ParameterError: the file cannot be read.
        ModelLoadError: too big, not valid YAML, not a mapping, a cycle or an expansion bomb.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ParameterError(parameter, path, f"be a readable file ({exc.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelLoadError(
            f"{parameter}: '{path}' is over {MAX_CONFIG_BYTES // 2**20} MiB; a model config is a "
            "few kilobytes (weights belong in CHECKPOINT)."
        )
    try:
        content = _parse(data.decode("utf-8"), parameter, path)
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{parameter}: '{path}' is not UTF-8 text ({exc.reason}).") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ModelLoadError(
            f"{parameter}: '{path}' is not valid YAML{line}: {getattr(exc, 'problem', exc)}."
        ) from None
    except RecursionError:
        raise ModelLoadError(f"{parameter}: '{path}' nests too deeply.") from None
    if not isinstance(content, dict):
        raise ModelLoadError(f"{parameter}: '{path}' must hold a YAML mapping, got {type(content).__name__}.")
    return content


class Interpolator:
    """Resolves ``${a.b.c}`` references of a config lazily, against the whole config.

    A string that is exactly one reference takes the referenced value with its type; references inside longer
    strings are replaced by the value's text. Each reference is resolved once; resolvers (``${oc.env:X}``),
    unknown paths, cycles and strings over :data:`MAX_STRING_CHARS` are errors.
    """

    def __init__(self, root: Any, parameter: str = "MODEL") -> None:
        self.root = root
        self.parameter = parameter
        self._done: dict[str, Any] = {}
        self._resolving: list[str] = []
        self._produced = 0

    def get(self, key: str, default: Any = None) -> Any:
        """The top-level ``key`` of the config, resolved (``default`` when absent)."""
        if not isinstance(self.root, dict) or key not in self.root:
            return default
        return self.resolve(self.root[key])

    def resolve(self, value: Any) -> Any:
        """``value`` with its references resolved (containers are copied, the config is not changed)."""
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = _INTERPOLATION.fullmatch(value)
        if whole:
            return self._lookup(whole.group(1))
        pieces: list[str] = []
        size = 0
        position = 0
        for match in _INTERPOLATION.finditer(value):
            for piece in (value[position : match.start()], str(self._lookup(match.group(1)))):
                size += len(piece)
                self._produced += len(piece)
                if size > MAX_STRING_CHARS or self._produced > MAX_INTERPOLATED_CHARS:
                    raise ModelLoadError(
                        f"{self.parameter}: interpolated values grow beyond "
                        f"{min(size, self._produced):,} characters; refused."
                    )
                pieces.append(piece)
            position = match.end()
        pieces.append(value[position:])
        return "".join(pieces)

    def _lookup(self, reference: str) -> Any:
        reference = reference.strip()
        if ":" in reference or not reference:
            raise ModelLoadError(
                f"{self.parameter}: interpolation ${{{reference}}} is not supported (only ${{section.key}})."
            )
        if reference in self._done:
            return self._done[reference]
        if reference in self._resolving:
            raise ModelLoadError(f"{self.parameter}: interpolation ${{{reference}}} refers to itself (a cycle).")
        node: Any = self.root
        for part in reference.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ModelLoadError(f"{self.parameter}: interpolation ${{{reference}}} refers to a missing key.")
        self._resolving.append(reference)
        try:
            value = self.resolve(node)
        finally:
            self._resolving.pop()
        self._done[reference] = value
        return value


def resolve_interpolations(config: Any, root: Any = None) -> Any:
    """``config`` with every ``${a.b.c}`` resolved against ``root`` (default: ``config`` itself)."""
    return Interpolator(config if root is None else root).resolve(config)

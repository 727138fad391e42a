"""A :class:`~..inference.plan.RunPlan` as JSON-ready data and back, equal to the original.

A plan is plain frozen data (tuples, numbers, strings), so the mapping is field by field: tuples become lists,
and lists become tuples again on the way back. Floats survive exactly (Python writes the shortest text that
reads back as the same float), and seeds up to 2^64 - 1 stay integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ..config import InferenceConfig
from ..errors import ParameterError
from ..inference.plan import Georeference, OutputSpec, Region, RunPlan

__all__ = ["PLAN_FORMAT", "plan_to_dict", "plan_from_dict", "region_to_list", "region_from_list"]

PLAN_FORMAT = 1  # bumped whenever the mapping below changes


def _plain(value: Any) -> Any:
    """Tuples (nested) as lists."""
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def _tuples(value: Any) -> Any:
    """Lists (nested) as tuples."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}


def _build(cls: type, data: Mapping[str, Any], built: Mapping[str, Any] | None = None) -> Any:
    """``cls`` from its fields' data (lists as tuples) and fields ``built`` already."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ParameterError("plan", sorted(unknown), f"hold only fields of {cls.__name__}")
    return cls(**{name: _tuples(value) for name, value in data.items()}, **(built or {}))


def plan_to_dict(plan: RunPlan) -> dict[str, Any]:
    """The plan as JSON-ready data (``json.dumps`` writes it as is)."""
    data = _fields(plan)
    data["georeference"] = _fields(plan.georeference)
    data["config"] = _fields(plan.config)
    data["outputs"] = [_fields(spec) for spec in plan.outputs]
    return {"format": PLAN_FORMAT, **data}


def plan_from_dict(data: Mapping[str, Any]) -> RunPlan:
    """The plan of :func:`plan_to_dict` (also after a JSON round trip).

    Raises:
        ParameterError: the data is of another format or has fields a plan does not have.
    """
    data = dict(data)
    if data.pop("format", None) != PLAN_FORMAT:
        raise ParameterError(
            "plan", data.get("input_path"), f"be a plan of format {PLAN_FORMAT} (written by this version)"
        )
    parts = {
        "georeference": _build(Georeference, data.pop("georeference")),
        "config": _build(InferenceConfig, data.pop("config")),
        "outputs": tuple(_build(OutputSpec, spec) for spec in data.pop("outputs")),
    }
    return _build(RunPlan, data, parts)


def region_to_list(region: Region) -> list[int]:
    """``[row, col, height, width]``."""
    return [region.row, region.col, region.height, region.width]


def region_from_list(values: list[int]) -> Region:
    row, col, height, width = (int(v) for v in values)
    return Region(row, col, height, width)

"""Test-time augmentations: the dihedral group D4 of the square and its flip subgroup.

Each transform acts on ``(B, C, H, W)`` tensors and is undone exactly on the model output, before blending.
``flip`` uses the four transforms that keep the tile's shape (identity, horizontal flip, vertical flip, both =
rotation by 180°), so it is exact for any tile. ``d4`` adds the rotations by 90° and 270° and the two
transposes; these turn an ``H x W`` tile into a ``W x H`` one, which is fed to the model as is (fully
convolutional models accept it), so no padding or resampling is involved and d4 stays exact on non-square
tiles.

Any subset of the eight can be chosen by name (``TTA_MODE=identity,hflip,rot90``,
:func:`~..config.normalize_tta_mode`); they always run in the canonical order of
:data:`~..config.TTA_TRANSFORMS`, and each transform's dropout masks are keyed by its place in that order
(:attr:`Transform.key`), so a transform samples the same masks in every set it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TTA_TRANSFORMS, tta_transform_names

__all__ = ["Transform", "transforms_for"]


@dataclass(frozen=True)
class Transform:
    """``x -> rot90(flip_w(x) if flip else x, k)``; :meth:`invert` undoes it."""

    name: str
    rotations: int  # quarter turns, counter-clockwise
    flip: bool  # flip along W first

    @property
    def key(self) -> int:
        """Its place among the eight (:data:`~..config.TTA_TRANSFORMS`): part of its dropout masks' key."""
        return TTA_TRANSFORMS.index(self.name)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = torch.flip(x, dims=(-1,))
        if self.rotations % 4:
            x = torch.rot90(x, self.rotations, dims=(-2, -1))
        return x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        if self.rotations % 4:
            y = torch.rot90(y, -self.rotations, dims=(-2, -1))
        if self.flip:
            y = torch.flip(y, dims=(-1,))
        return y


_IDENTITY = Transform("identity", 0, False)
_FLIPS = (
    _IDENTITY,
    Transform("hflip", 0, True),
    Transform("vflip", 2, True),  # flip W then rotate 180 = flip H
    Transform("rot180", 2, False),
)
_D4 = _FLIPS + (
    Transform("rot90", 1, False),
    Transform("rot270", 3, False),
    Transform("transpose", 1, True),
    Transform("antitranspose", 3, True),
)


_BY_NAME = {transform.name: transform for transform in _D4}  # in TTA_TRANSFORMS' order (a test checks it)


def transforms_for(mode: str) -> tuple[Transform, ...]:
    """``none`` -> (identity,), ``flip`` -> 4 transforms, ``d4`` -> 8 transforms, ``"identity,rot90"`` -> those
    two, in canonical order.

    Raises:
        ParameterError: naming TTA_MODE (an unknown or repeated name).
    """
    return tuple(_BY_NAME[name] for name in tta_transform_names(mode))

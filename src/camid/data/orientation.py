"""The dihedral group D4 on the last two dims of image tensors: training orientation policies and TTA.

The 8 elements are ``rot90^k`` optionally followed by a horizontal flip; each has an
exact inverse. Training draws its orientation from a policy (``none``, ``flips``, ``d4``)
and test-time augmentation de-augments with the same objects, so both share one
implementation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor
# torch is imported where a tensor is turned, not here: sensor_frame runs in the process pool's
# workers (PRNU residuals), which would otherwise each import torch for a numpy rotation.


@dataclass(frozen=True)
class D4:
    """Element ``rot90^k`` then (optionally) horizontal flip, acting on the last two dims."""

    k: int
    flip: bool

    @property
    def name(self) -> str:
        return f"rot{90 * self.k}" + ("_flip" if self.flip else "")

    def augment(self, x: Tensor) -> Tensor:
        import torch

        y = torch.rot90(x, self.k, dims=(-2, -1)) if self.k else x
        return torch.flip(y, dims=(-1,)) if self.flip else y

    def deaugment(self, y: Tensor) -> Tensor:
        import torch

        x = torch.flip(y, dims=(-1,)) if self.flip else y
        return torch.rot90(x, -self.k, dims=(-2, -1)) if self.k else x


D4_ELEMENTS: tuple[D4, ...] = tuple(D4(k, f) for f in (False, True) for k in range(4))
IDENTITY = D4_ELEMENTS[0]
HFLIP = D4(0, True)
ORIENTATION_POLICIES: dict[str, tuple[D4, ...]] = {
    "none": (IDENTITY,),
    "flips": (IDENTITY, HFLIP, D4(2, False), D4(2, True)),  # mirror, flip and both
    "d4": D4_ELEMENTS,
}


def sensor_frame(img: np.ndarray) -> np.ndarray:
    """A photo taller than wide turned a quarter turn counter-clockwise to landscape, else itself.

    Camera sensors are landscape. A portrait shot stored with rotated pixels (some phones do
    it, and so does editing software) shows its camera's colour-filter grid and JPEG blocks
    transposed, a pattern no landscape test crop has. Either quarter turn brings the grid back
    into the orbit of the flips the training policies draw, so the direction, which the
    pixels alone cannot tell, does not matter.
    """
    if img.shape[0] <= img.shape[1]:
        return img
    return np.ascontiguousarray(np.rot90(np.asarray(img), 1))

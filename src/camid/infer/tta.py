"""Test-time augmentation as augment / de-augment pairs on NCHW tensors (pytorch-toolbelt style).

A view is a crop and then an element of D4 (``camid.data.orientation``, the same objects
as the training orientation policy). TTA10 = five crops x {identity, hflip}, TTA40 =
five crops x D4, ``none`` = one centre crop. Views of a batch go through the network
as one larger batch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..config import PROB_FLOOR, REDUCTION_POWERS, TTA_POLICIES
from ..data.orientation import D4, D4_ELEMENTS, HFLIP, IDENTITY
from ..util.probs import power_mean

Tensor = torch.Tensor


def five_crop_boxes(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of the centre and four corner crops, on even offsets (colour-filter grid)."""
    if size > min(height, width):
        raise ValueError(f"crop {size} larger than the image {height}x{width}")
    bottom, right = (height - size) // 2 * 2, (width - size) // 2 * 2
    cy, cx = (height - size) // 4 * 2, (width - size) // 4 * 2
    return [(cy, cx), (0, 0), (0, right), (bottom, 0), (bottom, right)]


@dataclass(frozen=True)
class View:
    """One TTA view: a crop at ``(top, left)`` of ``size`` (None: the whole image), then a D4 element."""

    top: int
    left: int
    size: int | None
    orient: D4

    def augment(self, x: Tensor) -> Tensor:
        if self.size is not None:
            x = x[..., self.top:self.top + self.size, self.left:self.left + self.size]
        return self.orient.augment(x)


def make_views(tta: str, height: int, width: int, size: int) -> list[View]:
    """The views of a TTA policy for an image of ``height x width`` and network input ``size``.

    ``full`` feeds the whole image as one view (global pooling takes any size), which
    averages the evidence of every pixel; ``full_d4`` adds the 8 orientations.
    """
    if tta in ("full", "full_d4"):
        return [View(0, 0, None, o) for o in (D4_ELEMENTS if tta == "full_d4" else (IDENTITY,))]
    if tta == "none":
        if size >= min(height, width):
            return [View(0, 0, None, IDENTITY)]
        (top, left) = five_crop_boxes(height, width, size)[0]
        return [View(top, left, size, IDENTITY)]
    orients = {"tta10": (IDENTITY, HFLIP), "tta40": D4_ELEMENTS}.get(tta)
    if orients is None:
        raise ValueError(f"unknown TTA {tta!r}; choose one of {', '.join(TTA_POLICIES)}")
    boxes = five_crop_boxes(height, width, size)
    return [View(top, left, size, o) for (top, left) in boxes for o in orients]


def augment_batch(x: Tensor, views: Sequence[View]) -> Tensor:
    """(N, C, H, W) -> (V*N, C, h, w), view-major, so one forward pass covers every view."""
    return torch.cat([v.augment(x) for v in views], dim=0)


def reduce_probs(probs: Tensor, how: str = "gmean", dim: int = 0, eps: float = PROB_FLOOR) -> Tensor:
    """Average probabilities over ``dim`` by name and renormalise rows.

    The names are ``config.REDUCTION_POWERS``, each the power mean with its exponent p
    (``util.probs.power_mean``, the formula level 2 uses over tables): p = 0 is the geometric mean,
    computed in log space (the recipe's default), 1 the arithmetic mean, 2 the root mean square
    (1st place's choice).
    """
    if how not in REDUCTION_POWERS:
        raise ValueError(f"unknown reduction {how!r}; choose from {', '.join(REDUCTION_POWERS)}")
    return power_mean(probs, REDUCTION_POWERS[how], dim, floor=eps)


def predict_views(forward: Callable[[Tensor], Tensor], x: Tensor, views: Sequence[View],
                  how: str = "gmean") -> Tensor:
    """Softmax probabilities of ``forward`` over all views of ``x``, reduced per image: (N, classes)."""
    n = x.shape[0]
    logits = forward(augment_batch(x, views))
    probs = torch.softmax(logits.float(), dim=-1).reshape(len(views), n, -1)
    return reduce_probs(probs, how, dim=0)

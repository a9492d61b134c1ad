"""The ``continuous`` training policy through albumentations 2.x (docs/recipe.md §2).

Each manipulated training sample gets one of: JPEG quality 70-90, gamma 0.8-1.2 or a
bicubic resize by 0.5-2.0 (``manipulations.CONTINUOUS_RANGES``). The 8 exact competition
manipulations stay camid's own pinned functions (``manipulations``), used everywhere a
manipulation must be reproducible to the pixel (validation, OOF variants, the simulator).

The 2nd-place write-up's ``RandomScale(scale_limit=(0.5, 2))`` scales by 1.5-3.0, because
albumentations adds 1 to the limit; ``scale_limit`` turns a factor range into the limit.
"""
from __future__ import annotations

import functools

import albumentations as A
import cv2
import numpy as np

from .manipulations import CONTINUOUS_RANGES


def scale_limit(low: float, high: float) -> tuple[float, float]:
    """The ``RandomScale`` limit whose factors run from ``low`` to ``high``."""
    return low - 1.0, high - 1.0


def continuous_policy() -> A.Compose:
    """One of the three continuous manipulations, drawn uniformly, always applied."""
    q_lo, q_hi = CONTINUOUS_RANGES["jpeg"]
    g_lo, g_hi = CONTINUOUS_RANGES["gamma"]
    s_lo, s_hi = CONTINUOUS_RANGES["resize"]
    return A.Compose([A.OneOf([
        A.ImageCompression(compression_type="jpeg", quality_range=(int(q_lo), int(q_hi)), p=1.0),
        A.RandomGamma(gamma_limit=(g_lo * 100, g_hi * 100), p=1.0),  # albumentations' gamma is in percent
        A.RandomScale(scale_limit=scale_limit(s_lo, s_hi), interpolation=cv2.INTER_CUBIC, p=1.0),
    ], p=1.0)], p=1.0)


@functools.cache
def _policy() -> A.Compose:
    return continuous_policy()


def continuous(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply the policy with draws seeded from ``rng`` (the sample's own generator), so a run
    is reproducible whatever the number of DataLoader workers."""
    policy = _policy()
    policy.set_random_seed(int(rng.integers(2**31)))
    return np.ascontiguousarray(policy(image=img)["image"])

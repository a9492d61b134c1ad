"""Averaging probability arrays: weighted power means (``gmean`` p=0, ``mean`` p=1, ``rms`` p=2, ``pmean<p>``)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import equalise


def power_mean(arrays: Sequence[np.ndarray], p: float, weights: Sequence[float] | None = None,
               floor: float = equalise.DEFAULT_FLOOR) -> np.ndarray:
    """Weighted power mean of probability arrays, rows renormalised to sum to 1."""
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    w = np.ones(len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stack),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights {list(w)} must be one non-negative number per table, not all zero")
    w = (w / w.sum())[:, None, None]
    if p == 0:
        out = np.exp((w * np.log(np.clip(stack, floor, None))).sum(axis=0))
    elif p < 0:  # a zero would be an infinite term: clip like the geometric mean
        out = (w * np.clip(stack, floor, None) ** p).sum(axis=0) ** (1.0 / p)
    else:
        out = (w * stack ** p).sum(axis=0) ** (1.0 / p)
    return out / out.sum(axis=1, keepdims=True)

"""The power mean of probabilities, the one formula behind every average in camid: TTA views,
checkpoints and folds (torch tensors, ``infer.tta.reduce_probs``) and level-2 tables (numpy
arrays, ``level2.average.power_mean``)."""
from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from ..config import PROB_FLOOR

Probs = TypeVar("Probs")  # a numpy array or a torch tensor; the result is of the same kind


def _namespace(x: object) -> ModuleType:
    if isinstance(x, np.ndarray):
        return np
    import torch  # only a tensor gets here, so torch is already loaded

    return torch


def power_mean(x: Probs, p: float, dim: int = 0, weights: Sequence[float] | np.ndarray | None = None,
               floor: float = PROB_FLOOR) -> Probs:
    """Power mean with exponent ``p`` over ``dim``, then rows (the last axis) renormalised to sum to 1.

    p = 0 is the geometric mean (its limit: exp of the mean log), computed in log space; values
    are clipped to ``floor`` before a log or a negative power, where a zero would veto a class or
    be an infinite term. ``weights`` (one non-negative number per entry of ``dim``, not all zero):
    a weighted sum with the normalised weights instead of the plain mean.
    """
    xp = _namespace(x)
    a: Any = x
    v = a.clip(min=floor) if p <= 0 else a
    if weights is None:
        def average(t: Any) -> Any:
            return t.mean(dim)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (v.shape[dim],) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights {list(w)} must be one non-negative number per table, not all zero")
        shape = [1] * v.ndim
        shape[dim] = len(w)
        wn = xp.asarray(w / w.sum()).reshape(shape)

        def average(t: Any) -> Any:
            return (wn * t).sum(dim)
    out = xp.exp(average(xp.log(v))) if p == 0 else average(v ** p) ** (1.0 / p)
    return out / out.sum(-1, keepdims=True)

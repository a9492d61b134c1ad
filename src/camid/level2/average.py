"""Averaging probability tables: weighted power means (``gmean`` p=0, ``mean`` p=1, ``rms`` p=2, ``pmean<p>``)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import PROB_FLOOR
from ..util import probs


def power_mean(arrays: Sequence[np.ndarray], p: float, weights: Sequence[float] | None = None,
               floor: float = PROB_FLOOR) -> np.ndarray:
    """Weighted power mean of probability arrays (``util.probs.power_mean``), rows renormalised to sum to 1.

    Equal weights are a weighted sum too (not a plain mean): level 2 has always averaged so, and its
    tables stay the same to the bit."""
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    w = np.ones(len(stack)) if weights is None else weights
    return probs.power_mean(stack, p, 0, w, floor)

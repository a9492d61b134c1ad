"""The stacker bags train side by side on joblib's workers with the same bytes as one at a time."""
from __future__ import annotations

import os

import numpy as np
import pytest

from camid.config import StackConfig
from camid.level2 import stack


@pytest.mark.parametrize("kind", ["xgb", "lgb", "mlp"])
def test_parallel_bags_are_byte_identical_to_sequential_ones(kind, monkeypatch):
    k, rows = 3, np.arange(300)
    y, is_test, fnames = rows % k, rows >= 240, [f"f{i // 2}" for i in rows]
    # Two base models' probabilities with the true class favoured, as the stacker meets them.
    probs = [np.random.default_rng(s).dirichlet(np.ones(k), len(rows)) + np.eye(k)[y] for s in (1, 2)]
    X = stack.features([p / p.sum(axis=1, keepdims=True) for p in probs], rows % 2)
    n = len(rows)
    cfg = StackConfig(seeds=2, folds=3, rounds=15, mlp_epochs=3, threads=1)  # 6 models, one thread each
    monkeypatch.setattr(stack, "PARALLEL_MIN_ROW_MODELS", 0)  # this small bag on workers all the same
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # two at a time...
    side_by_side, info = stack.bag(kind, X, y, np.ones(n), fnames, is_test, k, cfg, 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # ...and one at a time, in this process
    one_by_one, again = stack.bag(kind, X, y, np.ones(n), fnames, is_test, k, cfg, 0)
    assert side_by_side.tobytes() == one_by_one.tobytes()
    assert info == again

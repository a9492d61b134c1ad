"""``camid bench`` section ``stack``: time of one stacker bag (seeds x folds models) per learner on
a synthetic OOF table, one thread."""
from __future__ import annotations

import time

import numpy as np

from .common import Row
from .equalise import synthetic_probs


def bench_stack(quick: bool) -> list[Row]:
    from ..config import StackConfig
    from ..data.layout import TRAIN_DIR
    from ..level2 import stack

    n_img, n_test, variants, n_models, k = (120, 60, 3, 2, 10) if quick else (800, 400, 3, 4, 10)
    rng = np.random.default_rng(0)
    y_img = np.arange(n_img) % k
    fnames = np.repeat([f"{TRAIN_DIR}/c{c}/img{i}.jpg" for i, c in enumerate(y_img)], variants)
    fnames = np.concatenate([fnames, [f"img_{i}_unalt.tif" for i in range(n_test)]])
    truth = np.concatenate([np.repeat(y_img, variants), rng.integers(0, k, n_test)])
    n = len(truth)
    is_test = np.arange(n) >= n - n_test
    y = np.where(is_test, 0, truth)  # test labels are unknown to the stacker (dummy 0, as stack.run)
    # each model: noisy logits with a bonus on the true class
    arrays = [synthetic_probs(n, k, seed=m + 1, strength=2.0, labels=truth) for m in range(n_models)]
    manip = np.tile(np.r_[0, np.ones(variants - 1)], n_img)
    X = stack.features(arrays, np.r_[manip, np.zeros(n_test)], log=True)
    w = np.ones(n)
    # One thread, like the sample section: on a shared machine extra OpenMP threads spin
    # against other work and the timing measures the neighbours instead of the stacker.
    cfg = StackConfig(seeds=1 if quick else 2, folds=2 if quick else 5, rounds=10 if quick else 100,
                      mlp_epochs=2 if quick else 20, threads=1)
    rows = []
    for kind in stack.LEARNERS:  # every stacker the library has
        start = time.perf_counter()
        _, info = stack.bag(kind, X, y, w, fnames, is_test, k, cfg, base_seed=0)
        sec = time.perf_counter() - start
        acc = float(np.mean(info["fold_accuracy"]))
        rows.append(Row("stack", f"{kind} bag, {info['models']} models", "-", None, sec, "s per bag", None,
                        f"{n - n_test} OOF rows ({n_img} images x {variants} variants) + {n_test} test, "
                        f"{X.shape[1]} features, {cfg.rounds} rounds/{cfg.mlp_epochs} epochs, 1 thread; "
                        f"{sec / info['models']:.2f} s/model; fold accuracy {acc:.3f}"))
    return rows

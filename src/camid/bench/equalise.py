"""``camid bench`` section ``equalise``: the Hungarian solver vs the scalable min-cost-flow solver
at 2,640 (the test set) and 100,000 images (Hungarian cannot run there: its n x n matrix); and the
synthetic problems it times (``synthetic_probs``, also the input of the stackers' section)."""
from __future__ import annotations

import time

import numpy as np

from ..level2 import equalise
from .common import Row


def synthetic_probs(n: int, k: int = 10, seed: int = 0, strength: float = 3.0,
                    labels: np.ndarray | None = None) -> np.ndarray:
    """An n x k problem shaped like a good classifier's softmax output (balanced unless
    ``labels`` gives the true classes)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k if labels is None else np.asarray(labels)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += strength
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def benchmark(n: int, k: int = 10, seed: int = 0, methods: tuple[str, ...] = equalise.METHODS,
              hungarian_max: int = equalise.HUNGARIAN_MAX_N, strength: float = 3.0) -> dict[str, float | None]:
    """Seconds per solver on one synthetic n x k problem (None: hungarian too large).

    ``strength`` is the true-class logit bonus: 3 is a good model, 0 pure noise.
    """
    probs = synthetic_probs(n, k, seed, strength)
    q = equalise.quotas(probs)
    out: dict[str, float | None] = {}
    for m in methods:
        if m == "hungarian" and n > hungarian_max:
            out[m] = None
            continue
        start = time.perf_counter()
        equalise.SOLVERS[m](probs, q)  # hungarian and flow at their default floor
        out[m] = time.perf_counter() - start
    return out


def bench_equalise(quick: bool) -> list[Row]:
    rows = []
    probs = synthetic_probs(2640, 10, seed=0)
    q = equalise.quotas(probs)
    timed: dict[int, float] = {}
    for n in ((2640,) if quick else (2640, 6000)):
        runs = [benchmark(n, methods=("hungarian", "flow")) for _ in range(1 if quick else 3)]
        res = {m: min(float(r[m]) for r in runs) for m in ("hungarian", "flow")}  # type: ignore[arg-type]
        timed[n] = res["hungarian"]
        if n == 2640:
            same = abs(equalise.assignment_cost(probs, equalise.hungarian(probs, q))
                       - equalise.assignment_cost(probs, equalise.flow(probs, q)))
            rows.append(Row("equalise", "2,640 images x 10 classes", "hungarian (linear_sum_assignment)",
                            1 / timed[n], 1 / res["flow"], "solves/s", timed[n] / res["flow"],
                            f"flow solver; same optimum (cost difference {same:.1e})"))
    big = benchmark(100_000, methods=("greedy", "flow"))
    note = "Hungarian not run: its 100,000^2 cost matrix is 80 GB"
    if 6000 in timed:
        k = np.log(timed[6000] / timed[2640]) / np.log(6000 / 2640)
        note += f"; t ~ n^{k:.2f} from 2,640 and 6,000 gives ~{timed[6000] * (100_000 / 6000) ** k:.0f} s (estimate)"
    flow_s, greedy_s = big["flow"], big["greedy"]
    if flow_s is None or greedy_s is None:
        raise RuntimeError("bench: equalise.benchmark did not time the flow and greedy solvers")
    rows.append(Row("equalise", "100,000 images x 10 classes", "hungarian", None, 1 / flow_s,
                    "solves/s", None, note + f"; flow {flow_s:.2f} s, greedy {greedy_s:.2f} s"))
    return rows

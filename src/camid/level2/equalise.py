"""Prediction equalisation: a hard assignment with (nearly) equal class counts.

The competition test set is balanced (132 images per class in each of the
``_unalt`` and ``_manip`` halves), so the 2nd-place team forced every class to
receive its share of predictions, separately per half (docs/recipe.md §7). Three solvers:

- ``greedy``: sort every (image, class) pair by probability, highest first
  (ties: lower image index, then lower class index); walk the list and assign
  image i to class j when i is still unassigned and j's quota is not full.
  This is the 2nd-place team's "top-N most confident per class" rule made exact.
- ``hungarian``: ``scipy.optimize.linear_sum_assignment`` on the n x n cost
  matrix ``-log p`` with each class repeated ``quota`` times as columns.
  Memory is O(n^2), so groups above ``HUNGARIAN_MAX_N`` are solved by ``flow``
  (the same optimum) and the fallback is reported.
- ``flow``: exact min-cost transportation for few classes. A dual warm start
  (coordinate ascent on the class prices) gives an assignment that is already
  optimal for its own class counts; successive shortest paths on the k-node
  "move one image from class a to class b" graph then fix the remaining
  surplus one image at a time. Each step keeps the assignment optimal for its
  counts, so the final one is optimal for the quotas: the same total cost as
  the Hungarian solution, in O(n k log n + surplus * k^2) instead of O(n^3).

Objective of hungarian/flow: minimise sum_i -log(max(p_ij, floor)), i.e.
maximise the joint likelihood of the assignment. Quotas: n rows and k classes
give floor(n/k) per class; the n mod k remaining slots go to the classes with
the largest total probability mass over the group (ties: class order).
"""
from __future__ import annotations

import heapq
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from ..config import PROB_FLOOR

METHODS = ("greedy", "hungarian", "flow")
HUNGARIAN_MAX_N = 6000  # 6000^2 float64 = 288 MB; beyond that use the flow solver
_TOL = 1e-12  # shortest-path relaxations smaller than this are rounding noise


def quotas(probs: np.ndarray) -> np.ndarray:
    """Per-class target counts: floor(n/k) each, remainder to the highest-mass classes."""
    n, k = probs.shape
    q = np.full(k, n // k, dtype=np.int64)
    mass = probs.sum(axis=0)
    # stable sort on -mass: equal masses keep class order
    q[np.argsort(-mass, kind="stable")[: n % k]] += 1
    return q


def cost_matrix(probs: np.ndarray, floor: float = PROB_FLOOR) -> np.ndarray:
    """-log p with a floor, so a zero probability is a large finite cost, not inf."""
    return -np.log(np.clip(np.asarray(probs, dtype=np.float64), floor, None))


def assignment_cost(probs: np.ndarray, assignment: np.ndarray, floor: float = PROB_FLOOR) -> float:
    """Total -log likelihood of a hard assignment (the quantity the exact solvers minimise)."""
    cost = cost_matrix(probs, floor)
    return float(cost[np.arange(len(assignment)), assignment].sum())


def _check(probs: np.ndarray, quota: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"expected an n x k probability matrix, got shape {probs.shape}")
    q = quotas(probs) if quota is None else np.asarray(quota, dtype=np.int64)
    if q.shape != (probs.shape[1],) or (q < 0).any() or q.sum() != probs.shape[0]:
        raise ValueError(f"quotas {q.tolist()} must be k non-negative counts summing to n={probs.shape[0]}")
    return probs, q


def greedy(probs: np.ndarray, quota: np.ndarray | None = None) -> np.ndarray:
    """Most confident (image, class) pairs first, respecting quotas (see module doc)."""
    probs, q = _check(probs, quota)
    n, k = probs.shape
    order = np.argsort(-probs.ravel(), kind="stable").tolist()
    left = q.tolist()
    out = np.full(n, -1, dtype=np.int64)
    assigned = 0
    for flat in order:
        i, j = divmod(flat, k)
        if out[i] < 0 and left[j] > 0:
            out[i] = j
            left[j] -= 1
            assigned += 1
            if assigned == n:
                break
    return out


def hungarian(probs: np.ndarray, quota: np.ndarray | None = None, floor: float = PROB_FLOOR) -> np.ndarray:
    """Optimal assignment via linear_sum_assignment on the slot-expanded n x n matrix."""
    probs, q = _check(probs, quota)
    slots = np.repeat(np.arange(probs.shape[1]), q)  # column c is one place in class slots[c]
    cost = cost_matrix(probs, floor)[:, slots]
    rows, cols = linear_sum_assignment(cost)
    out = np.empty(probs.shape[0], dtype=np.int64)
    out[rows] = slots[cols]
    return out


def _dual_warm_start(cost: np.ndarray, q: np.ndarray, sweeps: int = 8) -> np.ndarray:
    """Class prices v from coordinate ascent on the transportation dual.

    Setting v_j so that exactly q_j images prefer j (others fixed) maximises the
    dual in coordinate j. Any prices give an assignment argmin_j(c_ij - v_j)
    that is optimal for its own counts, so this only needs to be close.
    """
    n, k = cost.shape
    v = np.zeros(k)
    for _ in range(sweeps):
        for j in range(k):
            red = cost - v
            red[:, j] = np.inf
            gap = cost[:, j] - red.min(axis=1)  # image prefers j iff gap < v_j
            if q[j] == 0:
                v[j] = gap.min() - 1.0
            elif q[j] >= n:
                v[j] = gap.max() + 1.0
            else:
                part = np.partition(gap, (q[j] - 1, q[j]))
                v[j] = 0.5 * (part[q[j] - 1] + part[q[j]])  # midpoint: no image sits on the tie
        counts = np.bincount((cost - v).argmin(axis=1), minlength=k)
        if (counts == q).all():
            break
    return v


class _MoveGraph:
    """Cheapest single-image move a -> b for every class pair, kept up to date.

    Each (a, b) has the initial members of a sorted by c_ib - c_ia (a lazy
    pointer skips images that left) plus a heap for images that arrived later.
    """

    def __init__(self, cost: np.ndarray, assign: np.ndarray):
        self.cost, self.assign = cost, assign
        self.k = k = cost.shape[1]
        self.sorted_idx: list[list[np.ndarray]] = [[None] * k for _ in range(k)]  # type: ignore[list-item]
        self.sorted_val: list[list[np.ndarray]] = [[None] * k for _ in range(k)]  # type: ignore[list-item]
        self.ptr = np.zeros((k, k), dtype=np.int64)
        self.heaps: list[list[list]] = [[[] for _ in range(k)] for _ in range(k)]
        for a in range(k):
            members = np.flatnonzero(assign == a)
            for b in range(k):
                if b == a:
                    continue
                delta = cost[members, b] - cost[members, a]
                order = np.argsort(delta, kind="stable")  # ties: lower image index first
                self.sorted_idx[a][b] = members[order]
                self.sorted_val[a][b] = delta[order]
        self.W = np.full((k, k), np.inf)
        self.who = np.full((k, k), -1, dtype=np.int64)
        for a in range(k):
            self.refresh(a)

    def _peek(self, a: int, b: int) -> tuple[float, int]:
        idx, val, assign = self.sorted_idx[a][b], self.sorted_val[a][b], self.assign
        p = int(self.ptr[a, b])
        while p < len(idx) and assign[idx[p]] != a:
            p += 1
        self.ptr[a, b] = p
        best = (float(val[p]), int(idx[p])) if p < len(idx) else (np.inf, -1)
        heap = self.heaps[a][b]
        while heap and assign[heap[0][1]] != a:
            heapq.heappop(heap)
        if heap and heap[0] < best:
            best = heap[0]
        return best

    def refresh(self, a: int) -> None:
        for b in range(self.k):
            if b != a:
                self.W[a, b], self.who[a, b] = self._peek(a, b)

    def move(self, i: int, b: int) -> None:
        self.assign[i] = b
        c = self.cost[i]
        for other in range(self.k):
            if other != b:
                heapq.heappush(self.heaps[b][other], (float(c[other] - c[b]), i))


def _shortest_path(W: np.ndarray, sources: np.ndarray, sinks: np.ndarray) -> list[int]:
    """Cheapest path from any surplus class to any deficit class (Bellman-Ford, k nodes)."""
    k = len(W)
    dist = np.where(sources, 0.0, np.inf)
    pred = np.full(k, -1, dtype=np.int64)
    cols = np.arange(k)
    for _ in range(k):
        cand = dist[:, None] + W
        frm = cand.argmin(axis=0)
        best = cand[frm, cols]
        better = best < dist - _TOL
        if not better.any():
            break
        dist[better] = best[better]
        pred[better] = frm[better]
    target = int(np.flatnonzero(sinks)[np.argmin(dist[sinks])])
    if not np.isfinite(dist[target]):
        raise RuntimeError("equalise: no move path between classes (internal error)")
    path = [target]
    while pred[path[-1]] >= 0:
        path.append(int(pred[path[-1]]))
        if len(path) > k:
            raise RuntimeError("equalise: negative cycle in the move graph (internal error)")
    return path[::-1]


def flow(probs: np.ndarray, quota: np.ndarray | None = None, floor: float = PROB_FLOOR,
         warm_sweeps: int = 8) -> np.ndarray:
    """Exact optimum of the quota assignment, scalable in n (see module doc).

    ``warm_sweeps=0`` starts from the plain argmax, so every surplus image goes
    through the shortest-path phase (tests use it to exercise that phase).
    """
    probs, q = _check(probs, quota)
    n, k = probs.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    cost = cost_matrix(probs, floor)
    v = _dual_warm_start(cost, q, warm_sweeps)
    assign = (cost - v).argmin(axis=1).astype(np.int64)
    surplus = np.bincount(assign, minlength=k) - q
    if not surplus.any():
        return assign
    graph = _MoveGraph(cost, assign)
    while surplus.any():
        path = _shortest_path(graph.W, surplus > 0, surplus < 0)
        # pick every image first: moving one changes the best move of the next class
        movers = [int(graph.who[a, b]) for a, b in zip(path, path[1:], strict=False)]
        for i, b in zip(movers, path[1:], strict=True):
            graph.move(i, b)
        for a in path:
            graph.refresh(a)
        surplus[path[0]] -= 1
        surplus[path[-1]] += 1
    return graph.assign


SOLVERS: dict[str, Callable[..., np.ndarray]] = {"greedy": greedy, "hungarian": hungarian, "flow": flow}


def solve(probs: np.ndarray, method: str, quota: np.ndarray | None = None,
          floor: float = PROB_FLOOR) -> tuple[np.ndarray, str]:
    """Assignment by ``method``; returns (assignment, solver actually used)."""
    if method not in SOLVERS:
        raise ValueError(f"unknown equaliser {method!r}; choose from {', '.join(METHODS)}")
    if method == "greedy":
        return greedy(probs, quota), "greedy"
    if method == "hungarian" and len(probs) > HUNGARIAN_MAX_N:
        return flow(probs, quota, floor), "flow"  # same optimum; the n x n matrix would not fit
    return SOLVERS[method](probs, quota, floor), method


def row_groups(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row positions of each equalisation group: test and OOF, unaltered and manipulated.

    Test rows use the ``manip`` flag (from the ``_unalt``/``_manip`` file name);
    OOF rows use ``aug`` (``none`` = unaltered), pooled over all folds.
    """
    test = (df["split"] == "test").to_numpy()
    manip_test = df["manip"].to_numpy() == 1
    unalt_oof = (df["aug"] == "none").to_numpy()
    groups = {
        "test_unalt": test & ~manip_test,
        "test_manip": test & manip_test,
        "oof_unalt": ~test & unalt_oof,
        "oof_manip": ~test & ~unalt_oof,
    }
    return {name: np.flatnonzero(mask) for name, mask in groups.items() if mask.any()}


def label_quotas(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """Per-class counts of the true labels: the quotas of an OOF group."""
    index = {c: i for i, c in enumerate(classes)}
    return np.bincount([index[lbl] for lbl in labels], minlength=len(classes)).astype(np.int64)


def equalise_table(df: pd.DataFrame, classes: list[str], method: str,
                   floor: float = PROB_FLOOR, balanced_test: bool = True) -> tuple[pd.DataFrame, dict]:
    """Replace each row's probabilities by the one-hot vector of its equalised class.

    Test groups get the balanced quotas when ``balanced_test`` (the competition's test set
    has as many images of every class); otherwise nothing says how many test images each
    class has, any quota would move right predictions to fill it (a perfect model on
    30 A + 10 B test crops: 0.75), so the test rows keep their argmax class. OOF groups get
    their true class counts, because the training set need not be balanced, and an OOF score
    under balanced quotas would punish a perfect model on imbalanced classes.

    The table schema has only class columns after the keys, so an equalised
    table stores the decision as exact 0/1 probabilities: argmax is the
    assignment and downstream stages need no special case.
    Returns the new table and per-group info (rows, quotas, solver, seconds).
    """
    probs = df[classes].to_numpy(dtype=np.float64)
    onehot = np.zeros_like(probs)
    info: dict[str, dict] = {}
    for name, rows in row_groups(df).items():
        start = time.perf_counter()
        if name.startswith("oof"):
            q, rule = label_quotas(df["label"].to_numpy()[rows], classes), "labels"
        elif balanced_test:
            q, rule = quotas(probs[rows]), "balanced"
        else:
            onehot[rows, probs[rows].argmax(axis=1)] = 1.0
            info[name] = {"rows": int(len(rows)), "quotas": None, "solver": "argmax",
                          "quota_rule": "none: blend.balanced_test is false", "seconds": 0.0}
            continue
        assign, used = solve(probs[rows], method, q, floor)
        onehot[rows, assign] = 1.0
        info[name] = {"rows": int(len(rows)), "quotas": q.tolist(), "solver": used, "quota_rule": rule,
                      "seconds": round(time.perf_counter() - start, 4)}
    out = df.copy()
    out[classes] = onehot
    return out, info

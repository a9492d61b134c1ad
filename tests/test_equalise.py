import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from camid.bench.equalise import synthetic_probs
from camid.level2 import equalise as eq

EXACT = ("hungarian", "flow")


def random_probs(rng, n, k, concentration=1.0):
    return rng.dirichlet(np.full(k, concentration), size=n)


def brute_force_cost(probs, q):
    """Minimum -log likelihood over every assignment that meets the quotas exactly."""
    n, k = probs.shape
    cost = eq.cost_matrix(probs)
    best = np.inf
    for assign in itertools.product(range(k), repeat=n):
        if (np.bincount(assign, minlength=k) == q).all():
            best = min(best, cost[np.arange(n), assign].sum())
    return best


def test_quotas_floor_and_remainder_to_largest_mass():
    probs = np.array([[0.1, 0.2, 0.7], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    # n=4, k=3: 1 each, the one spare slot to class 2 (mass 2.0)
    assert eq.quotas(probs).tolist() == [1, 1, 2]


def test_quotas_ties_go_to_class_order():
    probs = np.full((5, 3), 1 / 3)
    assert eq.quotas(probs).tolist() == [2, 2, 1]


def test_greedy_takes_most_confident_pairs_first():
    # class 0 has one slot: image 1 (0.95) wins it over image 0 (0.9)
    probs = np.array([[0.9, 0.1], [0.95, 0.05]])
    assert eq.greedy(probs, np.array([1, 1])).tolist() == [1, 0]


def test_exact_beats_greedy_on_known_case():
    # greedy gives image 0 its top pair (class 0, 0.5), leaving image 1 with 0.02;
    # the optimum swaps: 0.45 * 0.48 > 0.5 * 0.02
    probs = np.array([[0.5, 0.45, 0.05], [0.48, 0.02, 0.5]])
    q = np.array([1, 1, 0])
    assert eq.greedy(probs, q).tolist() == [0, 1]
    for m in EXACT:
        assert eq.SOLVERS[m](probs, q).tolist() == [1, 0]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 7), seed=st.integers(0, 2**31), method=st.sampled_from(eq.METHODS),
       conc=st.sampled_from([0.05, 1.0, 20.0]))
def test_quotas_met_exactly(n, k, seed, method, conc):
    probs = random_probs(np.random.default_rng(seed), n, k, conc)
    q = eq.quotas(probs)
    assert q.sum() == n and q.max() - q.min() <= 1
    assign, _ = eq.solve(probs, method, q)
    assert (np.bincount(assign, minlength=k) == q).all()


@settings(max_examples=40, deadline=None)
@given(probs=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(2, 3)),
                    elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0])))
def test_exact_solvers_equal_brute_force(probs):
    probs = probs + 1e-3  # rows may be all zero; ties stay plentiful
    probs = probs / probs.sum(axis=1, keepdims=True)
    q = eq.quotas(probs)
    best = brute_force_cost(probs, q)
    for m in EXACT:
        assert eq.assignment_cost(probs, eq.SOLVERS[m](probs, q)) == pytest.approx(best, abs=1e-9)
    assert eq.assignment_cost(probs, eq.flow(probs, q, warm_sweeps=0)) == pytest.approx(best, abs=1e-9)
    assert eq.assignment_cost(probs, eq.greedy(probs, q)) >= best - 1e-9


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("warm", [0, 8])
def test_flow_equals_hungarian_medium(seed, warm):
    rng = np.random.default_rng(seed)
    n, k = 200 + seed, 10
    probs = random_probs(rng, n, k, [0.1, 1.0, 3.0][seed % 3])
    if seed % 2:  # a biased model: most images prefer class 0, a long shortest-path phase
        probs[:, 0] += 1.0
        probs /= probs.sum(axis=1, keepdims=True)
    q = eq.quotas(probs)
    hung = eq.assignment_cost(probs, eq.hungarian(probs, q))
    fl = eq.flow(probs, q, warm_sweeps=warm)
    assert (np.bincount(fl, minlength=k) == q).all()
    assert eq.assignment_cost(probs, fl) == pytest.approx(hung, abs=1e-8)
    assert eq.assignment_cost(probs, eq.greedy(probs, q)) >= hung - 1e-9


def test_zero_probabilities_are_floored_not_infinite():
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    for m in eq.METHODS:
        assign, _ = eq.solve(probs, m)
        assert sorted(assign.tolist()) == [0, 1]


def test_bad_quotas_refused():
    with pytest.raises(ValueError, match="quotas"):
        eq.flow(np.full((3, 2), 0.5), np.array([1, 1]))
    with pytest.raises(ValueError, match="unknown equaliser"):
        eq.solve(np.full((3, 2), 0.5), "auction")


def test_hungarian_falls_back_to_flow_when_too_large(monkeypatch):
    monkeypatch.setattr(eq, "HUNGARIAN_MAX_N", 10)
    probs = random_probs(np.random.default_rng(0), 30, 3)
    assign, used = eq.solve(probs, "hungarian")
    assert used == "flow"
    assert eq.assignment_cost(probs, assign) == pytest.approx(eq.assignment_cost(probs, eq.hungarian(probs)))


def _table(rng, n_test, n_oof, k):
    classes = [f"c{j}" for j in range(k)]
    rows = []
    for i in range(n_test):
        kind = "manip" if i % 2 else "unalt"
        rows.append(dict(fname=f"img_{i:04x}_{kind}.tif", split="test", fold=-1, manip=int(i % 2),
                         aug="unknown", label=""))
    for i in range(n_oof):
        for aug in ("none", "jpeg70", "gamma0.8"):
            rows.append(dict(fname=f"train/c{i % k}/{i}.jpg", split="oof", fold=i % 3,
                             manip=int(aug != "none"), aug=aug, label=f"c{i % k}"))
    df = pd.DataFrame(rows)
    df[classes] = random_probs(rng, len(df), k)
    return df, classes


def test_equalise_table_per_group_quotas_and_one_hot():
    df, classes = _table(np.random.default_rng(3), n_test=23, n_oof=17, k=4)
    out, info = eq.equalise_table(df, classes, "flow")
    assert set(info) == {"test_unalt", "test_manip", "oof_unalt", "oof_manip"}
    assert info["oof_manip"]["rows"] == 34 and info["test_unalt"]["rows"] == 12
    probs = out[classes].to_numpy()
    assert set(np.unique(probs)) == {0.0, 1.0} and (probs.sum(axis=1) == 1).all()
    for name, rows in eq.row_groups(out).items():
        counts = probs[rows].sum(axis=0)
        assert counts.tolist() == info[name]["quotas"]
        if name.startswith("test"):  # the test set is balanced
            assert counts.max() - counts.min() <= 1
        else:  # OOF groups keep their true class counts
            assert counts.tolist() == [float((out["label"].to_numpy()[rows] == c).sum()) for c in classes]
    pd.testing.assert_frame_equal(out.drop(columns=classes), df.drop(columns=classes))


def test_flow_meets_the_quotas_at_scale():
    """30,000 rows (its speed is a benchmark row: `camid bench --only equalise`)."""
    probs = synthetic_probs(30000, 10, seed=1, strength=1.0)
    assign = eq.flow(probs)
    assert (np.bincount(assign, minlength=10) == eq.quotas(probs)).all()


@pytest.mark.parametrize("method", eq.METHODS)
def test_empty_group(method):
    assign, _ = eq.solve(np.zeros((0, 3)), method)
    assert assign.shape == (0,)

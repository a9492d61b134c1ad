"""PRNU test clustering (``+prnu``): recovers the test devices of a simulated competition,
confirms predictions only on evidence, and never touches anything when the evidence is absent."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from camid.config import PrnuClusterConfig
from camid.data import manipulations
from camid.data import simulate as sim
from camid.data.crops import centre_crop
from camid.errors import StrategyError
from camid.level2 import prnu_cluster as pc
from camid.level2.strategies import parse_strategy
from conftest import strong_sensor_noise

# 4 models, 12 unaltered + 12 manipulated 256-px test crops each from device B (the demo's crop
# size): as in the competition, every class's test crops share one sensor. The sensors' PRNU is
# the uncalibrated simulator's (strong_sensor_noise): these tests are about what clustering does
# with the evidence; at realistic strength 256-px crops carry little (BENCHMARKS.md).
OPTS = sim.SimOptions(n_classes=4, train_per_class=1, test_per_class=12, width=576, height=512,
                      test_crop=256, seed=11)


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    out = tmp_path_factory.mktemp("prnu_sim")
    with strong_sensor_noise():
        sim.simulate(out, OPTS, workers=2)
    test, residuals = pc.test_residuals(out, out / "cache" / "res.npz", workers=2)
    truth = pc.solution_labels(out)
    assert truth is not None
    classes = sim.class_names(OPTS.n_classes)
    y = np.array([classes.index(c) for c in truth.loc[test["fname"]]])
    return out, test, residuals.astype(np.float32), y, classes


def _noisy_probs(y: np.ndarray, k: int, strength: float, seed: int = 0) -> np.ndarray:
    """A weak classifier: the true class gets a logit bonus, plus noise."""
    rng = np.random.default_rng(seed)
    logits = strength * np.eye(k)[y] + rng.standard_normal((len(y), k))
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def test_clusters_recover_the_test_devices_and_name_them_from_a_weak_classifier(competition):
    _, test, residuals, y, classes = competition
    manip = test["manip"].to_numpy()
    probs = _noisy_probs(y, len(classes), strength=1.0)  # ~35% accurate on its own
    res = pc.cluster_test(residuals, manip, probs, PrnuClusterConfig())
    u = manip == 0
    purity = sum(np.bincount(y[u][res.cluster_of_unalt == c]).max() for c in np.unique(res.cluster_of_unalt)) / u.sum()
    assert purity >= 0.9
    assert res.cluster_ok.sum() >= len(classes) - 1
    acc = res.accepted
    assert acc[u].mean() >= 0.8  # most unaltered crops confirmed...
    assert (res.label[acc] == y[acc]).mean() >= 0.97  # ...and almost never wrongly
    after = pc.apply_clusters(probs, res).argmax(axis=1)
    assert (after[u] == y[u]).mean() > (probs.argmax(axis=1)[u] == y[u]).mean() + 0.3


def test_without_shared_sensor_noise_nothing_is_changed(competition):
    """Residuals of independent noise: no cluster is coherent, so no prediction may move."""
    _, test, residuals, y, classes = competition
    manip = test["manip"].to_numpy()
    noise = np.random.default_rng(5).standard_normal(residuals.shape).astype(np.float32)
    probs = _noisy_probs(y, len(classes), strength=1.0)
    res = pc.cluster_test(noise, manip, probs, PrnuClusterConfig())
    assert not res.accepted.any()
    assert np.array_equal(pc.apply_clusters(probs, res), probs)


def test_refine_table_changes_only_confirmed_test_rows_and_reports_purity(competition, tmp_path):
    out, test, _, y, classes = competition
    probs = _noisy_probs(y, len(classes), strength=1.5)
    rows = pd.DataFrame({"fname": test["fname"], "split": "test", "fold": -1, "manip": test["manip"],
                         "aug": "unknown", "label": ""})
    oof = pd.DataFrame({"fname": ["train/a.jpg"], "split": "oof", "fold": 0, "manip": 0, "aug": "none",
                        "label": classes[0]})
    table = pd.concat([rows, oof], ignore_index=True)
    table[classes] = np.vstack([probs, np.full((1, len(classes)), 1 / len(classes))])
    refined, info, report = pc.refine_table(table, classes, out, out / "cache" / "res.npz", PrnuClusterConfig(), 1e-7)
    assert info["purity"] >= 0.9 and info["accepted_precision"] >= 0.97
    assert np.array_equal(refined.iloc[-1][classes].to_numpy(float), table.iloc[-1][classes].to_numpy(float))
    unchanged = ~report["accepted"].to_numpy()
    assert np.allclose(refined[classes].to_numpy(float)[:-1][unchanged], probs[unchanged])
    assert len(report) == len(test) and set(report.columns) >= {"fname", "cluster", "best_z", "accepted", "class"}


def test_a_fingerprint_warped_for_a_resize_lands_where_the_resize_puts_it():
    """warp_fingerprint must follow the competition's resize-then-centre-crop geometry."""
    rng = np.random.default_rng(0)
    f = rng.standard_normal((64, 64)).astype(np.float32)
    for scale in (0.5, 1.5, 2.0):
        pattern, mask = pc.warp_fingerprint(f, scale)
        canvas = np.zeros((256, 256, 3), np.uint8)  # the same geometry, on a uint8 photo of the pattern
        img = np.clip(f * 20 + 128, 0, 255).astype(np.uint8)
        canvas[96:160, 96:160] = img[..., None]
        crop = centre_crop(manipulations.resize(canvas, scale), 64)[..., 0].astype(np.float32) - 128
        assert np.corrcoef(crop[mask], pattern[mask])[0, 1] > 0.95


def test_name_clusters_is_a_one_to_one_vote():
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.8, 0.2]])
    members = np.array([0, 0, 1, 1])  # both clusters prefer class 0; cluster 1 more strongly
    assert pc.name_clusters(members, probs, 2).tolist() == [1, 0]


@pytest.mark.parametrize("name, prnu, eq", [("gmean+prnu", True, None), ("gmean+prnu+hungarian", True, "hungarian"),
                                            ("xgb+prnu+greedy", True, "greedy"), ("gmean+flow", False, "flow")])
def test_strategy_names_with_prnu(name, prnu, eq):
    st = parse_strategy(name)
    assert (st.prnu, st.equaliser) == (prnu, eq)


def test_prnu_after_the_equaliser_is_refused_with_the_right_order():
    with pytest.raises(StrategyError, match="prnu comes before the equaliser"):
        parse_strategy("gmean+hungarian+prnu")

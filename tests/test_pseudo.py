"""Balanced pseudo-labels and the second training round."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from camid import cli
from camid.config import load_config
from camid.data.pseudo import read_pseudo
from camid.errors import DataError, StrategyError
from camid.infer.table import read_table
from camid.level2 import pseudo
from camid.workspace import Workspace
from tiny_config import tiny_config
from trained_tiny import CLASSES, photo


def _test_rows(n_per_class: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for half in (0, 1):
        for c, cls in enumerate(CLASSES):
            for i in range(n_per_class):
                rows.append({"fname": f"img_{half}{c}{i:02d}_{'manip' if half else 'unalt'}.tif", "manip": half,
                             "label": cls if i % 4 else CLASSES[(c + 1) % 3], "confidence": float(rng.random())})
    return pd.DataFrame(rows)


def test_selection_is_balanced_per_class_and_half_and_takes_the_most_confident():
    test = _test_rows(8)
    chosen = pseudo.select(test, CLASSES, per_class=3, fraction=0.8, min_confidence=0.0)
    counts = chosen.groupby(["half", "label"]).size()
    assert (counts == 3).all() and len(counts) == 6
    for (half, cls), grp in chosen.groupby(["half", "label"]):
        pool = test[(test["manip"] == (half == "manip")) & (test["label"] == cls)]
        assert set(grp["fname"]) == set(pool.nlargest(3, "confidence")["fname"])


def test_selection_by_fraction_and_floor():
    test = _test_rows(10)  # 30 crops per half: a class's share is 10
    chosen = pseudo.select(test, CLASSES, per_class=None, fraction=0.5, min_confidence=0.0)
    assert (chosen.groupby(["half", "label"]).size() == 5).all()
    floor = pseudo.select(test, CLASSES, per_class=None, fraction=1.0, min_confidence=0.9)
    assert (floor["confidence"] >= 0.9).all()


def test_confidences_come_from_the_strategy_before_its_equaliser():
    assert pseudo.confidence_strategy("gmean+prnu+hungarian") == "gmean+prnu"
    assert pseudo.confidence_strategy("xgb+greedy") == "xgb"
    assert pseudo.confidence_strategy("gmean") == "gmean"


@pytest.fixture(scope="module")
def round_two(tmp_path_factory):
    """A tiny competition, round 1 trained and predicted, a blend, pseudo-labels and round 2."""
    root = tmp_path_factory.mktemp("rounds")
    data = root / "data"
    for c, cls in enumerate(CLASSES):
        (data / "train" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(photo(64, 80, c, 10 * c + i)).save(data / "train" / cls / f"{i}.jpg", quality=95)
    (data / "test").mkdir()
    names = []
    for c in range(3):
        for i in range(4):
            for half in ("unalt", "manip"):
                name = f"img_{c}{i}{half[0]}_{half}.tif"
                Image.fromarray(photo(48, 48, c, 100 + 10 * c + i)).save(data / "test" / name)
                names.append((name, CLASSES[c]))
    pd.DataFrame({"fname": [n for n, _ in names], "camera": CLASSES[0]}).to_csv(data / "sample_submission.csv",
                                                                               index=False)
    cfg = tiny_config(root / "tiny.yaml", data, predict={"tta": "none", "top_n": 1, "crop": 48, "batch_size": 40},
                      blend={"strategies": ["gmean", "gmean+hungarian"], "balanced_test": True},
                      pseudo={"strategy": "gmean+hungarian", "per_class": 2, "min_expected_precision": 0.0})
    common = ["--config", str(cfg), "--workdir", str(root)]
    for argv in (["folds"], ["train-all"], ["predict"], ["blend"], ["submission"], ["pseudo"],
                 ["train-all", "--round", "2"], ["predict", "--round", "2"], ["blend", "--round", "2"],
                 ["submission", "--round", "2"]):
        assert cli.main([*argv, *common]) == 0, argv
    return root, data, cfg


def test_round_two_trains_on_photos_plus_pseudo_labels_and_keeps_its_outputs_apart(round_two):
    root, data, cfg = round_two
    ws1, ws2 = Workspace(root, data), Workspace(root, data, 2)
    labels = read_pseudo(ws1.pseudo_labels(), CLASSES)
    assert len(labels) == 2 * 3 * 2  # 2 per class and half
    assert labels["fname"].str.endswith(".tif").all()  # test crops only: never a training photo
    assert (labels.groupby(["half", "label"]).size() == 2).all()
    for k in (0, 1):
        assert (root / "models" / "camid_tiny-r2" / f"fold{k}" / "done.json").is_file()
    assert (root / "models" / "camid_tiny" / "fold0" / "done.json").is_file()  # round 1 untouched
    assert ws2.table_runs("none") == ["camid_tiny-r2"] and ws1.table_runs("none") == ["camid_tiny"]
    assert ws2.blend_table("gmean").is_file() and ws1.blend_table("gmean").is_file()
    assert ws2.scores_csv.is_file() and ws2.scores_csv != ws1.scores_csv


def test_round_two_oof_rows_come_from_fold_models_that_never_saw_those_photos(round_two):
    root, data, _ = round_two
    table = read_table(Workspace(root, data, 2).table("camid_tiny-r2", "none"))
    folds = pd.read_csv(root / "models" / "folds.csv")
    oof = table[table["split"] == "oof"].merge(folds[["fname", "fold"]], on="fname", suffixes=("", "_truth"))
    assert len(oof) and (oof["fold"] == oof["fold_truth"]).all()
    assert set(table.loc[table["split"] == "oof", "fname"]) == set(folds["fname"])  # no pseudo crop is an OOF row
    log = (root / "models" / "camid_tiny-r2" / "fold0" / "train.out")
    assert not log.exists() or "pseudo-labelled" in log.read_text()


def test_pseudo_refuses_without_the_confidence_table(round_two, tmp_path):
    root, data, cfg = round_two
    c = load_config(cfg)
    c.pseudo.strategy = "gmean+prnu+hungarian"
    with pytest.raises(StrategyError, match="gmean"):
        pseudo.make_pseudo(c, Workspace(root, data))


def test_a_pseudo_file_with_a_missing_crop_or_unknown_class_is_refused(tmp_path):
    good = pd.DataFrame({"fname": ["a.tif"], "path": [str(tmp_path / "a.tif")], "label": ["cam-a"], "manip": [0],
                         "confidence": [0.9], "half": ["unalt"], "group": [0]})
    good.drop(columns="group").to_csv(tmp_path / "p.csv", index=False)  # written before cross-fitting
    with pytest.raises(DataError, match="run `camid pseudo` again"):
        read_pseudo(tmp_path / "p.csv", CLASSES)
    good.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match="do not exist"):
        read_pseudo(tmp_path / "p.csv", CLASSES)
    (tmp_path / "a.tif").write_bytes(b"x")
    good.assign(label="cam-z").to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match="not in the class list"):
        read_pseudo(tmp_path / "p.csv", CLASSES)


def test_pseudo_strategy_final_takes_the_final_submissions_strategy(round_two, tmp_path):
    from camid.level2.submission import pick_final

    root, data, cfg = round_two
    c = load_config(cfg)
    c.pseudo.strategy, c.blend.final = "final", "+hungarian"
    ws = Workspace(root, data)
    assert pick_final(c, ws)[0] == "gmean+hungarian"  # the only *+hungarian strategy blended
    before = ws.pseudo_labels().read_bytes()
    try:
        _, info = pseudo.make_pseudo(c, ws)
        assert info["strategy"] == "gmean+hungarian" and info["confidence_from"] == "gmean"
        assert ws.pseudo_labels().read_bytes() == before  # same labels as pseudo.strategy gmean+hungarian
    finally:
        ws.pseudo_labels().write_bytes(before)


def test_isotonic_fit_and_expected_precision_of_a_calibrated_confidence():
    xs, fit = pseudo.isotonic(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 0.0, 0.0, 1.0]))
    assert xs.tolist() == [0.1, 0.2, 0.3, 0.4] and np.allclose(fit, [1 / 3, 1 / 3, 1 / 3, 1.0])
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.34, 1.0, 20000)  # a calibrated model: right with probability = confidence
    right = rng.random(20000) < conf
    label = np.where(right, CLASSES[0], CLASSES[1])
    oof = pd.DataFrame({CLASSES[0]: conf, CLASSES[1]: (1 - conf) / 2, CLASSES[2]: (1 - conf) / 2, "label": label,
                        "manip": np.arange(20000) % 2})
    chosen = pd.DataFrame({"confidence": [0.9, 0.9, 0.5, 0.5], "half": ["unalt", "unalt", "manip", "manip"]})
    out = pseudo.expected_precision(oof, CLASSES, chosen)
    assert abs(out["unalt"] - 0.9) < 0.04 and abs(out["manip"] - 0.5) < 0.04 and abs(out["overall"] - 0.7) < 0.03


@pytest.mark.parametrize("seed", range(20))
def test_the_surest_crops_are_the_largest_set_that_reaches_the_target(seed):
    """Brute force over every subset of up to 10 crops: no larger set has a mean expected
    precision at the target, and the one kept does."""
    rng = np.random.default_rng(seed)
    each = rng.choice([0.3, 0.5, 0.7, 0.8, 0.9, 1.0], size=int(rng.integers(1, 11)))
    target = float(rng.choice([0.6, 0.8, 0.95]))
    keep = pseudo.surest_reaching(each, target)
    best = max((r for r in range(len(each) + 1) for sub in itertools.combinations(each, r)
                if r and np.mean(sub) >= target - 1e-12), default=0)
    assert len(keep) == best and (not len(keep) or each[keep].mean() >= target - 1e-12)
    assert (np.sort(keep) == keep).all() and len(set(keep.tolist())) == len(keep)


def test_cross_fit_groups_are_balanced_per_class_and_half_and_deterministic():
    chosen = pseudo.select(_test_rows(8), CLASSES, per_class=4, fraction=0.8, min_confidence=0.0)
    groups = pseudo.cross_fit_groups(chosen, [0, 1])
    assert (groups == pseudo.cross_fit_groups(chosen.iloc[::-1], [0, 1])[::-1]).all()
    per = chosen.assign(group=groups).groupby(["half", "label", "group"]).size()
    assert (per == 2).all() and len(per) == 12


def _round_two_config(root, data, cfg):
    ws1 = Workspace(root, data)
    return load_config(cfg).for_round(2, str(ws1.pseudo_labels())), Workspace(root, data, 2)


def test_a_round_two_fold_never_trains_on_the_pseudo_crops_it_alone_predicts(round_two):
    import torch

    from camid.infer.ensemble import Ensemble
    from camid.infer.predict import load_test_images, predict_test
    from camid.train.rundir import RunDir
    from camid.train.trainer import Trainer

    root, data, cfg_path = round_two
    cfg, ws2 = _round_two_config(root, data, cfg_path)
    labels = read_pseudo(Workspace(root, data).pseudo_labels(), CLASSES)
    assert sorted(labels["group"].unique()) == [0, 1] and (labels.groupby("group").size() == 6).all()
    table = read_table(ws2.table("camid_tiny-r2", "none"))
    test = table[table["split"] == "test"].set_index("fname")
    for k in (0, 1):
        trainer = Trainer(cfg, ws2, cfg.models[0], k, torch.device("cpu"))
        trainer._datasets()
        trained = set(trainer.train_set.paths)
        assert not trained & set(labels.loc[labels["group"] == k, "path"])  # never its own group
        assert set(labels.loc[labels["group"] != k, "path"]) <= trained  # every other group
        files = RunDir(ws2.run_dir("camid_tiny-r2", k)).checkpoint_files(1, "top_n")
        ens = Ensemble(files, torch.device("cpu"), "none", "gmean", False)
        own = labels[labels["group"] == k]
        images = load_test_images(own.assign(manip=own["manip"].astype(int)))
        probs = predict_test(ens, images, 40)
        assert np.allclose(test.loc[own["fname"], CLASSES].to_numpy(), probs, atol=1e-5)


def test_pseudo_keeps_only_the_surest_crops_when_the_selection_is_below_the_target(round_two, capsys, monkeypatch):
    root, data, cfg_path = round_two
    c = load_config(cfg_path)
    c.pseudo.min_expected_precision = 0.9
    ws = Workspace(root, data)
    before, sidecar = ws.pseudo_labels().read_bytes(), ws.pseudo_labels().with_suffix(".json").read_bytes()
    # three crops as sure as a sensor-confirmed one, the other nine at 0.5: the 12 expect 0.625
    monkeypatch.setattr(pseudo, "crop_precision", lambda oof, classes, chosen: np.r_[np.full(3, 1.0),
                                                                                     np.full(len(chosen) - 3, 0.5)])
    try:
        chosen, info = pseudo.make_pseudo(c, ws)
        assert info["selected_before_gate"] == 12 and info["expected_precision"]["overall"] == 0.625
        assert info["crops"] == info["kept_after_gate"] == 3 and info["expected_precision_kept"]["overall"] == 1.0
        assert len(read_pseudo(ws.pseudo_labels(), CLASSES)) == 3
        assert "kept the 3 surest of the 12 crops" in capsys.readouterr().out
    finally:
        ws.pseudo_labels().write_bytes(before)
        ws.pseudo_labels().with_suffix(".json").write_bytes(sidecar)


def test_pseudo_selects_nothing_below_the_expected_precision_and_round_two_still_trains(round_two, capsys,
                                                                                        monkeypatch):
    import torch

    from camid.train.trainer import Trainer

    root, data, cfg_path = round_two
    c = load_config(cfg_path)
    c.pseudo.min_expected_precision = 0.9
    monkeypatch.setattr(pseudo, "crop_precision", lambda oof, classes, chosen: np.full(len(chosen), 0.89))
    ws = Workspace(root, data)
    before, sidecar = ws.pseudo_labels().read_bytes(), ws.pseudo_labels().with_suffix(".json").read_bytes()
    try:
        chosen, info = pseudo.make_pseudo(c, ws)
        assert chosen.empty and info["crops"] == 0 and info["selected_before_gate"] == 12
        assert set(info["expected_precision"]) == {"unalt", "manip", "overall"}
        assert "round 2 would not help" in capsys.readouterr().out
        assert read_pseudo(ws.pseudo_labels(), CLASSES).empty
        cfg, ws2 = _round_two_config(root, data, cfg_path)
        trainer = Trainer(cfg, ws2, cfg.models[0], 0, torch.device("cpu"))
        trainer._datasets()  # the photos alone
        assert all("/test/" not in p for p in trainer.train_set.paths)
    finally:
        ws.pseudo_labels().write_bytes(before)
        ws.pseudo_labels().with_suffix(".json").write_bytes(sidecar)


def test_confirmed_crops_are_read_from_the_sensor_steps_reports(tmp_path):
    from camid.level2.prnu_match import DECIDED_BASE, DECIDED_MATCH
    from camid.level2.strategies import confirmed_by_sensor

    ws = Workspace(tmp_path, tmp_path / "data")
    ws.blend_dir.mkdir(parents=True)
    pd.DataFrame({"fname": ["a", "b", "c"], "decided_by": [DECIDED_MATCH, DECIDED_BASE, DECIDED_BASE]}).to_csv(
        ws.step_report("lgb+match+prnu", "match"), index=False)
    with pytest.raises(StrategyError, match="prnu"):  # the +prnu report is missing
        confirmed_by_sensor(ws, "lgb+match+prnu")
    pd.DataFrame({"fname": ["a", "b", "c"], "accepted": [False, True, False]}).to_csv(
        ws.step_report("lgb+match+prnu", "prnu"), index=False)
    assert confirmed_by_sensor(ws, "lgb+match+prnu") == {"match": {"a"}, "prnu": {"b"}}
    with pytest.raises(StrategyError, match="no sensor step"):
        confirmed_by_sensor(ws, "lgb+hungarian")


def test_confirmed_only_takes_the_sensor_confirmed_crops_and_none_when_there_are_none(round_two, capsys,
                                                                                       monkeypatch):
    """Real photos (issue #21): the calibrated selection took half the unseen Nikons' labels
    wrong; with pseudo.confirmed_only round 2 learns only what a sensor step decided."""
    root, data, cfg_path = round_two
    c = load_config(cfg_path)
    c.pseudo.confirmed_only = True
    ws = Workspace(root, data)
    before, sidecar = ws.pseudo_labels().read_bytes(), ws.pseudo_labels().with_suffix(".json").read_bytes()
    with pytest.raises(StrategyError, match="no sensor step"):  # gmean+hungarian confirms nothing
        pseudo.make_pseudo(c, ws)
    sure = {"img_00u_unalt.tif", "img_01m_manip.tif", "img_10u_unalt.tif", "img_21u_unalt.tif"}
    monkeypatch.setattr(pseudo, "confirmed_by_sensor", lambda ws, strategy: {"prnu": set(sure)})
    try:
        chosen, info = pseudo.make_pseudo(c, ws)
        assert set(chosen["fname"]) == sure  # per_class 2: every confirmed crop fits
        assert info["confirmed_by"] == {"prnu": 4}
        assert set(read_pseudo(ws.pseudo_labels(), CLASSES)["fname"]) == set(chosen["fname"])
        assert "4 of 24 test crops were confirmed" in capsys.readouterr().out
        monkeypatch.setattr(pseudo, "confirmed_by_sensor", lambda ws, strategy: {"prnu": set()})
        chosen, info = pseudo.make_pseudo(c, ws)
        assert chosen.empty and info["crops"] == 0
        assert "no test crop was confirmed" in capsys.readouterr().out
        assert read_pseudo(ws.pseudo_labels(), CLASSES).empty
        # final.csv without a sensor step (+prnu not applied): nothing confirmed, round 2 still runs
        c.pseudo.strategy, c.blend.final = "final", "+prnu+hungarian"
        chosen, info = pseudo.make_pseudo(c, ws)
        assert chosen.empty and info["strategy"] == "gmean+hungarian"
        assert "took no sensor step" in capsys.readouterr().out
    finally:
        ws.pseudo_labels().write_bytes(before)
        ws.pseudo_labels().with_suffix(".json").write_bytes(sidecar)


def test_candidates_keep_the_share_of_the_whole_half():
    """Only 2 crops per class may be candidates, but the quota is still 0.8 of the class's share
    of the whole half (4 of 5), not of the candidates."""
    test = _test_rows(5)
    sure = set(test.groupby(["manip", "label"]).head(2)["fname"])
    chosen = pseudo.select(test, CLASSES, per_class=None, fraction=0.8, min_confidence=0.0, candidates=sure)
    assert set(chosen["fname"]) == sure
    assert len(pseudo.select(test, CLASSES, None, 0.8, 0.0)) == 4 * len(CLASSES) * 2

"""Blend + submission end to end on two synthetic models in a temporary work dir."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from camid import cli
from camid.infer.table import read_table, write_table
from camid.level2.metrics import SubmissionError, score_submission
from camid.level2.submission import make_submission

CLASSES = ["cam-a", "cam-b", "cam-c", "cam-d"]
STRATEGIES = ["gmean", "mean+greedy", "gmean+hungarian", "rms+flow", "pmean0.5"]
AUGS = ["none", "jpeg70", "gamma1.2"]


def noisy_probs(rng, labels, strength):
    logits = rng.normal(size=(len(labels), len(CLASSES)))
    logits[np.arange(len(labels)), [CLASSES.index(c) for c in labels]] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def truth():
    rng = np.random.default_rng(7)
    train = [(f"train/{c}/{c}_{i}.jpg", c) for c in CLASSES for i in range(6)]
    test = [(f"img_{i:06x}_{'manip' if i % 2 else 'unalt'}.tif", CLASSES[(i // 2) % 4]) for i in range(16)]
    manips = {f: ("none" if f.endswith("_unalt.tif") else ["jpeg70", "resize0.5"][i % 2])
              for i, (f, _) in enumerate(test)}
    return train, test, manips, rng


def model_table(seed, train, test, strength=1.5):
    rng = np.random.default_rng(seed)
    rows = [dict(fname=f, split="oof", fold=i % 3, manip=int(a != "none"), aug=a, label=c)
            for i, (f, c) in enumerate(train) for a in AUGS]
    rows += [dict(fname=f, split="test", fold=-1, manip=int(f.endswith("_manip.tif")), aug="unknown", label="")
             for f, _ in test]
    df = pd.DataFrame(rows)
    labels = [r["label"] or dict(test)[r["fname"]] for r in rows]
    df[CLASSES] = noisy_probs(rng, labels, strength)
    return df


@pytest.fixture
def workdir(tmp_path: Path):
    train, test, manips, rng = truth()
    data = tmp_path / "DATA"
    data.mkdir()
    order = rng.permutation(len(test))  # sample_submission is NOT in sorted order
    pd.DataFrame({"fname": [test[i][0] for i in order], "camera": "cam-a"}).to_csv(
        data / "sample_submission.csv", index=False)
    pd.DataFrame({"fname": [f for f, _ in test], "camera": [c for _, c in test],
                  "manipulation": [manips[f] for f, _ in test]}).to_csv(data / "solution.csv", index=False)
    wd = tmp_path / "work"
    for seed, run in [(1, "netA"), (2, "netB")]:
        write_table(model_table(seed, train, test), wd / "oof" / f"{run}.tta10.parquet", CLASSES, meta={})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"name: t\ndata_dir: {data}\npredict:\n  tta: tta10\n"
                   f"blend:\n  balanced_test: true\n  strategies: {STRATEGIES}\n")
    return wd, data, cfg


def run(*argv):
    return cli.main(list(argv))


def test_blend_then_submission(workdir, capsys):
    wd, data, cfg = workdir
    assert run("blend", "--config", str(cfg), "--workdir", str(wd)) == 0
    for s in STRATEGIES:
        t = read_table(wd / "oof" / "blend" / f"{s}.parquet", CLASSES)
        assert len(t) == 24 * 3 + 16
        meta = json.loads((wd / "oof" / "blend" / f"{s}.json").read_text())
        assert [i["model"] for i in meta["inputs"]] == ["netA", "netB"] and "seconds" in meta
        assert meta["strategy"] == s and 0 <= meta["oof_score"] <= 1
    capsys.readouterr()

    assert run("submission", "--config", str(cfg), "--workdir", str(wd)) == 0
    printed = capsys.readouterr().out
    sample = pd.read_csv(data / "sample_submission.csv")
    solution = pd.read_csv(data / "solution.csv")
    scores = pd.read_csv(wd / "submissions" / "scores.csv")
    assert sorted(scores["strategy"]) == sorted(STRATEGIES)
    assert scores["cv_score"].is_monotonic_decreasing
    for s in STRATEGIES:
        sub = pd.read_csv(wd / "submissions" / f"{s}.csv")
        assert list(sub.columns) == ["fname", "camera"]
        assert sub["fname"].tolist() == sample["fname"].tolist()
        row = scores.set_index("strategy").loc[s]
        assert row["test_score"] == pytest.approx(score_submission(sub, solution, CLASSES).score)
        assert s in printed
    # equalised: every class exactly its quota (2 of 8) in each test half
    eq = pd.read_csv(wd / "submissions" / "gmean+hungarian.csv")
    for half in ("unalt", "manip"):
        counts = eq.loc[eq["fname"].str.endswith(f"_{half}.tif"), "camera"].value_counts()
        assert counts.reindex(CLASSES).tolist() == [2, 2, 2, 2]


def test_submission_score_only_writes_nothing(workdir, capsys):
    wd, _, cfg = workdir
    assert run("blend", "--config", str(cfg), "--workdir", str(wd), "--strategies", "gmean") == 0
    assert run("submission", "--config", str(cfg), "--workdir", str(wd), "--score-only") == 0
    assert "gmean" in capsys.readouterr().out
    assert not (wd / "submissions").exists()


def test_missing_test_prediction_is_refused(workdir, capsys):
    wd, _, cfg = workdir
    assert run("blend", "--config", str(cfg), "--workdir", str(wd), "--strategies", "gmean,mean") == 0
    path = wd / "oof" / "blend" / "mean.parquet"
    t = read_table(path)
    write_table(t[t["fname"] != "img_000003_manip.tif"], path, CLASSES)
    capsys.readouterr()
    assert run("submission", "--config", str(cfg), "--workdir", str(wd)) == 2
    err = capsys.readouterr().err
    assert "img_000003_manip.tif" in err and "mean.parquet" in err
    assert not (wd / "submissions").exists()  # not even the valid gmean submission


def test_blend_refuses_mismatched_tables(workdir, capsys):
    wd, _, cfg = workdir
    t = read_table(wd / "oof" / "netB.tta10.parquet")
    write_table(t.iloc[1:], wd / "oof" / "netB.tta10.parquet", CLASSES)
    assert run("blend", "--config", str(cfg), "--workdir", str(wd)) == 2
    assert "netB" in capsys.readouterr().err
    assert not (wd / "oof" / "blend").exists()


def test_blend_refuses_unknown_strategy_and_missing_tables(workdir, tmp_path, capsys):
    wd, _, cfg = workdir
    assert run("blend", "--config", str(cfg), "--workdir", str(wd), "--strategies", "median") == 2
    assert "unknown strategy" in capsys.readouterr().err
    assert run("blend", "--config", str(cfg), "--workdir", str(tmp_path / "empty")) == 2
    assert "camid predict" in capsys.readouterr().err


def test_make_submission_follows_given_order():
    train, test, _, _ = truth()
    table = model_table(3, train, test)
    fnames = [f for f, _ in test][::-1]
    sub = make_submission(table, CLASSES, fnames)
    assert sub["fname"].tolist() == fnames
    with pytest.raises(SubmissionError, match="no test prediction"):
        make_submission(table, CLASSES, fnames + ["img_ffffff_unalt.tif"])


def test_blend_stacker_strategy_end_to_end(workdir):
    wd, _, cfg = workdir
    cfg.write_text(cfg.read_text() + "  stack: {seeds: 1, folds: 2, rounds: 10, threads: 1}\n")
    assert run("blend", "--config", str(cfg), "--workdir", str(wd), "--strategies", "lgb,lgb+flow") == 0
    t = read_table(wd / "oof" / "blend" / "lgb.parquet", CLASSES)
    meta = json.loads((wd / "oof" / "blend" / "lgb+flow.json").read_text())
    assert meta["models"] == 2 and meta["equalise"]["test_unalt"]["quotas"] == [2, 2, 2, 2]
    assert len(t) == 24 * 3 + 16
    manifest = json.loads((wd / "models" / "level2" / "lgb" / "manifest.json").read_text())
    assert manifest["inputs"] == ["netA", "netB"] and len(manifest["files"]) == 2
    assert run("submission", "--config", str(cfg), "--workdir", str(wd)) == 0
    assert (wd / "submissions" / "lgb+flow.csv").is_file()


def test_final_submission_is_the_best_base_with_the_steps_the_run_supports(workdir, tmp_path, capsys):
    """final.csv: the base of best local CV; the equaliser only when the test is declared balanced;
    the test scores are never read for it."""
    wd, data, cfg = workdir
    assert run("blend", "--config", str(cfg), "--workdir", str(wd)) == 0
    cv = {s: json.loads((wd / "oof" / "blend" / f"{s}.json").read_text())["oof_score"] for s in STRATEGIES}
    plain = {s.split("+")[0]: cv[s] for s in STRATEGIES}  # every base has one form here
    best = max(plain, key=lambda b: plain[b])
    form = next(s for s in STRATEGIES if s.split("+")[0] == best)
    for balanced, final in [("true", "+prnu+hungarian"), ("false", "+prnu+hungarian"), ("true", "")]:
        c = tmp_path / f"cfg-{balanced}{final}.yaml"
        c.write_text(cfg.read_text().replace("balanced_test: true", f"balanced_test: {balanced}\n  final: '{final}'"))
        assert run("submission", "--config", str(c), "--workdir", str(wd)) == 0
        meta = json.loads((wd / "submissions" / "final.json").read_text())
        assert meta["base"] == best and meta["cv_score"] == pytest.approx(plain[best])
        assert meta["strategy"] == form and meta["candidates"] == STRATEGIES
        assert meta["steps"].get("prnu", {}).get("taken") in (None, False)  # no +prnu strategy was blended
        if final:
            assert meta["steps"]["equalise"]["taken"] == (balanced == "true")
        assert (wd / "submissions" / "final.csv").read_bytes() == (wd / "submissions" / f"{form}.csv").read_bytes()
    # the choice ignores the solution: with another solution file the final strategy stays
    sol = pd.read_csv(data / "solution.csv")
    sol["camera"] = sol["camera"].sample(frac=1, random_state=3).to_numpy()
    sol.to_csv(tmp_path / "other_solution.csv", index=False)
    assert run("submission", "--config", str(c), "--workdir", str(wd),
               "--solution", str(tmp_path / "other_solution.csv")) == 0
    assert json.loads((wd / "submissions" / "final.json").read_text())["strategy"] == form
    capsys.readouterr()


def _fake_blend(ws, cfg_text: str, tmp_path, metas: dict[str, dict]):
    """Sidecars (and empty tables) as blend writes them, for pick_final alone."""
    from camid.config import load_config

    ws.blend_dir.mkdir(parents=True, exist_ok=True)
    for name, meta in metas.items():
        ws.blend_table(name).write_bytes(b"")
        ws.blend_table(name).with_suffix(".json").write_text(json.dumps(meta))
    c = tmp_path / "pick.yaml"
    c.write_text(cfg_text + f"blend:\n  strategies: {list(metas)}\n")
    return load_config(c)


@pytest.mark.parametrize("applied, balanced, expected", [
    (True, True, "xgb+prnu+hungarian"), (False, True, "xgb+hungarian"), (True, False, "xgb+prnu"),
    (False, False, "xgb")])
def test_pick_final_takes_prnu_only_when_applied_and_the_equaliser_only_when_balanced(
        tmp_path, applied, balanced, expected):
    """Audit #21, finding 5: the best local CV among *+prnu+hungarian picked gmean+prnu+hungarian
    here (its CV, that of an equaliser on OOF rows with label quotas, is the highest), whatever
    the clustering did and whether the test was balanced."""
    from camid.level2.submission import pick_final
    from camid.workspace import Workspace

    ws = Workspace(tmp_path / "work", tmp_path / "DATA")
    prnu = {"applied": applied, "usable_clusters": 4 if applied else 0, "accepted": 40,
            "skipped": "" if applied else "only 8% of the unaltered test crops fall in a coherent sensor cluster"}
    metas = {"gmean": {"oof_score": 0.80}, "gmean+hungarian": {"oof_score": 0.95},
             "gmean+prnu": {"oof_score": 0.80, "prnu": prnu}, "gmean+prnu+hungarian": {"oof_score": 0.95, "prnu": prnu},
             "xgb": {"oof_score": 0.85}, "xgb+hungarian": {"oof_score": 0.90},
             "xgb+prnu": {"oof_score": 0.85, "prnu": prnu}, "xgb+prnu+hungarian": {"oof_score": 0.90, "prnu": prnu}}
    cfg = _fake_blend(ws, "name: t\n", tmp_path, metas)
    cfg.blend.balanced_test = balanced
    choice = pick_final(cfg, ws)
    assert choice[0] == expected and choice.cv_score == 0.85
    assert choice.reasons["steps"]["prnu"]["taken"] == applied
    assert choice.reasons["steps"]["equalise"]["taken"] == balanced


def test_pick_final_without_blend_tables_is_a_clear_error(workdir):
    from camid.config import load_config
    from camid.errors import StrategyError
    from camid.level2.submission import pick_final
    from camid.workspace import Workspace

    wd, _, cfg = workdir
    with pytest.raises(StrategyError, match="run `camid blend` first"):
        pick_final(load_config(cfg), Workspace(wd, wd / "DATA"))

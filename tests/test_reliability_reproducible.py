"""Issue 8, point 5: the same config and seed on the same CPU give byte-identical outputs.

A tiny pipeline (simulate -> folds -> train both folds -> predict with TTA10 -> blend with
averages, equalisers and the three stackers -> submission) runs twice in two work
folders, each with relative paths. Every file must have the same sha256, except the
few that legitimately hold timings or file times; those are listed in TIMED and
compared with the timing fields removed.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from camid.util.io import load_torch
from reliability_tiny import SIM_ARGS, camid, write_config

STAGES = """
blend:
  strategies: [gmean, gmean+hungarian, gmean+greedy, rms, mlp, lgb, xgb]
  stack: {seeds: 1, folds: 2, rounds: 4, max_depth: 2, mlp_hidden: 8, mlp_epochs: 2, threads: 1}
"""
# Files that record how long things took (or file mtimes), compared without those fields.
TIMED = {
    "log.csv": "per-epoch seconds and images_per_s",
    "last.pt": "state.history: the log rows above",
    "oof/*.json": "seconds; checkpoint fingerprints hold file mtimes",
    "oof/blend/*.json": "read/average/equalise/stacker seconds",
    "models/level2/*/manifest.json": "train_seconds",
}
_TIMING_KEY = re.compile(r"(^|_)seconds$|^mtime$|^images_per_s$")


def _drop_timings(obj):
    if isinstance(obj, dict):
        return {k: _drop_timings(v) for k, v in obj.items() if not _TIMING_KEY.search(k)}
    if isinstance(obj, list):
        return [_drop_timings(v) for v in obj]
    return obj


def _is_timed(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return (name in ("log.csv", "last.pt") or (rel.startswith("oof/") and rel.endswith(".json"))
            or rel.endswith("/manifest.json"))


def _pipeline(root: Path, monkeypatch) -> dict[str, str]:
    root.mkdir()
    monkeypatch.chdir(root)  # relative paths: the two runs must not differ by their folder name
    assert camid("simulate", "data", *SIM_ARGS) == 0
    cfg = write_config(root / "c.yaml", "data", input_size=24)
    cfg.write_text(cfg.read_text().replace("tta: none", "tta: tta10").split("blend:")[0] + STAGES)
    common = ["--config", "c.yaml", "--workdir", "."]
    assert camid("folds", *common) == 0
    for fold in (0, 1):
        assert camid("train", *common, "--fold", fold) == 0
    for stage in ("predict", "blend", "submission"):
        assert camid(stage, *common) == 0
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        base = tmp_path_factory.mktemp("repro")
        one = _pipeline(base / "one", mp)
        two = _pipeline(base / "two", mp)
    finally:
        mp.undo()
    return base, one, two


def test_both_runs_wrote_the_same_files(twice):
    _, one, two = twice
    assert sorted(one) == sorted(two)
    for must in ("models/folds.csv", "oof/camid_tiny.tta10.parquet", "oof/blend/gmean+hungarian.parquet",
                 "oof/blend/xgb.parquet", "submissions/gmean.csv", "submissions/lgb.csv", "submissions/scores.csv",
                 "data/solution.csv", "models/level2/mlp/seed0_fold0.npz"):
        assert must in one, must


def test_folds_tables_and_submissions_are_byte_identical(twice):
    _, one, two = twice
    differ = sorted(rel for rel in one if one[rel] != two[rel] and not _is_timed(rel) and not rel.endswith(".pt"))
    assert differ == [], differ
    assert not any(_is_timed(rel) for rel in one if rel.endswith((".parquet", ".csv")) and "log.csv" not in rel)


def test_files_with_timings_match_once_the_timings_are_removed(twice):
    base, one, _ = twice
    for rel in sorted(r for r in one if _is_timed(r)):
        a, b = base / "one" / rel, base / "two" / rel
        if rel.endswith(".csv"):
            cols = lambda df: df.drop(columns=[c for c in df.columns if _TIMING_KEY.search(c)])  # noqa: E731
            pd.testing.assert_frame_equal(cols(pd.read_csv(a)), cols(pd.read_csv(b)), obj=rel)
        elif rel.endswith(".json"):
            assert _drop_timings(json.loads(a.read_text())) == _drop_timings(json.loads(b.read_text())), rel
        else:
            ca, cb = load_torch(a), load_torch(b)
            assert _drop_timings(ca["state"]) == _drop_timings(cb["state"]), rel
            for k in ca["state_dict"]:
                assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), (rel, k)


def test_checkpoint_weights_are_identical(twice):
    base, one, _ = twice
    for rel in sorted(r for r in one if r.endswith(".pt")):
        ca, cb = load_torch(base / "one" / rel), load_torch(base / "two" / rel)
        assert ca.keys() == cb.keys()
        assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"]), rel
        assert {k: v for k, v in ca.items() if k not in ("state_dict", "optimizer", "state")} == \
               {k: v for k, v in cb.items() if k not in ("state_dict", "optimizer", "state")}, rel


def test_checkpoints_without_timings_are_byte_identical(twice):
    _, one, two = twice
    snapshots = [rel for rel in one if rel.endswith(".pt") and not rel.endswith("last.pt")]
    assert snapshots and all(one[rel] == two[rel] for rel in snapshots)


def test_write_torch_bytes_do_not_depend_on_the_file_name(tmp_path):
    from camid.util.io import write_torch

    obj = {"w": torch.arange(6.0).reshape(2, 3), "meta": {"epoch": 3}}
    write_torch(tmp_path / "a.pt", obj)
    write_torch(tmp_path / "b" / "other.pt", obj)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "other.pt").read_bytes()
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert (tmp_path / "a.pt").read_bytes() == buf.getvalue()

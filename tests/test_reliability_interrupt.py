"""Issue 8, point 2: SIGKILL at any point never leaves a truncated output, and re-running
the same command finishes, redoing only what is missing.

Each test starts a real ``camid`` subprocess and kills its whole process group (a power
cut): either when a file appears (training), or exactly in the middle of an atomic write
(the temporary file is cut in half and the rename never happens; see
``reliability_tiny.PRELUDE``), which is the worst moment there is.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from camid.infer.table import read_table
from camid.util.io import load_torch, remove_stale_temps
from camid.workspace import Workspace
from reliability_tiny import (
    camid,
    check_outputs_intact,
    jpeg_bytes,
    kill_when_file,
    simulate,
    start,
    temp_files,
    write_config,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Simulated data, folds, and two trained runs ``a`` and ``b`` (b: a copy of a's folders)."""
    root = tmp_path_factory.mktemp("interrupt")
    data = simulate(root / "data")
    cfg = write_config(root / "ab.yaml", data, models=["a", "b"])
    common = ["--config", cfg, "--workdir", root]
    assert camid("folds", *common) == 0
    for fold in (0, 1):
        assert camid("train", *common, "--model", "a", "--fold", fold) == 0
    shutil.copytree(root / "models" / "a", root / "models" / "b")
    return root, data, common


def test_train_killed_after_its_first_checkpoint_resumes_where_it_stopped(world, capsys):
    root, data, _ = world
    cfg = write_config(root / "k.yaml", data, models=["k"], epochs=3)
    args = ["train", "--config", cfg, "--workdir", root, "--model", "k", "--fold", "0"]
    run = root / "models" / "k" / "fold0"
    killed, out = kill_when_file(start(*args), run / "last.pt")
    assert killed, f"training ended before it could be killed:\n{out}"

    check_outputs_intact(run)  # every .pt loads (weights_only), every CSV/JSON parses
    assert not (run / "done.json").exists()
    done = load_torch(run / "last.pt")["state"]["epoch"] + 1
    log_before = pd.read_csv(run / "log.csv")

    assert camid(*args, "--resume") == 0
    out = capsys.readouterr().out
    assert f"resuming {run} after epoch {done}" in out
    assert f"epoch {done}:" not in out  # finished epochs are not trained again
    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(log.iloc[:done], log_before.iloc[:done])
    assert (run / "done.json").is_file()
    kept = [e["file"] for e in yaml.safe_load((run / "checkpoints.json").read_text())["checkpoints"]]
    assert kept and all((run / f).is_file() for f in kept)
    check_outputs_intact(run)


def test_predict_killed_mid_write_keeps_finished_tables_and_redoes_only_the_missing_one(world, capsys):
    root, _, common = world
    oof = root / "oof"
    proc = start("predict", *common, kill_at="b.none.parquet:1")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == -9, out  # died in the middle of writing b's table

    check_outputs_intact(oof)
    assert (oof / "a.none.parquet").is_file() and not (oof / "b.none.parquet").exists()
    stale = temp_files(oof)
    assert [p.name.startswith(".b.none.parquet.") for p in stale] == [True]
    assert stale[0].stat().st_size > 0  # the half-written table exists only as a hidden temp file...
    assert Workspace(oof.parent, root).table_runs("none") == ["a"]  # ...that no glob of a later stage picks up
    assert sorted(p.name for p in oof.glob("*.parquet")) == ["a.none.parquet"]

    a_mtime = (oof / "a.none.parquet").stat().st_mtime_ns
    assert camid("predict", *common) == 0
    out = capsys.readouterr().out
    assert "a.none.parquet is up to date with its checkpoints; skipped" in out
    assert (oof / "a.none.parquet").stat().st_mtime_ns == a_mtime
    table = read_table(oof / "b.none.parquet")
    assert len(table) == len(read_table(oof / "a.none.parquet"))
    remove_stale_temps(oof)  # recognised as stale (predict itself does this once patch R2 is in)
    assert temp_files(oof) == []


def test_blend_killed_mid_write_leaves_finished_strategies_and_a_rerun_completes(world, capsys):
    root, _, common = world
    assert camid("predict", *common) == 0  # up to date when the predict test ran first
    out_dir = root / "oof" / "blend"
    proc = start("blend", *common, torch_stage=False, kill_at="gmean+hungarian.parquet:1")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == -9, out

    check_outputs_intact(out_dir)
    assert sorted(p.name for p in out_dir.glob("*.parquet")) == ["gmean.parquet"]
    assert len(temp_files(out_dir)) == 1
    # The next stage sees only complete tables.
    assert camid("submission", *common, "--strategies", "all", "--score-only") == 0

    assert camid("blend", *common) == 0
    assert "removed 1 stale temporary file" in capsys.readouterr().out
    assert temp_files(out_dir) == []
    names = sorted(p.stem for p in out_dir.glob("*.parquet"))
    assert names == ["gmean", "gmean+hungarian", "mean", "rms"]
    for name in names:
        read_table(out_dir / f"{name}.parquet")
    assert camid("submission", *common) == 0
    check_outputs_intact(root / "submissions")


def test_filter_external_killed_mid_report_resumes_from_its_last_checkpoint(world, tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(4):
        (src / "cam").mkdir(parents=True, exist_ok=True)
        (src / "cam" / f"{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    (src / "cam" / "broken.jpg").write_bytes(jpeg_bytes(seed=9)[:200])
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"min_side": 16, "reject_resaved": False,
                                     "classes": [{"name": "cam", "models": ["Anything"]}]}))
    args = ["filter-external", src, "--rules", rules, "--workers", "1"]

    assert camid(*args, "--out", tmp_path / "reference") == 0  # uninterrupted, for comparison
    out = tmp_path / "out"
    # Checkpoint the report after every file; die in the middle of writing the third one.
    proc = start(*args, "--out", out, torch_stage=False, kill_at="filter_report.csv:3",
                 set_attrs="camid.forensics.filter_external:CHECKPOINT_SECONDS=-1")
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == -9, text
    check_outputs_intact(out)
    partial = pd.read_csv(out / "filter_report.csv", dtype=str, keep_default_na=False)
    assert len(partial) == 2 and set(partial["decision"]) == {"pending"}
    assert len(temp_files(out)) == 1

    capsys.readouterr()
    assert camid(*args, "--out", out) == 0
    log = capsys.readouterr().out
    assert "read 3 files, reused 2 unchanged" in log  # only what the killed run had not done
    assert temp_files(out) == []
    got = pd.read_csv(out / "filter_report.csv", dtype=str, keep_default_na=False).drop(columns="dest")
    want = pd.read_csv(tmp_path / "reference" / "filter_report.csv", dtype=str,
                       keep_default_na=False).drop(columns="dest")
    pd.testing.assert_frame_equal(got, want)
    assert got.loc[got["path"].str.endswith("broken.jpg"), "reasons"].str.contains("unreadable").all()


def test_temporary_files_are_invisible_to_every_stage_glob(tmp_path):
    """Names of interrupted writes never match what stages list (tables, CSVs, images)."""
    from camid.data.images import is_image_file
    from camid.util.io import temp_prefix, write_parquet

    target = tmp_path / "oof" / "x.tta10.parquet"
    write_parquet(target, pd.DataFrame({"a": np.arange(3)}))
    for name in ("x.tta10.parquet", "photo.jpg", "submission.csv", "last.pt", "folds.csv"):
        tmp = tmp_path / "oof" / f"{temp_prefix(tmp_path / name)}abc123_x.tmp"
        tmp.write_bytes(b"partial")
        assert not is_image_file(tmp)
        assert tmp not in set((tmp_path / "oof").glob(f"*{Path(name).suffix}"))
        assert tmp not in set((tmp_path / "oof").glob("*.tta10.parquet"))
    assert Workspace(tmp_path, tmp_path).table_runs("tta10") == ["x"]
    # A killed writer's temp file is stale; live writers' (pid 1, and this process, whose
    # five files above could be in flight in another thread) are kept.
    dead = tmp_path / "oof" / f".y.tta10.parquet.pid{2 ** 22 + 12345}.abcdefgh.tmp"
    live = tmp_path / "oof" / ".y.tta10.parquet.pid1.abcdefgh.tmp"
    foreign = tmp_path / "oof" / ".notes.tmp"  # not named like ours: never touched
    for p in (dead, live, foreign):
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path / "oof") == [dead]
    assert live.exists() and foreign.exists() and len(temp_files(tmp_path)) == 7


def test_train_and_predict_remove_stale_temp_files_themselves(world):
    root, _, common = world
    dead = 2 ** 22 + 12345  # above the default pid_max: never a live process
    run = root / "models" / "a" / "fold0"
    stale_ck = run / f".last.pt.pid{dead}.abcdefgh.tmp"
    stale_tab = root / "oof" / f".a.none.parquet.pid{dead}.abcdefgh.tmp"
    for p in (stale_ck, stale_tab):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    assert camid("train", *common, "--model", "a", "--fold", "0", "--resume") == 0
    assert camid("predict", *common, "--force") == 0
    assert not stale_ck.exists() and not stale_tab.exists()

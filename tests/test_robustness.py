"""`camid robustness`: every grid point, real evaluation, and agreement with validation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from camid import cli
from camid.data.folds import read_folds
from camid.data.manipulations import KINDS
from camid.data.samples import build_variants
from camid.forensics import robustness
from camid.models import classifier as models
from camid.train.rundir import RunDir, load_checkpoint
from camid.train.trainer import evaluate
from trained_tiny import CLASSES, train_tiny


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    common = train_tiny(root, top_n=1)  # one checkpoint: the report must reproduce its validation numbers
    out = root / "report"
    assert cli.main(["robustness", *common, "--fold", "0", "--out", str(out)]) == 0
    return root, out, pd.read_csv(out / "robustness.csv")


def test_every_grid_point_is_reported_with_a_valid_accuracy(report):
    root, out, df = report
    n_held_out = int((read_folds(root / "models" / "folds.csv")["fold"] == 0).sum())
    for kind, values in [("jpeg", (*range(5, 100, 10), 70, 90)),  # the write-up's grid and the competition's
                         ("gamma", (0.25, 0.5, 0.75, 0.8, 1.0, 1.2, 1.25, 1.5, 1.75)),
                         ("resize", (0.5, 0.75, 0.8, 1.0, 1.25, 1.5, 1.75, 2.0))]:
        assert sorted(df.loc[df["kind"] == kind, "value"]) == sorted(float(v) for v in values), kind
    assert sorted(df.loc[df["kind"] == "crop", "value"]) == [32, 48, 64]  # input, val crop, limited by 64x80 photos
    assert (df["kind"] == "none").sum() == 1
    assert df["accuracy"].between(0, 1).all() and (df["n"] == n_held_out).all()
    assert (df["correct"] == np.round(df["accuracy"] * df["n"])).all()
    # identity points are the unaltered images (flag 0); the rest of the manipulations carry flag 1
    assert set(df.loc[(df["kind"].isin(["gamma", "resize"])) & (df["value"] == 1.0), "aug"]) == {"none"}
    assert (df.loc[df["aug"] != "none", "manip"] == 1).all()
    shaded = df[df["in_training_range"]]
    # a competition-mode run was trained on the 8 discrete manipulations only, not on ranges
    assert set(shaded.loc[shaded["kind"] == "jpeg", "value"]) == {70, 90}
    assert set(shaded.loc[shaded["kind"] == "resize", "value"]) == {0.5, 0.8, 1.5, 2.0}
    assert shaded.loc[shaded["kind"] == "crop", "value"].tolist() == [32]
    assert df["competition_point"].sum() == 8
    assert (out / "robustness.png").stat().st_size > 0 and (out / "robustness.json").is_file()


@pytest.mark.parametrize("aug", ["none", "jpeg70", "gamma0.8", "resize0.5", "resize2.0"])
def test_training_range_points_equal_validation_accuracy(report, aug):
    root, _, df = report
    run_dir = root / "models" / "camid_tiny" / "fold0"
    (ck_file,) = RunDir(run_dir).checkpoint_files(1, "top_n")
    ck = load_checkpoint(ck_file)
    net = models.rebuild(ck.model_args)
    net.load_state_dict(ck.state_dict)
    folds = read_folds(root / "models" / "folds.csv")
    val = folds[folds["fold"] == 0]
    index = {c: i for i, c in enumerate(CLASSES)}
    # validation scores the first view of predict.tta (tta10: the centre crop at the input size)
    variants = build_variants(val["path"].tolist(), val["fname"].tolist(), val["label"].map(index).tolist(),
                              [aug], 48, desc=None).view("centre", ck.input_size)
    res = evaluate(net, variants, torch.device("cpu"), 8, False)
    row = df[(df["aug"] == aug) & (df["crop"] == 48)].iloc[0]
    assert row["accuracy"] == pytest.approx(res.acc_unalt if aug == "none" else res.acc_manip)
    if aug == "none":  # and the number stored in the checkpoint by training's own validation
        assert row["accuracy"] == pytest.approx(ck.val["acc_unalt"])


def test_names_match_the_harness_spelling():
    assert KINDS["jpeg"].name_of(70) == "jpeg70"
    assert KINDS["resize"].name_of(2.0) == "resize2.0" and KINDS["resize"].name_of(0.75) == "resize0.75"
    assert KINDS["gamma"].name_of(0.8) == "gamma0.8" and KINDS["gamma"].name_of(1.0) == "none"
    names = {p.aug for p in robustness.grid(512, 480, 4000)}
    from camid.data.manipulations import MANIPULATION_NAMES
    assert set(MANIPULATION_NAMES) <= names


def test_missing_run_is_a_clear_error(report, tmp_path, capsys):
    root, _, _ = report
    cfg = root / "tiny.yaml"
    rc = cli.main(["robustness", "--config", str(cfg), "--workdir", str(root), "--fold", "1"])
    assert rc == 2 and "no trained checkpoints" in capsys.readouterr().err

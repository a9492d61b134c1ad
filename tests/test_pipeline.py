"""The train -> predict slice on a tiny generated dataset (CPU, seconds)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from camid import cli
from camid.data.folds import read_folds
from camid.infer.table import read_table
from camid.train.rundir import load_checkpoint
from tiny_config import tiny_config

TRAIN = {"cycles": 1, "cycle_epochs": 1, "orientation": "d4"}
PREDICT = {"tta": "tta10", "top_n": 2, "crop": 48, "oof_augs": ["jpeg70", "resize0.5", "gamma1.2"], "batch_size": 40}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from PIL import Image

    from conftest import write_jpeg
    root = tmp_path_factory.mktemp("pipe")
    data = root / "data"
    for c, cls in enumerate(["cam-a", "cam-b", "cam-c"]):
        for i in range(4):
            write_jpeg(data / "train" / cls / f"{i}.jpg", 64, 80, seed=10 * c + i)
    (data / "test").mkdir()
    for i, kind in enumerate(["unalt", "manip", "unalt"]):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
            data / "test" / f"img_{i:07x}_{kind}.tif")
    cfg = tiny_config(root / "tiny.yaml", data, train=TRAIN, predict=PREDICT)
    common = ["--config", str(cfg), "--workdir", str(root)]
    assert cli.main(["folds", *common]) == 0
    for fold in (0, 1):
        assert cli.main(["train", *common, "--fold", str(fold)]) == 0
    assert cli.main(["predict", *common]) == 0
    return root, common


def test_runs_write_checkpoints_logs_and_markers(trained):
    root, _ = trained
    for fold in (0, 1):
        run = root / "models" / "camid_tiny" / f"fold{fold}"
        kept = json.loads((run / "checkpoints.json").read_text())["checkpoints"]
        assert len(kept) == 2 and {k["kind"] for k in kept} == {"epoch", "snapshot"}
        log = pd.read_csv(run / "log.csv")
        assert list(log["epoch"]) == [1, 2, 3] and list(log["phase"]) == ["plateau", "plateau", "cycle"]
        assert {"train_loss", "val_score", "lr", "images_per_s"} <= set(log.columns)
        ck = load_checkpoint(run / kept[0]["file"])
        assert ck.classes == ["cam-a", "cam-b", "cam-c"] and ck.fold == fold
        assert ck.model_args["backbone"] == "camid_tiny" and ck.config
        assert (run / "done.json").is_file() and (run / "config.yaml").is_file()
        assert not list(run.glob("*.tmp"))


def test_oof_covers_every_training_image_once_per_variant_from_the_model_that_held_it_out(trained):
    root, _ = trained
    folds = read_folds(root / "models" / "folds.csv")
    table = read_table(root / "oof" / "camid_tiny.tta10.parquet", ["cam-a", "cam-b", "cam-c"])
    oof = table[table.split == "oof"]
    assert set(oof["aug"]) == {"none", "jpeg70", "resize0.5", "gamma1.2"}
    per_variant = oof.groupby("aug")["fname"].apply(sorted)
    for aug, names in per_variant.items():
        assert names == sorted(folds["fname"]), aug  # every image, once
    merged = oof.merge(folds[["fname", "fold", "label"]], on="fname", suffixes=("", "_folds"))
    assert (merged["fold"] == merged["fold_folds"]).all()  # predicted by the model that never trained on it
    assert (merged["label"] == merged["label_folds"]).all()
    assert ((oof["aug"] == "none") == (oof["manip"] == 0)).all()
    probs = table[["cam-a", "cam-b", "cam-c"]].to_numpy()
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_test_rows_cover_every_test_file_with_its_flag(trained):
    root, _ = trained
    table = read_table(root / "oof" / "camid_tiny.tta10.parquet")
    test = table[table.split == "test"]
    assert test["fname"].tolist() == sorted(f"img_{i:07x}_{k}.tif" for i, k in enumerate(["unalt", "manip", "unalt"]))
    assert test["manip"].tolist() == [0, 1, 0] and (test["aug"] == "unknown").all() and (test["fold"] == -1).all()
    meta = json.loads((root / "oof" / "camid_tiny.tta10.json").read_text())
    assert meta["folds"] == [0, 1] and meta["tta"] == "tta10"


def test_predict_skips_an_up_to_date_table(trained, capsys):
    root, common = trained
    table = root / "oof" / "camid_tiny.tta10.parquet"
    before = table.stat().st_mtime_ns
    assert cli.main(["predict", *common]) == 0
    assert "up to date" in capsys.readouterr().out
    assert table.stat().st_mtime_ns == before


def test_resume_continues_after_the_last_epoch(trained, capsys):
    root, common = trained
    run = root / "models" / "camid_tiny" / "fold0"
    ck = load_checkpoint(run / "last.pt")
    assert ck.state is not None and ck.state["epoch"] == 2 and ck.optimizer is not None
    assert cli.main(["train", *common, "--fold", "0", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "epoch 1:" not in out  # nothing left to train
    assert len(pd.read_csv(run / "log.csv")) == 3


def test_folds_missing_is_a_clear_error(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "c.yaml", tmp_path / "nodata", train=TRAIN, predict=PREDICT)
    assert cli.main(["train", "--config", str(cfg), "--workdir", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


def test_a_log_file_gets_one_line_per_epoch_and_no_progress_frames(trained, tmp_path):
    """Progress bars are for a terminal; `make train-all > log` must not fill with \\r frames."""
    root, common = trained
    (tmp_path / "models").mkdir()
    shutil.copy(root / "models" / "folds.csv", tmp_path / "models")  # a fresh run folder, the same data
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "train.log"
    with open(log, "w") as fh:  # a file, as under `make demo > log` or a queued job's train.out
        subprocess.run([sys.executable, "-m", "camid.cli", "train", *common, "--fold", "1",
                        "--workdir", str(tmp_path)], stdout=fh, stderr=subprocess.STDOUT, env=env, check=True,
                       timeout=300)
    text = log.read_text()
    assert "\r" not in text and "it/s" not in text
    epochs = [line for line in text.splitlines() if line.startswith("[camid train] camid_tiny fold1 epoch ")]
    assert [line.split(" epoch ")[1].split(":")[0] for line in epochs] == ["1", "2", "3"]

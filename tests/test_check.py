"""`camid check`: the preflight prints the plan and names every blocker before train-all."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from camid import cli
from conftest import REPO
from tiny_config import tiny_config

KAGGLE = REPO / "configs" / "kaggle.yaml"
SIM = ["--n-classes", "3", "--train-per-class", "3", "--test-per-class", "2", "--width", "128", "--height", "96",
       "--test-crop", "32", "--workers", "1"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    data = tmp_path_factory.mktemp("check") / "data"
    assert cli.main(["simulate", str(data), *SIM]) == 0
    return data


def test_kaggle_yaml_on_a_folder_it_does_not_fit_names_each_blocker(sim, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # weights_dir: weights, relative to the current folder
    # four of the eight runs: the other four take seconds each to count their parameters on a CPU
    runs = "se_resnext50_32x4d,se_resnet50,dpn92,dpn98"
    rc = cli.main(["check", "--config", str(KAGGLE), "--data", str(sim), "--workdir", str(tmp_path), "--no-load",
                   "--models", runs])
    out = capsys.readouterr().out
    assert rc == 1
    blockers = out.split("blocker(s):")[1]
    assert "test crops are 12 of 32x32 px but predict.crop is 512" in blockers
    assert "dpn92: weights/dpn92_extra-fda993c95.pth missing" in blockers
    assert blockers.count(" missing") == 4
    assert "checkpoints need" in out
    assert ("no CUDA GPU visible" in blockers) is not torch.cuda.is_available()
    assert "3 classes, 9 training photos" in out and "12 test files: 6 _unalt, 6 _manip" in out
    assert "4 run(s) x 5 fold(s) = 20 job(s) per round, 2 round(s): 40 jobs" in out
    assert "camid weights fetch --config" in out


def test_a_fitting_profile_has_no_blockers_and_estimates_the_time(sim, tmp_path, capsys):
    cfg = tiny_config(tmp_path / "c.yaml", sim, predict={"crop": 32})
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [{"section": "gpu", "item": "train camid_tiny @16, batch 32",
                                           "value": 64.0}]}))
    rc = cli.main(["check", "--config", str(cfg), "--workdir", str(tmp_path), "--bench", str(bench), "--rounds", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "no blockers" in out and "camid_tiny: trains from scratch" in out
    # 2 epochs x 2 steps x batch 8 = 32 images at 64 images/s measured at 16 px, trained at 32 px (4x the pixels)
    assert "32 images at 64 images/s (16 px) -> 0.0 h per job" in out
    assert "sample_submission.csv lists exactly the 12 test files" in out


def test_a_sample_submission_that_differs_from_test_blocks(sim, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    for f in sorted((sim / "test").iterdir())[:4]:
        (data / "test" / f.name).write_bytes(f.read_bytes())
    (data / "train").symlink_to(sim / "train")
    pd.read_csv(sim / "sample_submission.csv").head(5).to_csv(data / "sample_submission.csv", index=False)
    cfg = tiny_config(tmp_path / "c.yaml", data, predict={"crop": 32})
    assert cli.main(["check", "--config", str(cfg), "--workdir", str(tmp_path)]) == 1
    assert "sample_submission.csv and test/ differ: 1 listed file(s) not in test/" in capsys.readouterr().out


def test_a_weights_file_that_does_not_fit_its_backbone_blocks(sim, tmp_path, monkeypatch, capsys):
    """Present is not enough: the file must load into the backbone (here a stand-in of the right name)."""
    monkeypatch.chdir(tmp_path)  # weights_dir: weights, relative to the current folder
    (tmp_path / "weights").mkdir()
    torch.save({"w": torch.zeros(3)}, tmp_path / "weights" / "se_resnet50-ce0d4300.pth")
    rc = cli.main(["check", "--config", str(KAGGLE), "--data", str(sim), "--models", "se_resnet50"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "se_resnet50: weights file weights/se_resnet50-ce0d4300.pth does not fit backbone 'se_resnet50'" in out
    assert "Missing key(s)" not in out  # one line per blocker, not the key lists

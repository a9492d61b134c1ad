"""One run over two processes with torch DDP (gloo on CPU stands in for NCCL on GPUs)."""
import os
import subprocess
import sys

import pandas as pd

from camid.train.rundir import load_checkpoint
from tiny_config import tiny_config

TRAIN = {"warmup_input_size": 16, "warmup_epochs": 1, "batch_size": 4, "orientation": "d4"}


def test_train_under_torchrun_with_two_ranks(tmp_path, kaggle_layout):
    cfg = tiny_config(tmp_path / "c.yaml", kaggle_layout, name="ddp", train=TRAIN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "camid.cli"]
    common = ["--config", str(cfg), "--workdir", str(tmp_path)]
    subprocess.run(base + ["folds", *common], check=True, env=env, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "camid.cli", "train", *common, "--fold", "0"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "models" / "camid_tiny" / "fold0"
    log = pd.read_csv(run / "log.csv")
    assert list(log["epoch"]) == [1, 2]  # one writer: no duplicated rows from the second rank
    assert out.stdout.count("camid_tiny fold0 epoch 1:") == 1
    ck = load_checkpoint(run / "last.pt")
    assert not any(k.startswith("module.") for k in ck.state_dict)  # the bare model, loadable anywhere
    assert (run / "done.json").is_file()


def test_progressive_resizing_changes_the_sample_size(tmp_path, kaggle_layout):
    from camid import cli
    from camid.config import load_config
    from camid.train.runtime import pick_device
    from camid.train.trainer import Trainer
    from camid.workspace import Workspace
    cfg_path = tiny_config(tmp_path / "c.yaml", kaggle_layout, name="ddp", train=TRAIN)
    assert cli.main(["folds", "--config", str(cfg_path), "--workdir", str(tmp_path)]) == 0
    cfg = load_config(cfg_path)
    tr = Trainer(cfg, Workspace(tmp_path, kaggle_layout), cfg.models[0], 0, pick_device("cpu"))
    tr._build()
    tr._datasets()
    assert [tr.input_size_at(e) for e in range(3)] == [16, 32, 32]
    sizes = [next(iter(tr._loader(e)))["image"].shape[-1] for e in range(2)]
    assert sizes == [16, 32]

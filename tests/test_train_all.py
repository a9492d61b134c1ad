"""The train-all scheduler, with fake GPUs: no CUDA needed."""
import json
import threading
import time

import pandas as pd
import pytest

from camid import cli
from camid.config import load_config
from camid.data.folds import make_folds, write_folds
from camid.jobs import queue as jobs
from camid.train.trainer import train_digest

CFG = """
name: sched
data_dir: {data}
folds: {{n_folds: 3}}
models: [{{backbone: camid_tiny, name: a}}, {{backbone: camid_tiny, name: b}}]
"""


class FakeJobs:
    """Stands in for subprocess.Popen: records which GPU each job got and how many overlapped."""

    def __init__(self, root, fail=()):
        self.root, self.fail, self.lock = root, set(fail), threading.Lock()
        self.running, self.peak, self.started = 0, 0, []

    def __call__(self, cmd, env=None, stdout=None, stderr=None, **popen_kwargs):
        run, fold = cmd[cmd.index("--model") + 1], int(cmd[cmd.index("--fold") + 1])
        gpu = env.get("CUDA_VISIBLE_DEVICES", "cpu")
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append((run, fold, gpu, cmd[cmd.index("--device") + 1]))
        return _Proc(self, run, fold)


class _Proc:
    def __init__(self, jobs, run, fold):
        self.jobs, self.run, self.fold, self.t0, self.returncode = jobs, run, fold, time.time(), None

    def poll(self):
        if self.returncode is None and time.time() - self.t0 > 0.15:
            self.returncode = 1 if (self.run, self.fold) in self.jobs.fail else 0
            with self.jobs.lock:
                self.jobs.running -= 1
            if not self.returncode:  # what a finished `camid train` leaves behind
                cfg = load_config(self.jobs.root / "c.yaml")
                d = self.jobs.root / "models" / self.run / f"fold{self.fold}"
                d.mkdir(parents=True, exist_ok=True)
                (d / "done.json").write_text(json.dumps({"train_digest": train_digest(cfg, cfg.model(self.run))}))
        return self.returncode


@pytest.fixture
def workdir(tmp_path, kaggle_layout, monkeypatch):
    monkeypatch.setattr(jobs, "POLL_S", 0.02)
    (tmp_path / "c.yaml").write_text(CFG.format(data=kaggle_layout))
    rows = pd.DataFrame({"fname": [f"train/x/{i}.jpg" for i in range(9)], "path": "p",
                         "label": ["cam-a", "cam-b", "cam-c"] * 3, "source": "train"})
    write_folds(make_folds(rows, "kfold", 3), tmp_path / "models" / "folds.csv")
    return tmp_path


def _run(workdir, gpus):
    return cli.main(["train-all", "--config", str(workdir / "c.yaml"), "--workdir", str(workdir), "--gpus", gpus])


def test_jobs_spread_over_two_gpus_one_at_a_time(workdir, monkeypatch):
    fake = FakeJobs(workdir)
    monkeypatch.setattr(jobs.subprocess, "Popen", fake)
    assert _run(workdir, "0,1") == 0
    assert sorted((r, f) for r, f, _, _ in fake.started) == [(r, f) for r in "ab" for f in range(3)]
    assert fake.peak == 2  # both GPUs busy, never more than one job per GPU
    assert {g for _, _, g, _ in fake.started} == {"0", "1"}
    assert all(dev == "cuda" for _, _, _, dev in fake.started)


def test_a_failed_job_is_reported_and_the_others_finish_then_rerun_skips_done(workdir, monkeypatch, capsys):
    fake = FakeJobs(workdir, fail={("a", 1)})
    monkeypatch.setattr(jobs.subprocess, "Popen", fake)
    assert _run(workdir, "0,1") == 2
    err = capsys.readouterr()
    assert "FAILED a fold 1" in err.out and "1 job(s) failed" in err.err
    assert len(fake.started) == 6
    again = FakeJobs(workdir)
    monkeypatch.setattr(jobs.subprocess, "Popen", again)
    assert _run(workdir, "0,1") == 0
    assert [(r, f) for r, f, _, _ in again.started] == [("a", 1)]  # only the failed job reruns


def test_without_gpus_jobs_run_one_by_one_on_cpu(workdir, monkeypatch):
    fake = FakeJobs(workdir)
    monkeypatch.setattr(jobs.subprocess, "Popen", fake)
    assert _run(workdir, "") == 0
    assert fake.peak == 1 and {d for *_, d in fake.started} == {"cpu"}


def test_ddp_runs_one_job_over_all_gpus_through_torchrun(workdir, monkeypatch):
    fake = FakeJobs(workdir)
    cmds = []
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda cmd, **kw: (cmds.append(cmd), fake(cmd, **kw))[1])
    assert cli.main(["train-all", "--config", str(workdir / "c.yaml"), "--workdir", str(workdir),
                     "--gpus", "0,1,2", "--ddp"]) == 0
    assert fake.peak == 1 and {g for _, _, g, _ in fake.started} == {"0,1,2"}
    assert all("torch.distributed.run" in c and "--nproc_per_node=3" in c for c in cmds)


def test_predict_queues_one_run_per_gpu(workdir, monkeypatch):
    cmds = []
    fake = FakeJobs(workdir)

    def popen(cmd, env=None, **kw):
        cmds.append((cmd, env["CUDA_VISIBLE_DEVICES"]))
        return fake(cmd[:-4] + ["--model", cmd[cmd.index("--models") + 1], "--fold", "0", "--device", "cuda"], env)

    monkeypatch.setattr(jobs.subprocess, "Popen", popen)
    assert cli.main(["predict", "--config", str(workdir / "c.yaml"), "--workdir", str(workdir), "--gpus", "0,1"]) == 0
    assert sorted(c[c.index("--models") + 1] for c, _ in cmds) == ["a", "b"]
    assert {g for _, g in cmds} == {"0", "1"} and fake.peak == 2
    assert all(c[c.index("--gpus") + 1] == "0" for c, _ in cmds)

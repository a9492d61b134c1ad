"""Issue 15: `train-all` and `predict` past one machine (``--backend ray|slurm``).

One tiny competition and one config (runs ``a`` and ``b``, 2 folds, 3 epochs; run ``bad`` has
an unknown backbone, so its jobs fail) trained once by the local backend as the reference.
Every other backend must leave run folders equal to it: the same checkpoints listed in
``checkpoints.json``, the same ``done.json``, byte-identical epoch checkpoints. Each job runs on
one thread (``CAMID_NUM_CPUS=1``), which is what makes CPU training bit-reproducible.

Ray runs against one local instance with 2 CPUs for the module; slurm through submitit's
LocalExecutor (the same pickles, signals and requeues as on a cluster). The faults are real:
a Ray worker is SIGKILLed in the middle of a job (its retry must resume from ``last.pt``), a
Slurm job gets the preemption signal (it must be requeued and resume).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from camid import cli
from camid.config import ConfigError, load_config
from camid.errors import UsageError
from camid.jobs.backends import CamidJob, Progress
from camid.util.archive import members, pack, unpack
from conftest import REPO
from reliability_tiny import check_outputs_intact, simulate
from tiny_config import tiny_config

RUNS = ("a", "b")
EPOCHS = 3


# ------------------------------------------------------------------ fast: the pieces
def test_pack_and_unpack_write_the_marker_last_and_prune_what_the_pack_lacks(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "run").mkdir(parents=True)
    for name in ("a.pt", "done.json", "log.csv"):
        (src / "run" / name).write_text(name)
    (src / "run" / ".a.pt.pid1.x.tmp").write_text("half")  # an interrupted write: never shipped
    os.utime(src / "run" / "a.pt", (1_000_000, 1_000_000))
    data = pack(src, ["run", "missing.csv"])
    assert sorted(members(data)) == ["run/a.pt", "run/done.json", "run/log.csv"]

    (dst / "run").mkdir(parents=True)
    (dst / "run" / "old.pt").write_text("stale")  # e.g. a checkpoint that dropped out of the top-N
    (dst / "run" / "done.json").write_text("from an earlier config")
    order: list[str] = []
    real = os.replace

    def replace(src, dst):
        order.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    unpack(dst, data, last="run/done.json", prune=["run"])
    monkeypatch.undo()
    assert order[-1] == "done.json" and len(order) == 3
    assert sorted(p.name for p in (dst / "run").iterdir()) == ["a.pt", "done.json", "log.csv"]
    assert (dst / "run" / "a.pt").stat().st_mtime == 1_000_000  # predict's up-to-date stamp uses it

    sent: dict[str, tuple[int, int]] = {}
    assert members(pack(src, ["run"], skip=("run/done.json",), since=sent)) == ["run/a.pt", "run/log.csv"]
    assert pack(src, ["run"], skip=("run/done.json",), since=sent) == b""  # nothing changed since
    import io
    import tarfile
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../outside")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="not a relative path"):
        unpack(dst, evil.getvalue())


def test_the_cluster_section_is_validated_and_the_command_line_overrides_it(tmp_path):
    from camid.cli.common import backend_options

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"device": "cuda", "cluster": {"num_gpus": 0.5, "storage": "copy"}}))
    cfg = load_config(path)
    args = SimpleNamespace(backend="ray", ray_address="auto", storage=None, slurm_partition="gpu",
                           slurm_gpus_per_job=2, slurm_time=60, slurm_executor=None, gpus="", ddp=False)
    opts = backend_options(args, cfg)
    assert (opts.num_gpus, opts.storage, opts.ray_address, opts.num_cpus) == (0.5, "copy", "auto", 5)
    assert (opts.slurm_partition, opts.slurm_gpus_per_job, opts.slurm_time_min) == ("gpu", 2, 60)
    cfg.device = "cpu"  # a CPU config never asks for GPUs
    assert backend_options(args, cfg).num_gpus == 0 and backend_options(args, cfg).slurm_gpus_per_job == 0
    with pytest.raises(UsageError, match="--ddp is for --backend local"):
        backend_options(SimpleNamespace(**{**vars(args), "ddp": True}), cfg)
    for bad, match in (({"num_gpus": 1.5}, "whole number"), ({"num_gpu": 1}, "unknown key"),
                       ({"storage": "nfs"}, "not one of"), ({"max_retries": -1}, ">= 0")):
        path.write_text(yaml.safe_dump({"cluster": bad}))
        with pytest.raises(ConfigError, match=match):
            load_config(path)


def test_progress_lines_carry_the_node_and_the_live_counts(capsys):
    p = Progress("train-all", ["x", "y", "z"])
    p.started("x", "node1")
    p.started("y", "node2")
    p.finished("x", "node1")
    p.started("y", "node3", attempt=2)
    p.failure("y", "node3", 2, "models/y/train.out", "line 1\ncamid train: error: boom")
    out = capsys.readouterr().out
    assert "start x on node1" in out and "0 done, 1 running, 2 queued" in out
    assert "finished x on node1" in out and "1 done, 1 running, 1 queued" in out
    assert "restart y on node3 (attempt 2)" in out
    assert "FAILED y on node3 (exit 2); see models/y/train.out; 1 done, 0 running, 1 queued, 1 failed" in out
    assert "    | camid train: error: boom" in out


def test_make_passes_the_backend_options():
    cmd = subprocess.run(["make", "-n", "-C", str(REPO), "train-all", "BACKEND=ray", "RAY_ADDRESS=auto",
                          "CAMID=camid", "STAMP="], capture_output=True, text=True, check=True).stdout
    assert "--backend ray" in cmd and "--ray-address auto" in cmd
    cmd = subprocess.run(["make", "-n", "-C", str(REPO), "predict", "BACKEND=slurm", "SLURM_PARTITION=gpu",
                          "SLURM_GPUS=1", "SLURM_TIME=240", "CAMID=camid", "STAMP="],
                         capture_output=True, text=True, check=True).stdout
    assert "--backend slurm --slurm-partition gpu --slurm-gpus-per-job 1 --slurm-time 240" in cmd


# ------------------------------------------------------------------ the tiny world
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """Data, the config and the local backend's reference run folders (``ref/``)."""
    root = tmp_path_factory.mktemp("backends")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAMID_NUM_CPUS", "1")  # every job process on one thread: bit-reproducible
        data = simulate(root / "data")
        cfg = tiny_config(root / "c.yaml", data, runs=[*RUNS, "bad"], seed=7,
                          train={"epochs": EPOCHS, "steps_per_epoch": 1, "val_crop": 32},
                          predict={"tta": "none", "top_n": 1, "crop": 32, "oof_augs": ["jpeg70"], "batch_size": 40})
        text = yaml.safe_load(cfg.read_text())
        text["models"][2]["backbone"] = "no_such_backbone"
        cfg.write_text(yaml.safe_dump(text, sort_keys=False))
        ref = root / "ref"
        assert run("folds", "--config", cfg, "--workdir", ref) == 0
        assert run("train-all", "--config", cfg, "--workdir", ref, "--models", ",".join(RUNS)) == 0
        yield SimpleNamespace(root=root, data=data, cfg=cfg, ref=ref)


def run(*argv: object) -> int:
    return cli.main([str(a) for a in argv])


def workdir(world: SimpleNamespace, name: str) -> Path:
    """A fresh work dir with the reference's folds (the same bytes, so the same folds hash)."""
    wd = world.root / name
    (wd / "models").mkdir(parents=True)
    shutil.copy(world.ref / "models" / "folds.csv", wd / "models" / "folds.csv")
    return wd


def run_folders(wd: Path, runs=RUNS) -> dict[str, dict]:
    """What must not depend on the backend (log.csv, last.pt and train.out hold timings)."""
    out = {}
    for d in sorted(d for r in runs for d in (wd / "models" / r).glob("fold*")):
        out[d.relative_to(wd).as_posix()] = {
            "checkpoints.json": json.loads((d / "checkpoints.json").read_text()),
            "done.json": json.loads((d / "done.json").read_text()),
            "config.yaml": (d / "config.yaml").read_text(),
            **{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.pt"))
               if p.name != "last.pt"}}
    return out


def assert_same_runs(wd: Path, ref: Path, runs=RUNS) -> None:
    got, want = run_folders(wd, runs), run_folders(ref, runs)
    assert set(got) == set(want) and len(got) == 2 * len(runs)
    for key in want:
        assert got[key] == want[key], key
        assert got[key]["checkpoints.json"]["checkpoints"], key


def assert_resumed(log: str, run_name: str, fold: int) -> None:
    """The log shows a resume, and no epoch finished before the kill was trained again."""
    found = re.search(r"resuming \S+ after epoch (\d+)", log)
    assert found and int(found.group(1)) < EPOCHS, log  # interrupted before its last epoch
    for epoch in range(1, EPOCHS + 1):
        n = log.count(f"{run_name} fold{fold} epoch {epoch}:")
        assert (n == 1) if epoch <= int(found.group(1)) else (n >= 1), (epoch, log)


def job_pid(run_name: str, fold: int, where: str) -> int | None:
    """The `camid train` process of a job (the argv has `--workdir` containing ``where``)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in args]
        if "camid.cli" in text and "train" in text and "--model" in text and "--workdir" in text:
            i, j, w = text.index("--model"), text.index("--fold"), text.index("--workdir")
            if text[i + 1] == run_name and text[j + 1] == str(fold) and where in text[w + 1]:
                return int(proc.name)
    return None


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


class SignalWhen(threading.Thread):
    """Interrupt a job in the middle of its run, at a chosen point: once ``path`` exists (its
    first ``last.pt``), freeze the job's `camid train` process (SIGSTOP), wait for ``then`` if
    given, and send ``sig`` to the process running it (the Ray worker, or the submitit process
    of a Slurm job). A SIGKILLed parent takes the frozen process with it (it dies with its
    parent); otherwise it is thawed to receive what its parent sends it."""

    def __init__(self, path: Path, run_name: str, fold: int, where: str, sig: int, then: Path | None = None):
        super().__init__(daemon=True)
        self.path, self.job, self.where, self.sig, self.then = path, (run_name, fold), where, sig, then
        self.sent_to: int | None = None
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not self.path.exists():
            time.sleep(0.005)
        pid = job_pid(*self.job, self.where)
        if pid is None:
            return
        os.kill(pid, signal.SIGSTOP)
        while self.then is not None and time.monotonic() < deadline and not self.then.exists():
            time.sleep(0.01)
        self.sent_to = parent_of(pid)
        os.kill(self.sent_to, self.sig)
        if self.sig != signal.SIGKILL:
            time.sleep(0.5)
            with contextlib.suppress(ProcessLookupError):  # already ended by its parent
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def local_ray(world) -> Iterator[None]:
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAMID_NUM_CPUS", "1")  # the reference's setting; the ray backend sets it per job anyway
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 object_store_memory=150 * 1024 ** 2)
        try:
            yield
        finally:
            ray.shutdown()


# ------------------------------------------------------------------ local
def test_the_local_backend_imports_neither_ray_nor_submitit(world):
    code = ("import sys; from camid import cli; "
            f"a = cli.main(['train-all', '--config', {str(world.cfg)!r}, '--workdir', {str(world.ref)!r}, "
            f"'--models', 'a,b']); "
            f"b = cli.main(['predict', '--config', {str(world.cfg)!r}, '--workdir', {str(world.ref)!r}, "
            "'--models', 'bad']); "
            "bad = [m for m in ('ray', 'submitit') if m in sys.modules]; "
            "sys.exit(3 if bad else 10 * a + b)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # train-all: all done (0); predict: nothing trained (2)
    assert "0 to run" in proc.stdout


# ------------------------------------------------------------------ ray
def test_ray_matches_local_and_a_killed_worker_resumes_from_last_pt(world, local_ray, capsys):
    wd = workdir(world, "ray")
    killer = SignalWhen(wd / "models" / "a" / "fold0" / "last.pt", "a", 0, str(wd), signal.SIGKILL)
    rc = run("train-all", "--config", world.cfg, "--workdir", wd, "--backend", "ray", "--models", "a,b,bad")
    out = capsys.readouterr().out
    killer.join(5)
    assert killer.sent_to is not None, out
    assert rc == 2, out  # the bad run's two jobs failed...
    for k in (0, 1):
        assert f"FAILED bad fold {k} on " in out and "(exit 2)" in out
        assert f"finished b fold {k} on " in out  # ...and the others went on
    assert "no_such_backbone" in out  # the failure's log tail is shown
    assert re.search(r"start a fold 0 on \S+ \(", out) and "restart a fold 0 on " in out
    assert "6 job(s), 0 already finished, 6 to run" in out and "4 done, 0 running, 0 queued, 2 failed" in out

    run_dir = wd / "models" / "a" / "fold0"
    assert_resumed((run_dir / "train.out").read_text(), "a", 0)
    check_outputs_intact(wd / "models")  # nothing truncated
    assert_same_runs(wd, world.ref)  # ...and the resumed run equals the uninterrupted one


def scratch_of(wd: Path) -> Path:
    """storage copy: the job's work dir on the node (this machine's temp folder)."""
    from camid.jobs.backends.node import NodeJob

    here = pytest.importorskip("ray").get_runtime_context().get_node_id()  # the driver: this process
    return NodeJob(CamidJob("", "", (), (), (), ""), "", str(wd.absolute()), "", "", 0, 1, "copy",
                   driver=here).local_workdir()


def test_ray_copy_storage_brings_the_run_folders_back_and_resumes_from_the_drivers_copy(world, local_ray, capsys):
    wd = workdir(world, "copy")
    scratch = scratch_of(wd)
    # Freeze the job after its first epoch on the node; kill its worker once the driver has that checkpoint.
    killer = SignalWhen(scratch / "models" / "a" / "fold0" / "last.pt", "a", 0, str(scratch), signal.SIGKILL,
                        then=wd / "models" / "a" / "fold0" / "last.pt")
    rc = run("train-all", "--config", world.cfg, "--workdir", wd, "--backend", "ray", "--storage", "copy",
             "--models", "a")
    out = capsys.readouterr().out
    killer.join(5)
    assert rc == 0 and killer.sent_to is not None, out
    assert "restart a fold 0 on " in out
    assert_resumed((wd / "models" / "a" / "fold0" / "train.out").read_text(), "a", 0)
    check_outputs_intact(wd / "models")
    assert_same_runs(wd, world.ref, runs=("a",))
    assert scratch.parent.name == "camid-jobs" and not list((scratch / "models").glob("*/fold*/*")), \
        "a finished job leaves no copy of its run folder on the node"
    shutil.rmtree(scratch)


def test_ray_predict_distributes_the_run_tables(world, local_ray, tmp_path, capsys):
    """One job per run (here with storage copy: the checkpoints travel); the tables equal one process's."""
    here, there = tmp_path / "here", tmp_path / "there"
    for wd in (here, there):
        shutil.copytree(world.ref / "models", wd / "models")
    assert run("predict", "--config", world.cfg, "--workdir", here, "--models", "a,b") == 0
    assert run("predict", "--config", world.cfg, "--workdir", there, "--backend", "ray", "--storage", "copy") == 0
    out = capsys.readouterr().out
    assert "bad: no finished training run" in out and "finished predict a on " in out
    for name in ("a", "b"):
        a, b = here / "oof" / f"{name}.none.parquet", there / "oof" / f"{name}.none.parquet"
        assert a.read_bytes() == b.read_bytes(), name
        assert json.loads(b.with_suffix(".json").read_text())["run"] == name
        assert (there / "oof" / f"{name}.predict.out").is_file()
    # Up to date: the next run ships the table with the checkpoints and the job skips it.
    assert run("predict", "--config", world.cfg, "--workdir", there, "--backend", "ray", "--storage", "copy",
               "--models", "a") == 0
    assert "is up to date with its checkpoints; skipped" in (there / "oof" / "a.predict.out").read_text()
    shutil.rmtree(scratch_of(there))


# ------------------------------------------------------------------ slurm (submitit)
def test_slurm_array_through_submitit_matches_local_and_a_preempted_job_is_requeued_and_resumes(world, capsys):
    pytest.importorskip("submitit")
    wd = workdir(world, "slurm")
    # Slurm's warning before a preemption or the time limit is SIGUSR2 to the job's submitit process.
    preempt = SignalWhen(wd / "models" / "b" / "fold1" / "last.pt", "b", 1, str(wd), signal.SIGUSR2)
    rc = run("train-all", "--config", world.cfg, "--workdir", wd, "--backend", "slurm", "--slurm-executor", "local",
             "--models", "a,b", "--slurm-time", "30")
    out = capsys.readouterr().out
    preempt.join(5)
    assert rc == 0 and preempt.sent_to is not None, out
    assert "submitted a job array of 4" in out and "b fold 1 was requeued 1 time(s)" in out
    assert_resumed((wd / "models" / "b" / "fold1" / "train.out").read_text(), "b", 1)
    assert (wd / "jobs" / "slurm").is_dir()  # submitit's pickles and logs, in the work dir
    check_outputs_intact(wd / "models")
    assert_same_runs(wd, world.ref)

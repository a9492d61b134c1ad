"""``camid bench --only backends``: the job backends of ``train-all`` on a tiny config (camid_tiny
at 32 px, 3 epochs of one step): seconds from submitting one job to its first training step (and
to its process starting), and jobs/hour for 2 runs x 2 folds, for the local queue, Ray (a local
instance) and submitit's LocalExecutor. Run only when asked for: it needs ray and submitit, and
minutes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..errors import JobError
from .common import Row

BACKEND_RUNS = {"local": [], "ray": ["--backend", "ray"],
                "submitit-local": ["--backend", "slurm", "--slurm-executor", "local"]}
_SUBMITTED = {"local": "start ", "ray": "submitted ", "submitit-local": "submitted "}
_FIRST_STEP = re.compile(r"fold \d+ on cpu: \d+ epochs")  # the trainer's line just before its first step
_PROCESS = "[camid node] "  # ray and slurm jobs: written just before the job's process starts


class _Timeline:
    """When the first job's process started and took its first training step: seen in the
    driver's output (read line by line; the local queue streams its one job there) or in a
    job's log (polled every 20 ms), in ``time.time()`` seconds."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.seen: dict[str, float] = {}
        self.lines: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.poller.start()

    def line(self, text: str, at: float) -> None:
        self.lines.append((at, text))
        if _FIRST_STEP.search(text):
            self.seen.setdefault("step", at)

    def _poll(self) -> None:
        from ..train.rundir import RunDir
        from ..workspace import Workspace

        ws = Workspace(self.workdir, self.workdir)
        while not self.done.is_set():
            now = time.time()
            for log in (RunDir(d).job_log for run in ("a", "b") for d in ws.fold_dirs(run).values()):
                try:
                    text = log.read_text(errors="replace")
                except FileNotFoundError:
                    continue
                if _PROCESS in text:
                    self.seen.setdefault("process", now)
                if _FIRST_STEP.search(text):
                    self.seen.setdefault("step", now)
            time.sleep(0.02)


def _camid_line(args: Sequence[str], env: dict[str, str], timeline: _Timeline) -> tuple[int, float]:
    """Run ``camid ARGS``, feeding its output to ``timeline``; (exit code, seconds)."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "camid.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    if proc.stdout is None:  # stdout=PIPE always gives one
        raise JobError(f"camid {' '.join(args)}: no output pipe")
    for text in proc.stdout:
        timeline.line(text, time.time())
    proc.wait()
    timeline.done.set()
    timeline.poller.join()
    return proc.returncode, time.time() - t0


def _tiny_world(root: Path, env: dict[str, str]) -> tuple[Path, Path]:
    data = root / "data"
    subprocess.run([sys.executable, "-m", "camid.cli", "simulate", str(data), "--n-classes", "3",
                    "--train-per-class", "3", "--test-per-class", "2", "--width", "128", "--height", "96",
                    "--test-crop", "32", "--workers", "1"], check=True, env=env, stdout=subprocess.DEVNULL)
    train = {"input_size": 32, "batch_size": 8, "epochs": 3, "steps_per_epoch": 1, "lr": 0.002, "keep_top": 1,
             "val_crop": 32, "num_workers": 0, "orientation": "flips"}
    models = [{"backbone": "camid_tiny", "name": r, "dropout": 0.0} for r in ("a", "b")]
    configs = []
    for name, folds in (("one", {"mode": "holdout", "seed": 1}), ("grid", {"n_folds": 2, "seed": 1})):
        cfg = {"name": name, "data_dir": str(data), "device": "cpu", "seed": 7, "folds": folds,
               "models": models[:1] if name == "one" else models, "train": train}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        configs.append(path)
    return configs[0], configs[1]


def bench_backends(quick: bool, root: Path, reps: int = 3) -> list[Row]:
    """Scheduling overhead per job and jobs/hour of the three backends on the tiny config."""
    import statistics

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    one, grid = _tiny_world(root, env)
    reps = 1 if quick else reps
    rows: list[Row] = []
    base: dict[str, float] = {}
    for backend, flags in BACKEND_RUNS.items():
        overhead, process, starts = [], [], []
        for rep in range(reps):
            wd = root / f"{backend}-one-{rep}"
            subprocess.run([sys.executable, "-m", "camid.cli", "folds", "--config", str(one), "--workdir", str(wd)],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            tl = _Timeline(wd)
            t0 = time.time()
            rc, _ = _camid_line(["train-all", "--config", str(one), "--workdir", str(wd), *flags], env, tl)
            submitted = next(at for at, text in tl.lines if f"] {_SUBMITTED[backend]}" in text)
            step = tl.seen.get("step")
            if rc or step is None:
                raise RuntimeError(f"{backend}: train-all failed:\n" + "".join(t for _, t in tl.lines[-20:]))
            overhead.append(step - submitted)
            process.append(tl.seen.get("process", submitted) - submitted)
            starts.append(submitted - t0)
        base.setdefault("local", statistics.median(overhead))
        ratio = base["local"] / statistics.median(overhead) if backend != "local" else None
        rows.append(Row("backends", f"submit to first training step, one job, {backend}", "local queue",
                        base["local"] if backend != "local" else None, statistics.median(overhead), "s", ratio,
                        f"median of {reps}: {', '.join(f'{v:.1f}' for v in overhead)} s; of which submit to the "
                        f"job's process: {statistics.median(process):.1f} s; the command's own start before "
                        f"submitting: {statistics.median(starts):.1f} s"))
    for backend, flags in BACKEND_RUNS.items():
        wd = root / f"{backend}-grid"
        subprocess.run([sys.executable, "-m", "camid.cli", "folds", "--config", str(grid), "--workdir", str(wd)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        tl = _Timeline(wd)
        rc, seconds = _camid_line(["train-all", "--config", str(grid), "--workdir", str(wd), *flags], env, tl)
        if rc:
            raise RuntimeError(f"{backend}: train-all failed:\n" + "".join(t for _, t in tl.lines[-20:]))
        submitted = next(at for at, text in tl.lines if f"] {_SUBMITTED[backend]}" in text)
        last = max(at for at, text in tl.lines if "] finished " in text)
        rate = 4 / seconds * 3600
        base.setdefault("local-rate", rate)
        rows.append(Row("backends", f"jobs/hour, 2 runs x 2 folds, {backend}", "local queue",
                        base["local-rate"] if backend != "local" else None, rate, "jobs/h",
                        rate / base["local-rate"] if backend != "local" else None,
                        f"{seconds:.0f} s for the command; {last - submitted:.0f} s from submission to the last job "
                        f"done ({4 / (last - submitted) * 3600:.0f} jobs/h)"))
    return rows

"""Where ``train-all`` and ``predict`` jobs run: ``--backend local|ray|slurm``.

A job is one ``camid`` process: ``camid train --model RUN --fold K --resume`` for a (run, fold),
``camid predict --models RUN`` for a run. It is the same argv whatever runs it, so a job killed
with its GPU, its node or by a preemption is started again and continues from ``last.pt``.
The engines, each a thin adapter with ``run(jobs, target, options, stage)`` returning the
failures:

- ``local`` (``backends.local``): ``camid.jobs.queue``, the subprocess queue over this
  machine's GPUs. It imports neither ray nor submitit.
- ``ray`` (``backends.ray``): one Ray task per job asking for ``cluster.num_gpus`` and
  ``cluster.num_cpus``; Ray reruns a job whose worker or node died (``cluster.max_retries``).
- ``slurm`` (``backends.slurm``): one Slurm job array through submitit; a job that reaches its
  time limit or is preempted is requeued.

What runs on the node (the job's log, the storage modes) is ``backends.node``.
"""
from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...config import ClusterConfig, Config, check_cluster
from ...util.log import stage_log

BACKENDS = ("local", "ray", "slurm")
Storage = Literal["shared", "copy"]
TAIL_LINES = 15  # lines of a failed job's log shown with the failure


@dataclass(frozen=True)
class CamidJob:
    """One job. Paths are relative to the work dir, so they mean the same on every node."""

    name: str  # shown in messages, e.g. "densenet201 fold 3"
    command: str  # the camid subcommand: "train" or "predict"
    args: tuple[str, ...]  # its options, without --config/--workdir/--data and the device
    gpu_args: tuple[str, ...]  # how it is told to use the GPU(s) it was given
    cpu_args: tuple[str, ...]  # ...or to run on the CPU
    log: str  # where its output goes
    inputs: tuple[str, ...] = ()  # files and folders it reads from the work dir (storage copy: shipped)
    outputs: tuple[str, ...] = ()  # files and folders it writes (storage copy: brought back)
    commit: str | None = None  # the output written last and removed first: while missing, not complete
    checkpoint: str | None = None  # rewritten whenever there is new state to resume from (storage copy: synced)
    ddp: bool = False  # given several GPUs, it runs under torchrun, one process per GPU


@dataclass(frozen=True)
class Target:
    """What all jobs share, as the driver sees it."""

    config: str  # the config file as given (local jobs read it)
    config_text: str  # its text (ray and slurm jobs get a copy on their node)
    workdir: Path  # as given
    data: str | None  # --data as given (None: the config's data_dir)
    data_dir: Path  # the data folder the config and --data resolve to
    jobs_dir: Path  # the backend's own files (Workspace.backend_dir)


@dataclass
class Options(ClusterConfig):
    """Where and how the jobs run: the config's ``cluster`` section (its fields and defaults) resolved
    for the config, with the command line on top (``from_config``), plus the local backend's options."""

    num_cpus: int = field(kw_only=True)  # per job: cluster.num_cpus, else the DataLoader workers + the trainer
    backend: str = "local"
    gpus: tuple[str, ...] = ()  # local: GPU ids (none: the CPU)
    ddp: bool = False  # local: one job at a time over all gpus

    @classmethod
    def from_config(cls, cfg: Config, backend: str = "local", gpus: Sequence[str] = (), ddp: bool = False,
                    **overrides: Any) -> Options:
        """``cfg.cluster`` with ``overrides`` (None: keep the config's value) on top, validated; a
        CPU config asks for no GPU, whatever the section says."""
        values = {**asdict(cfg.cluster), **{k: v for k, v in overrides.items() if v is not None}}
        check_cluster(ClusterConfig(**values), "command line / cluster")
        if cfg.device == "cpu":
            values.update(num_gpus=0.0, slurm_gpus_per_job=0)
        values["num_cpus"] = values["num_cpus"] or cfg.train.num_workers + 1
        return cls(**values, backend=backend, gpus=tuple(gpus), ddp=ddp)


Failure = tuple[str, int | str]  # (job name, exit code or what happened)


def run(jobs: Sequence[CamidJob], target: Target, options: Options, stage: str) -> list[Failure]:
    """Run every job on ``options.backend``; a failed job is reported and the others go on.
    Only the chosen adapter is imported (``local`` never imports ray or submitit)."""
    if options.backend not in BACKENDS:
        raise ValueError(f"unknown backend {options.backend!r}; choose from {BACKENDS}")
    adapter = importlib.import_module(f"{__name__}.{options.backend}")
    if not jobs:
        return []
    failed: list[Failure] = adapter.run(list(jobs), target, options, stage)
    return failed


def argv(job: CamidJob, config: str, workdir: str, data: str | None, gpu: bool, nproc: int = 1) -> list[str]:
    """The job's command line: the same for every backend."""
    launcher = [sys.executable]
    if job.ddp and nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = launcher + ["-m", "camid.cli", job.command, "--config", config, "--workdir", workdir,
                      *job.args, *(job.gpu_args if gpu else job.cpu_args)]
    return cmd + (["--data", data] if data else [])


class Progress:
    """One line per job start, finish and failure, with its node and the live counts."""

    def __init__(self, stage: str, names: Sequence[str]):
        self.stage = stage
        self.submitted = time.time()
        self.queued = list(names)
        self.running: dict[str, float] = {}  # name -> start time
        self.done = 0
        self.failed: list[Failure] = []
        self.first_start: dict[str, float] = {}  # seconds from submission to the first start, by job

    def counts(self) -> str:
        text = f"{self.done} done, {len(self.running)} running, {len(self.queued)} queued"
        return text + (f", {len(self.failed)} failed" if self.failed else "")

    def started(self, name: str, node: str, attempt: int = 1, at: float | None = None) -> None:
        at = time.time() if at is None else at
        if name in self.queued:
            self.queued.remove(name)
        self.running[name] = at
        if attempt <= 1:
            self.first_start.setdefault(name, at - self.submitted)
            stage_log(self.stage, f"start {name} on {node} ({at - self.submitted:.1f} s after submission); "
                                  f"{self.counts()}")
        else:
            stage_log(self.stage, f"restart {name} on {node} (attempt {attempt}): the previous one was killed; "
                                  f"it resumes from its last checkpoint; {self.counts()}")

    def finished(self, name: str, node: str) -> None:
        t0 = self.running.pop(name, None)
        self._unqueue(name)
        self.done += 1
        took = f" in {time.time() - t0:.1f} s" if t0 is not None else ""
        stage_log(self.stage, f"finished {name} on {node}{took}; {self.counts()}")

    def failure(self, name: str, node: str, reason: int | str, log: str, tail: str = "") -> None:
        self.running.pop(name, None)
        self._unqueue(name)
        self.failed.append((name, reason))
        what = f"exit {reason}" if isinstance(reason, int) else reason
        stage_log(self.stage, f"FAILED {name} on {node} ({what}); see {log}; {self.counts()}")
        for line in tail.rstrip().splitlines()[-TAIL_LINES:]:
            print(f"    | {line}", flush=True)

    def _unqueue(self, name: str) -> None:
        if name in self.queued:
            self.queued.remove(name)

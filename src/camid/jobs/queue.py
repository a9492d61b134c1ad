"""A small GPU job queue: one subprocess per slot (a GPU id, a group of ids for DDP, or ``cpu``).

Used by ``train-all`` and ``predict``. Jobs are separate processes so a crash in one
(out of memory, a bad file) is reported and the queue goes on.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..util.log import stage_log

POLL_S = 0.5  # how often finished jobs are collected


@dataclass(frozen=True)
class Job:
    name: str  # shown in messages, e.g. "densenet201 fold 3"
    command: Callable[[str], list[str]]  # slot -> argv
    log: Path | None = None  # where its output goes when several jobs run at once


def slot_env(slot: str) -> dict[str, str]:
    env = dict(os.environ)
    if slot != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = slot
    return env


def run_queue(jobs: Sequence[Job], slots: Sequence[str], stage: str) -> list[tuple[str, int]]:
    """Run every job, at most one per slot at a time; return (name, exit code) of the failures."""
    queue, failed = list(jobs), []
    running: dict[str, tuple[subprocess.Popen, Job, IO[str] | None]] = {}
    stream = len(slots) == 1  # a single slot: show the job's own progress bars
    while queue or running:
        for slot in slots:
            if slot not in running and queue:
                running[slot] = _launch(queue.pop(0), slot, stream, stage)
        time.sleep(POLL_S)
        for slot, (proc, job, log) in list(running.items()):
            if proc.poll() is None:
                continue
            if log is not None:
                log.close()
            del running[slot]
            if proc.returncode:
                failed.append((job.name, proc.returncode))
                where = "its output above" if log is None else job.log
                stage_log(stage, f"FAILED {job.name} (exit {proc.returncode}); see {where}")
            else:
                stage_log(stage, f"finished {job.name}")
    return failed


def _die_with_parent() -> None:
    """Runs in the child before exec (Linux): SIGKILL it when the queue process dies, so a
    killed `train-all` never leaves a trainer running that a re-run would race on the same folder."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# preexec_fn of every job process, here and on the nodes of the ray and slurm backends (backends.node)
DIE_WITH_PARENT = _die_with_parent if sys.platform.startswith("linux") else None


def _launch(job: Job, slot: str, stream: bool, stage: str):
    stage_log(stage, f"start {job.name} on {'GPU ' + slot if slot != 'cpu' else 'cpu'}")
    cmd, env = job.command(slot), slot_env(slot)
    if stream or job.log is None:
        return subprocess.Popen(cmd, env=env, preexec_fn=DIE_WITH_PARENT), job, None
    job.log.parent.mkdir(parents=True, exist_ok=True)
    log = open(job.log, "a")  # noqa: SIM115 - open while the job runs; run_queue closes it
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=DIE_WITH_PARENT), job, log

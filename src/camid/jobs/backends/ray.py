"""``--backend ray``: one Ray task per job.

Each task asks for ``cluster.num_gpus`` GPUs (fractions share one GPU between small jobs;
Ray sets ``CUDA_VISIBLE_DEVICES``) and ``cluster.num_cpus`` CPUs, runs the job's ``camid``
process on its node (``backends.node``) and returns its exit code, node and log tail. A task
whose worker process or node dies is rerun by Ray (``max_retries``); the job's argv has
``--resume``, so the rerun continues from ``last.pt`` and never starts over while a checkpoint
exists. A job that exits with an error is not rerun: it is reported with its log tail and the
others go on.

A small actor on the driver's node (``_Hub``, no CPU) collects the tasks' start events (node
name, attempt) and, with ``storage: copy``, serves the driver's files to the tasks and takes
their checkpoints back after every epoch, so a job rerun on another node resumes from the
driver's copy. The driver must then run on a node of the Ray cluster.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ...errors import UsageError
from ...util.archive import Sent, pack, unpack
from ...util.log import stage_log
from . import CamidJob, Failure, Options, Progress, Target, node

POLL_S = 0.5


@ray.remote(num_cpus=0)
class _Hub:
    """Lives on the driver's node: start events, and the driver's work dir for storage copy."""

    def __init__(self, workdir: str):
        self.workdir = Path(workdir)
        self.events: list[tuple[str, str, int, float]] = []
        self.attempts: dict[str, int] = {}

    def started(self, name: str, node_name: str, at: float) -> int:
        attempt = self.attempts.get(name, 0) + 1
        self.attempts[name] = attempt
        self.events.append((name, node_name, attempt, at))
        return attempt

    def drain(self) -> list[tuple[str, str, int, float]]:
        events, self.events = self.events, []
        return events

    def fetch(self, paths: Sequence[str]) -> bytes:
        return pack(self.workdir, paths)

    def store(self, data: bytes) -> int:
        """A running job's new checkpoint: written file by file (atomically) into the driver's
        copy of its run folder, which then resumes like a run interrupted on this machine."""
        return len(unpack(self.workdir, data))


def _wait(ref: Any) -> Any:
    """``ray.get`` from a helper thread: called in a task's own thread, it lends the task's CPUs to
    the next queued task while it waits, which then runs alongside it (oversubscribed) for good."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(ray.get(ref)), daemon=True)
    thread.start()
    thread.join()
    if not box:
        raise RuntimeError("a call to the driver's node failed (see the Ray logs)")
    return box[0]


@ray.remote
def _task(nj: node.NodeJob, hub: Any) -> dict[str, Any]:
    name, started = node.node_name(), time.time()
    attempt = _wait(hub.started.remote(nj.job.name, name, started))
    workdir = nj.local_workdir()
    copy = nj.storage == "copy"
    sync = None
    if copy:
        node.clear_outputs(nj, workdir)
        unpack(workdir, _wait(hub.fetch.remote([*nj.job.inputs, *nj.job.outputs])))
        if nj.job.checkpoint:
            sync = _Sync(nj, workdir, hub, nj.job.checkpoint)
    rc = node.execute(nj, workdir, tick=sync)
    out: dict[str, Any] = {"rc": rc, "node": name, "attempt": attempt, "tail": node.tail(workdir / nj.job.log),
                           "started": started, "seconds": time.time() - started}
    if copy:
        if sync is not None:
            sync.join()
        # All of it when it worked; else what there is (the log, the last checkpoint) without the marker.
        out["pack"] = pack(workdir, nj.job.outputs, skip=() if rc == 0 or nj.job.commit is None else (nj.job.commit,))
        out["folders"] = [p for p in nj.job.outputs if (workdir / p).is_dir()]
        node.clear_outputs(nj, workdir)
    return out


class _Sync:
    """storage copy: after every new checkpoint, send the job's changed files to the driver."""

    def __init__(self, nj: node.NodeJob, workdir: Path, hub: Any, checkpoint: str):
        self.nj, self.workdir, self.hub, self.checkpoint = nj, workdir, hub, checkpoint
        self.sent: Sent = {}
        self.seen: int | None = None
        self.thread: threading.Thread | None = None

    def __call__(self) -> None:
        try:
            mtime: int | None = (self.workdir / self.checkpoint).stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self.seen or (self.thread is not None and self.thread.is_alive()):
            return
        self.seen = mtime
        skip = (self.nj.job.commit,) if self.nj.job.commit else ()
        data = pack(self.workdir, self.nj.job.outputs, skip=skip, since=self.sent)
        if data:  # sent in the background (which also keeps ray.get off the task's thread, see _wait)
            self.thread = threading.Thread(target=lambda: ray.get(self.hub.store.remote(data)), daemon=True)
            self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _connect(address: str | None) -> bool:
    """Join ``address`` (``auto``: the running cluster), or start a local instance; True when this
    call started or joined it (and so shuts it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    ray.init(**kwargs)
    resources = ray.cluster_resources()
    stage_log("ray", f"{'joined ' + address if address else 'started a local Ray instance'}: "
                     f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s), {resources.get('CPU', 0):g} CPU(s), "
                     f"{resources.get('GPU', 0):g} GPU(s)")
    return True


def _check_fits(options: Options) -> None:
    """A task no node can hold would wait forever: say so now."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= options.num_cpus and r.get("GPU", 0) >= options.num_gpus for r in nodes):
        have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes) or "none"
        raise UsageError(f"no node of the Ray cluster has {options.num_cpus} CPU(s) and {options.num_gpus:g} GPU(s) "
                         f"for a job (nodes: {have}); lower cluster.num_cpus / cluster.num_gpus, use device: cpu, "
                         "or (autoscaling) start a node that fits first")


def run(jobs: Sequence[CamidJob], target: Target, options: Options, stage: str) -> list[Failure]:
    owned = _connect(options.ray_address)
    pending: dict[Any, CamidJob] = {}
    try:
        _check_fits(options)
        workdir = str(target.workdir.absolute())
        here = ray.get_runtime_context().get_node_id()
        hub = _Hub.options(  # type: ignore[attr-defined]  # ray.remote turns the class into an ActorClass
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(workdir)
        resources = {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus,
                     "max_retries": options.max_retries, "retry_exceptions": False}
        progress = Progress(stage, [j.name for j in jobs])
        for job in jobs:
            nj = node.NodeJob(job, target.config_text, workdir, str(target.data_dir.absolute()), os.getcwd(),
                              options.num_gpus, options.num_cpus, options.storage, options.scratch_dir, here)
            pending[_task.options(name=job.name, **resources).remote(nj, hub)] = job
        stage_log(stage, f"submitted {len(jobs)} job(s) to Ray ({options.num_gpus:g} GPU, {options.num_cpus} CPU "
                         f"each; storage {options.storage}; up to {options.max_retries} rerun(s) of a killed job)")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            # Starts and ends in the order they happened (a job may start and end within one poll).
            events: list[tuple[float, Callable[[], None]]] = []
            for name, where, attempt, at in ray.get(hub.drain.remote()):
                events.append((at, partial(progress.started, name, where, attempt, at)))
            for ref in ready:
                out = _result(ref)
                end = out["started"] + out["seconds"] if isinstance(out, dict) else time.time()
                events.append((end, partial(_collect, out, pending.pop(ref), target, progress)))
            for _, report in sorted(events, key=lambda e: e[0]):
                report()
        return progress.failed
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if owned:
            ray.shutdown()


def _result(ref: Any) -> dict[str, Any] | ray.exceptions.RayError:
    try:
        out: dict[str, Any] = ray.get(ref)
    except ray.exceptions.RayError as exc:  # its worker or node died more often than max_retries
        return exc
    return out


def _collect(out: dict[str, Any] | ray.exceptions.RayError, job: CamidJob, target: Target, progress: Progress) -> None:
    log = target.workdir / job.log
    if isinstance(out, ray.exceptions.RayError):
        first = (str(out).strip().splitlines() or [type(out).__name__])[0]
        progress.failure(job.name, "?", f"{type(out).__name__}: {first}", str(log), node.tail(log))
        return
    if out.get("pack"):  # storage copy: the outputs come home, the marker last
        ok = out["rc"] == 0
        unpack(target.workdir, out["pack"], last=job.commit if ok else None, prune=out["folders"] if ok else ())
    if out["rc"]:
        progress.failure(job.name, out["node"], out["rc"], str(log), out["tail"])
    else:
        progress.finished(job.name, out["node"])

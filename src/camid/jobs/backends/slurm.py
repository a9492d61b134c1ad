"""``--backend slurm``: one Slurm job array over the jobs, through submitit.

Each array job runs the job's ``camid`` process (``backends.node``) with
``cluster.slurm_gpus_per_job`` GPUs and ``cluster.num_cpus`` CPUs within
``cluster.slurm_time_min``. Slurm signals a job shortly before its time limit or when it is
preempted; submitit then calls ``_NodeCall.checkpoint``, which hands back the same job
(``DelayedSubmission``), and requeues it; the requeued job's ``--resume`` continues from
``last.pt``. Slurm needs the work dir on a shared filesystem (``storage: shared``);
submitit's pickles and logs go to ``jobs/slurm/`` in it.

``cluster.slurm_executor: local`` runs the same code through submitit's ``LocalExecutor``
(processes on this machine, the same pickles, signals and requeues), which is how the tests
run it without a cluster.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from ...errors import UsageError
from ...util.log import stage_log
from . import CamidJob, Failure, Options, Progress, Target, node

POLL_S = {"local": 1.0, "slurm": 15.0}  # sacct is not to be asked every second


class _NodeCall(Checkpointable):
    """What each array job runs; picklable, so submitit can requeue it as it is."""

    def __init__(self, nj: node.NodeJob):
        self.nj = nj
        self.attempt = 1

    def __call__(self) -> dict[str, Any]:
        workdir = self.nj.local_workdir()
        rc = node.execute(self.nj, workdir)
        return {"rc": rc, "node": node.node_name(), "attempt": self.attempt,
                "tail": node.tail(workdir / self.nj.job.log)}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Time limit or preemption: the same job again; its --resume continues from last.pt."""
        self.attempt += 1
        return DelayedSubmission(self, *args, **kwargs)


def executor(target: Target, options: Options) -> Any:
    ex = submitit.AutoExecutor(folder=target.jobs_dir.absolute(), cluster=options.slurm_executor,
                               slurm_max_num_timeout=options.slurm_max_requeues,
                               local_max_num_timeout=options.slurm_max_requeues)
    params: dict[str, Any] = {"name": "camid", "timeout_min": options.slurm_time_min, "nodes": 1,
                              "tasks_per_node": 1, "cpus_per_task": options.num_cpus,
                              "gpus_per_node": options.slurm_gpus_per_job, "mem_gb": options.slurm_mem_gb,
                              "slurm_partition": options.slurm_partition,
                              "slurm_array_parallelism": options.slurm_array_parallelism}
    if options.slurm_setup:
        params[f"{options.slurm_executor}_setup"] = list(options.slurm_setup)
    ex.update_parameters(**params)
    return ex


def run(jobs: Sequence[CamidJob], target: Target, options: Options, stage: str) -> list[Failure]:
    if options.storage != "shared":
        raise UsageError("--backend slurm needs the work dir on a shared filesystem (cluster.storage: shared)")
    workdir = str(target.workdir.absolute())
    calls = [_NodeCall(node.NodeJob(j, target.config_text, workdir, str(target.data_dir.absolute()), os.getcwd(),
                                    options.slurm_gpus_per_job, options.num_cpus)) for j in jobs]
    ex = executor(target, options)
    submitted = ex.submit_array(calls)
    where = options.slurm_partition or "the default partition"
    stage_log(stage, f"submitted a job array of {len(jobs)} to {options.slurm_executor} ({where}; "
                     f"{options.slurm_gpus_per_job} GPU, {options.num_cpus} CPU, {options.slurm_time_min} min each; "
                     f"job ids {submitted[0].job_id}..., logs in {target.jobs_dir})")
    progress = Progress(stage, [j.name for j in jobs])
    pending = dict(zip(submitted, jobs, strict=True))
    try:
        while pending:
            time.sleep(POLL_S.get(options.slurm_executor, 15.0))
            for sj, job in list(pending.items()):
                if job.name in progress.queued and sj.state in ("RUNNING", "COMPLETING", "FINISHED", "COMPLETED"):
                    progress.started(job.name, _node(sj))
                if sj.done():
                    del pending[sj]
                    _collect(sj, job, target, progress)
    except BaseException:
        for sj in pending:
            sj.cancel(check=False)
        raise
    return progress.failed


def _node(sj: Any) -> str:
    try:
        found = sj.get_info().get("NodeList")
    except Exception:  # noqa: BLE001 - informative only
        found = None
    return str(found) if found else (node.node_name() if isinstance(sj, submitit.LocalJob) else "?")


def _collect(sj: Any, job: CamidJob, target: Target, progress: Progress) -> None:
    log = target.workdir / job.log
    try:
        out = sj.result()
    except Exception as exc:  # noqa: BLE001 - submitit re-raises whatever ended the job
        text = str(exc).strip()
        progress.failure(job.name, _node(sj), f"{type(exc).__name__} (job {sj.job_id})", str(log),
                         text or node.tail(Path(sj.paths.stderr)))
        return
    if out["attempt"] > 1:
        stage_log(progress.stage, f"{job.name} was requeued {out['attempt'] - 1} time(s) and resumed each time")
    if out["rc"]:
        progress.failure(job.name, out["node"], out["rc"], str(log), out["tail"])
    else:
        progress.finished(job.name, out["node"])

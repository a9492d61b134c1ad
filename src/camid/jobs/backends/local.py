"""``--backend local`` (the default): the jobs go through ``camid.jobs.queue``, one per GPU of
this machine at a time (or one at a time on the CPU; ``--ddp``: each over all GPUs)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from ..queue import Job, run_queue
from . import CamidJob, Failure, Options, Target, argv


def slots(options: Options) -> list[str]:
    found = list(options.gpus) or ["cpu"]
    if options.ddp and len(found) > 1:
        found = [",".join(found)]  # one slot holding every GPU: a DDP job per turn
    return found


def run(jobs: Sequence[CamidJob], target: Target, options: Options, stage: str) -> list[Failure]:
    queue = [Job(j.name, _command(j, target), target.workdir / j.log) for j in jobs]
    failed: list[Failure] = list(run_queue(queue, slots(options), stage))
    return failed


def _command(job: CamidJob, target: Target) -> Callable[[str], list[str]]:
    def build(slot: str) -> list[str]:
        return argv(job, target.config, str(target.workdir), target.data, slot != "cpu", len(slot.split(",")))
    return build

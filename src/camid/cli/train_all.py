"""`camid train-all`: every (backbone, fold) job of a config, on this machine's GPUs (one job
per GPU at a time), on a Ray cluster or as a Slurm job array (``--backend``).

Jobs run as separate `camid train --resume` processes, so a crash in one (out of memory,
a bad file) is reported and the others go on; finished jobs (``done.json`` with the same
training settings) are skipped, interrupted ones resume from ``last.pt``.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..data.folds import fold_ids, read_folds
from ..data.layout import resolve_classes
from ..errors import JobError
from ..jobs import backends
from ..jobs.backends import CamidJob
from ..models.weights import require_weights
from ..train.rundir import RunDir
from ..train.trainer import is_done
from ..util.log import stage_log
from ..workspace import Workspace
from .common import add_backend_arguments, add_job_arguments, backend_options, backend_target, names, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, "local: comma-separated GPU ids, e.g. 0,1,2,3 (default: CPU, one job at a time)")
    parser.add_argument("--ddp", action="store_true",
                        help="local: train each job on all --gpus at once with torch DDP (torchrun), one job at a time")
    add_backend_arguments(parser)


def train_job(ws: Workspace, run: str, fold: int) -> CamidJob:
    """The (run, fold) job: ``camid train --model RUN --fold K --resume --round N``; a later
    round reads the previous round's pseudo-labels."""
    rd = RunDir(ws.run_dir(run, fold))

    def rel(p: Path) -> str:
        return p.relative_to(ws.root).as_posix()

    pseudo = [ws.pseudo_labels(ws.round - 1)] if ws.round > 1 else []
    return CamidJob(name=f"{run} fold {fold}", command="train",
                    args=("--model", run, "--fold", str(fold), "--resume", "--round", str(ws.round)),
                    gpu_args=("--device", "cuda"), cpu_args=("--device", "cpu"), log=rel(rd.job_log),
                    inputs=(rel(ws.folds_csv), *map(rel, pseudo), rel(rd.path)), outputs=(rel(rd.path),),
                    commit=rel(rd.done_path), checkpoint=rel(rd.last_path), ddp=True)


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    wanted = names(args.models) or [m.run_name for m in cfg.models]
    # only the runs this command starts: a run left out with --models must not block the others
    require_weights(replace(cfg, models=[m for m in cfg.models if m.run_name in wanted]), args.config)
    options = backend_options(args, cfg)
    folds = fold_ids(read_folds(ws.folds_csv, resolve_classes(cfg, ws.data_dir)))
    pairs = [(run, k) for run in wanted for k in folds]
    todo = [(r, k) for r, k in pairs if not is_done(ws, cfg, r, k)]
    stage_log("train-all", f"{len(pairs)} job(s), {len(pairs) - len(todo)} already finished, {len(todo)} to run")
    jobs = [train_job(ws, r, k) for r, k in todo]
    failed = backends.run(jobs, backend_target(args, cfg, ws, options.backend), options, "train-all")
    if failed:
        raise JobError(f"{len(failed)} job(s) failed: {failed}")
    stage_log("train-all", f"all {len(pairs)} job(s) done; checkpoints under {ws.models}")
    return 0

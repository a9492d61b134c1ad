"""`camid train-all`: every (backbone, fold) job of a config, one job per GPU at a time.

Jobs run as separate `camid train` processes, so a crash in one (out of memory,
a bad file) is reported and the queue goes on; finished jobs (``done.json`` with
the same config digest) are skipped, interrupted ones resume from ``last.pt``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .data import read_folds, fold_ids, resolve_classes
from .errors import CamidError
from .io_utils import stage_log
from .train import is_done
from .workspace import add_common_arguments, resolve

POLL_S = 0.5  # how often finished jobs are collected


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids, e.g. 0,1,2,3 (default: CPU, one job at a time)")
    parser.add_argument("--models", default="", help="comma-separated run names (default: all in the config)")
    parser.add_argument("--ddp", action="store_true",
                        help="train each job on all --gpus at once with torch DDP (torchrun), one job at a time")


def _job_cmd(args: argparse.Namespace, run: str, fold: int, device: str, nproc: int = 1) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = launcher + ["-m", "camid.cli", "train", "--config", args.config, "--workdir", args.workdir,
           "--model", run, "--fold", str(fold), "--device", device, "--resume"]
    return cmd + (["--data", args.data] if args.data else [])


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    folds = fold_ids(read_folds(ws.folds_csv, resolve_classes(cfg, ws.data_dir)))
    wanted = [m for m in args.models.split(",") if m] or [m.run_name for m in cfg.models]
    jobs = [(run, k) for run in wanted for k in folds]
    todo = [(r, k) for r, k in jobs if not is_done(ws, cfg, r, k)]
    stage_log("train-all", f"{len(jobs)} job(s), {len(jobs) - len(todo)} already finished, {len(todo)} to run")
    slots = [g for g in args.gpus.split(",") if g != ""] or ["cpu"]
    if args.ddp and len(slots) > 1:
        slots = [",".join(slots)]  # one slot holding every GPU: a DDP job per turn
    running: dict[str, tuple[subprocess.Popen, tuple[str, int], object]] = {}
    failed: list[tuple[str, int, int]] = []
    queue = list(todo)
    while queue or running:
        for slot in slots:
            if slot not in running and queue:
                running[slot] = _launch(args, ws, slot, queue.pop(0), stream=len(slots) == 1)
        time.sleep(POLL_S)
        for slot, (proc, (run, k), log) in list(running.items()):
            if proc.poll() is None:
                continue
            if log is not None:
                log.close()
            del running[slot]
            if proc.returncode:
                failed.append((run, k, proc.returncode))
                where = "its output above" if log is None else ws.run_dir(run, k) / "train.out"
                stage_log("train-all", f"FAILED {run} fold {k} (exit {proc.returncode}); see {where}")
            else:
                stage_log("train-all", f"finished {run} fold {k}")
    if failed:
        raise CamidError(f"{len(failed)} job(s) failed: {failed}")
    stage_log("train-all", f"all {len(jobs)} job(s) done; checkpoints under {ws.models}")
    return 0


def _launch(args: argparse.Namespace, ws, slot: str, job: tuple[str, int], stream: bool):
    run, fold = job
    env = dict(os.environ)
    device = "cpu"
    if slot != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = slot
        device = "cuda"
    nproc = len(slot.split(","))
    out_dir = ws.run_dir(run, fold)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage_log("train-all", f"start {run} fold {fold} on {slot}")
    if stream:  # a single slot: show the job's own progress bars
        return subprocess.Popen(_job_cmd(args, run, fold, device, nproc), env=env), job, None
    log = open(Path(out_dir) / "train.out", "a")
    cmd = _job_cmd(args, run, fold, device, nproc)
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), job, log

"""`camid train-all`: every (backbone, fold) job of a config, one job per GPU at a time.

Jobs run as separate `camid train` processes, so a crash in one (out of memory,
a bad file) is reported and the queue goes on; finished jobs (``done.json`` with
the same config digest) are skipped, interrupted ones resume from ``last.pt``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..data.folds import fold_ids, read_folds
from ..data.layout import resolve_classes
from ..errors import JobError
from ..train.jobs import Job, run_queue
from ..train.rundir import RunDir
from ..train.trainer import is_done
from ..util.log import stage_log
from .common import add_common_arguments, add_round_argument, names, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_round_argument(parser)
    parser.add_argument("--gpus", default="",
                        help="comma-separated GPU ids, e.g. 0,1,2,3 (default: CPU, one job at a time)")
    parser.add_argument("--models", default="", help="comma-separated run names (default: all in the config)")
    parser.add_argument("--ddp", action="store_true",
                        help="train each job on all --gpus at once with torch DDP (torchrun), one job at a time")


def _job_cmd(args: argparse.Namespace, run: str, fold: int, device: str, nproc: int = 1) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = launcher + ["-m", "camid.cli", "train", "--config", args.config, "--workdir", args.workdir,
           "--model", run, "--fold", str(fold), "--device", device, "--resume", "--round", str(args.round)]
    return cmd + (["--data", args.data] if args.data else [])


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    folds = fold_ids(read_folds(ws.folds_csv, resolve_classes(cfg, ws.data_dir)))
    wanted = names(args.models) or [m.run_name for m in cfg.models]
    pairs = [(run, k) for run in wanted for k in folds]
    todo = [(r, k) for r, k in pairs if not is_done(ws, cfg, r, k)]
    stage_log("train-all", f"{len(pairs)} job(s), {len(pairs) - len(todo)} already finished, {len(todo)} to run")
    slots = names(args.gpus) or ["cpu"]
    if args.ddp and len(slots) > 1:
        slots = [",".join(slots)]  # one slot holding every GPU: a DDP job per turn
    jobs = [Job(f"{r} fold {k}", _command(args, r, k), RunDir(ws.run_dir(r, k)).job_log) for r, k in todo]
    failed = run_queue(jobs, slots, "train-all")
    if failed:
        raise JobError(f"{len(failed)} job(s) failed: {failed}")
    stage_log("train-all", f"all {len(pairs)} job(s) done; checkpoints under {ws.models}")
    return 0


def _command(args: argparse.Namespace, run: str, fold: int) -> Callable[[str], list[str]]:
    def build(slot: str) -> list[str]:
        device = "cpu" if slot == "cpu" else "cuda"
        return _job_cmd(args, run, fold, device, len(slot.split(",")))
    return build

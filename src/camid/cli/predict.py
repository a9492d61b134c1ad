"""`camid predict`: out-of-fold and test probability tables, one per run."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..config import ModelConfig
from ..errors import JobError
from ..infer.predict import predict_runs
from ..train.jobs import Job, run_queue
from ..train.runtime import pick_device
from ..util.io import remove_stale_temps
from ..util.runtime import configure_threads
from ..workspace import Workspace
from .common import add_common_arguments, add_round_argument, names, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_round_argument(parser)
    parser.add_argument("--models", default="", help="comma-separated run names (default: all in the config)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's device)")
    parser.add_argument("--gpus", default="", help="GPU ids: with several, one run per GPU at a time (like train-all)")
    parser.add_argument("--force", action="store_true", help="recompute tables even when up to date")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    remove_stale_temps(ws.oof)  # half-written tables of a killed earlier run (live writers' are kept)
    gpus = names(args.gpus)
    wanted = names(args.models)
    runs = [cfg.model(m) for m in wanted] if wanted else cfg.models
    if len(gpus) > 1 and len(runs) > 1:
        return _queue_runs(args, ws, runs, gpus)
    device = pick_device(args.device or ("cuda:0" if gpus else cfg.device))
    configure_threads(device)
    predict_runs(cfg, ws, runs, device, args.force)
    return 0


def _queue_runs(args: argparse.Namespace, ws: Workspace, runs: Sequence[ModelConfig], gpus: list[str]) -> int:
    """Several GPUs: one `camid predict --models RUN` process per GPU at a time, as in train-all."""
    def command(run: str) -> Callable[[str], list[str]]:
        def build(slot: str) -> list[str]:
            cmd = [sys.executable, "-m", "camid.cli", "predict", "--config", args.config, "--workdir", args.workdir,
                   "--models", run, "--gpus", "0"]  # the job sees only its own GPU, as device 0
            return cmd + (["--data", args.data] if args.data else []) + (["--force"] if args.force else []) + \
                ["--round", str(args.round)]
        return build

    jobs = [Job(f"predict {m.run_name}", command(m.run_name), ws.predict_log(m.run_name)) for m in runs]
    failed = run_queue(jobs, gpus, "predict")
    if failed:
        raise JobError(f"{len(failed)} prediction job(s) failed: {failed}")
    return 0

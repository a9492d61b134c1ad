"""`camid predict`: out-of-fold and test probability tables, one per run; with several GPUs or
``--backend ray|slurm``, one job per run (blend and submission stay on this machine)."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..config import Config, ModelConfig
from ..errors import JobError, UsageError
from ..infer.predict import predict_runs
from ..infer.table import sidecar
from ..jobs import backends
from ..jobs.backends import CamidJob, Options
from ..train.rundir import RunDir
from ..train.runtime import pick_device
from ..util.io import remove_stale_temps
from ..util.log import stage_log
from ..util.runtime import configure_threads
from ..workspace import Workspace
from .common import add_backend_arguments, add_job_arguments, backend_options, backend_target, names, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, "GPU ids: with several, one run per GPU at a time (like train-all)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's device)")
    parser.add_argument("--force", action="store_true", help="recompute tables even when up to date")
    add_backend_arguments(parser)


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    remove_stale_temps(ws.oof)  # half-written tables of a killed earlier run (live writers' are kept)
    options = backend_options(args, cfg)
    gpus = names(args.gpus)
    wanted = names(args.models)
    runs = [cfg.model(m) for m in wanted] if wanted else cfg.models
    if options.backend != "local":
        return _distribute(args, cfg, ws, _trained(cfg, ws, runs), options)
    if len(gpus) > 1 and len(runs) > 1:
        return _distribute(args, cfg, ws, runs, options)
    device = pick_device(args.device or ("cuda:0" if gpus else cfg.device))
    configure_threads(device)
    predict_runs(cfg, ws, runs, device, args.force)
    return 0


def _trained(cfg: Config, ws: Workspace, runs: Sequence[ModelConfig]) -> list[ModelConfig]:
    """The runs with at least one finished fold (the others are skipped, as in one process)."""
    found = [m for m in runs if any(RunDir(d).inference_checkpoints(cfg.predict)
                                    for d in ws.fold_dirs(m.run_name).values())]
    for m in runs:
        if m not in found:
            stage_log("predict", f"{m.run_name}: no finished training run under {ws.run_root(m.run_name)}; skipped")
    if not found:
        raise UsageError(f"no trained runs to predict under {ws.models} (run `make train-all` first)")
    return found


def predict_job(cfg: Config, ws: Workspace, run: str, force: bool) -> CamidJob:
    """The (run) job: ``camid predict --models RUN``, on its GPU as device 0."""
    def rel(p: Path) -> str:
        return p.relative_to(ws.root).as_posix()

    table = ws.table(run, cfg.predict.tta)
    reads = [f for d in ws.fold_dirs(run).values() for f in RunDir(d).inference_files(cfg.predict)]
    old = [p for p in (table, sidecar(table)) if p.is_file()]  # so an up-to-date table is not recomputed
    args = ("--models", run, *(["--force"] if force else []), "--round", str(ws.round))
    return CamidJob(name=f"predict {run}", command="predict", args=args,
                    gpu_args=("--gpus", "0"), cpu_args=("--device", "cpu"), log=rel(ws.predict_log(run)),
                    inputs=tuple(rel(p) for p in (ws.folds_csv, *reads, *old)),
                    outputs=(rel(ws.predict_log(run)), rel(table), rel(sidecar(table))), commit=rel(sidecar(table)))


def _distribute(args: argparse.Namespace, cfg: Config, ws: Workspace, runs: Sequence[ModelConfig],
                options: Options) -> int:
    """One `camid predict --models RUN` job per run: local (one per GPU at a time), ray or slurm."""
    jobs = [predict_job(cfg, ws, m.run_name, args.force) for m in runs]
    failed = backends.run(jobs, backend_target(args, cfg, ws, options.backend), options, "predict")
    if failed:
        raise JobError(f"{len(failed)} prediction job(s) failed: {failed}")
    return 0

"""Options shared by the subcommands that work on a config and a work dir."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import Config, dump_config, load_config
from ..errors import ConfigError, UsageError
from ..jobs.backends import BACKENDS, Options, Target
from ..workspace import Workspace


def add_common_arguments(parser: argparse.ArgumentParser, default_config: str | None = "configs/demo.yaml") -> None:
    parser.add_argument("--config", default=default_config,
                        help=f"YAML profile (default: {default_config})")
    parser.add_argument("--data", default=None, help="data folder (default: the config's data_dir)")
    parser.add_argument("--workdir", default=".", help="folder holding models/, oof/, submissions/ (default: .)")


def add_round_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--round", type=int, default=1, metavar="N",
                        help="training round: 1 (default), or N >= 2 to train/predict/blend the runs <run>-rN on "
                             "the photos plus round N-1's pseudo-labels (camid pseudo --round N-1)")


def resolve(args: argparse.Namespace) -> tuple[Config, Workspace]:
    cfg = load_config(args.config)
    data_dir = Path(args.data or cfg.data_dir)
    if args.data:
        cfg.data_dir = str(args.data)
    round_ = int(getattr(args, "round", 1) or 1)
    if round_ < 1:
        raise UsageError(f"--round counts from 1, got {round_}")
    ws = Workspace(Path(args.workdir), data_dir, round_)
    check_stages(cfg)
    return cfg.for_round(round_, str(ws.pseudo_labels(round_ - 1))), ws


def check_stages(cfg: Config) -> None:
    """The settings whose vocabulary belongs to a later stage (blend strategies, manipulation
    names), checked whenever a command loads a profile: a typo stops `folds` or `train-all` at
    once instead of `predict` or `blend` after a night of training."""
    from ..data.manipulations import MANIPULATIONS
    from ..errors import StrategyError
    from ..level2.strategies import parse_strategy

    for key, names in (("blend.strategies", cfg.blend.strategies),
                       ("pseudo.strategy", [] if cfg.pseudo.strategy == "final" else [cfg.pseudo.strategy])):
        for name in names:
            try:
                parse_strategy(name)
            except StrategyError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    augs = cfg.predict.oof_augs
    unknown = [a for a in augs if a not in MANIPULATIONS] if augs != ["all"] else []
    if unknown:
        raise ConfigError(f"predict.oof_augs: unknown manipulation(s) {unknown}; use [all] or names from "
                          f"{', '.join(MANIPULATIONS)}")
    b = cfg.blend
    if b.weights and len(b.weights) != len(b.models):
        raise ConfigError(f"blend.weights has {len(b.weights)} entries but blend.models lists {len(b.models)} "
                          f"({b.models}); list one weight per model in blend.models")


def names(csv: str) -> list[str]:
    """``"a,b,,c"`` -> ``["a", "b", "c"]``: comma-separated option values."""
    return [n for n in csv.split(",") if n]


def workers(n: int | None) -> int:
    """``--workers`` (None: all cores), at least 1."""
    return max(1, n or os.cpu_count() or 1)


def add_job_arguments(parser: argparse.ArgumentParser, gpus_help: str) -> None:
    """The options of the commands that queue jobs (``train-all``, ``predict``): the profile,
    the round, which runs, which GPUs."""
    add_common_arguments(parser)
    add_round_argument(parser)
    parser.add_argument("--models", default="", help="comma-separated run names (default: all in the config)")
    parser.add_argument("--gpus", default="", help=gpus_help)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and the options of the ray and slurm backends (they override the config's
    ``cluster`` section)."""
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="where jobs run: local (default: this machine's --gpus), ray (a Ray cluster or a "
                             "local Ray instance), slurm (a job array through submitit)")
    parser.add_argument("--ray-address", default=None,
                        help="ray: the cluster to join ('auto': the one this node belongs to; default: "
                             "cluster.ray_address, else $RAY_ADDRESS, else a new local instance)")
    parser.add_argument("--storage", choices=("shared", "copy"), default=None,
                        help="ray: shared (the work dir is on every node at the same path) or copy (jobs work on "
                             "their node and send their outputs back); default: cluster.storage")
    parser.add_argument("--slurm-partition", default=None,
                        help="slurm: the partition (default: cluster.slurm_partition)")
    parser.add_argument("--slurm-gpus-per-job", type=int, default=None,
                        help="slurm: GPUs per job (default: cluster.slurm_gpus_per_job)")
    parser.add_argument("--slurm-time", type=int, default=None, metavar="MINUTES",
                        help="slurm: time limit per job; a job that reaches it is requeued and resumes "
                             "(default: cluster.slurm_time_min)")
    parser.add_argument("--slurm-executor", choices=("slurm", "local"), default=None,
                        help="slurm: 'local' runs the array through submitit's LocalExecutor on this machine")


def backend_options(args: argparse.Namespace, cfg: Config) -> Options:
    """The backend settings: the config's ``cluster`` section with the command line on top."""
    options = Options.from_config(cfg, args.backend, names(getattr(args, "gpus", "")), getattr(args, "ddp", False),
                                  ray_address=args.ray_address, storage=args.storage,
                                  slurm_partition=args.slurm_partition, slurm_gpus_per_job=args.slurm_gpus_per_job,
                                  slurm_time_min=args.slurm_time, slurm_executor=args.slurm_executor)
    if args.backend != "local" and options.ddp:
        raise UsageError("--ddp is for --backend local; on ray give a job several GPUs with cluster.num_gpus, "
                         "on slurm with --slurm-gpus-per-job")
    return options


def backend_target(args: argparse.Namespace, cfg: Config, ws: Workspace, backend: str) -> Target:
    """What every job of a command shares; ray and slurm jobs get the config's text."""
    text = Path(args.config).read_text(encoding="utf-8") if args.config else dump_config(cfg)
    return Target(config=args.config, config_text=text,
                  workdir=Path(args.workdir), data=args.data, data_dir=ws.data_dir,
                  jobs_dir=ws.backend_dir(backend))

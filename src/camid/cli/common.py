"""Options shared by the subcommands that work on a config and a work dir."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import Config, load_config
from ..errors import UsageError
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
    return cfg.for_round(round_, str(ws.pseudo_labels(round_ - 1))), ws


def names(csv: str) -> list[str]:
    """``"a,b,,c"`` -> ``["a", "b", "c"]``: comma-separated option values."""
    return [n for n in csv.split(",") if n]


def workers(n: int | None) -> int:
    """``--workers`` (None: all cores), at least 1."""
    return max(1, n or os.cpu_count() or 1)

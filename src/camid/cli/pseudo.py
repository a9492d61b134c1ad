"""`camid pseudo`: balanced pseudo-labels from a round's level 2 -> ``oof/pseudo-r<N>.csv``."""
from __future__ import annotations

import argparse

from ..level2.pseudo import make_pseudo
from .common import add_common_arguments, add_round_argument, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_round_argument(parser)
    parser.add_argument("--strategy", default=None,
                        help="level-2 strategy to take labels from (default: pseudo.strategy)")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    if args.strategy:
        cfg.pseudo.strategy = args.strategy
    make_pseudo(cfg, ws)
    return 0

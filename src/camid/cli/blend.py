"""`camid blend`: level-2 strategies over the probability tables -> ``oof/blend/<strategy>.parquet``."""
from __future__ import annotations

import argparse

from ..level2.strategies import blend
from .common import add_common_arguments, add_round_argument, names, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_round_argument(parser)
    parser.add_argument("--strategies", default=None,
                        help="comma-separated strategies (default: config blend.strategies), "
                             "e.g. gmean,rms+hungarian,pmean0.5+flow")
    parser.add_argument("--models", default=None,
                        help="comma-separated run names (default: config blend.models, else every oof/*.<tta>.parquet)")
    parser.add_argument("--tta", default=None, help="which tables (default: config blend.tta, else predict.tta)")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    blend(cfg, ws, names(args.strategies or ""), names(args.models or ""), args.tta)
    return 0

"""`camid submission`: a validated CSV per level-2 strategy, and the score table."""
from __future__ import annotations

import argparse

from ..data.layout import SOLUTION
from ..level2.submission import write_submissions
from .common import add_common_arguments, add_round_argument, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_round_argument(parser)
    parser.add_argument("--strategies", default=None,
                        help="'all' (default: every oof/blend/*.parquet), 'config' (blend.strategies) "
                             "or a comma-separated list")
    parser.add_argument("--solution", default=None,
                        help=f"solution CSV for test scores (default: DATA/{SOLUTION} when it exists)")
    parser.add_argument("--score-only", action="store_true",
                        help="print the score table without writing submissions or scores.csv")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    scores, with_test = write_submissions(cfg, ws, args.strategies, args.solution, args.score_only)
    shown = scores.drop(columns=["submission"] + ([] if with_test else ["test_score", "test_unalt", "test_manip"]))
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0

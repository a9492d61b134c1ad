"""`camid score SUB --solution SOL`: the competition metric, per class and manipulation, and a confusion PNG."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.layout import read_csv_strict, read_solution
from ..level2.metrics import format_report, plot_confusion, score_submission
from ..util.log import stage_log


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", help="submission CSV (fname,camera)")
    parser.add_argument("--solution", required=True,
                        help="solution CSV with fname, camera and optionally manipulation (none = unaltered)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class list (default: the cameras in the solution)")
    parser.add_argument("--png", default=None,
                        help="confusion-matrix PNG (default: <submission stem>.confusion.png beside it)")


def main(args: argparse.Namespace) -> int:
    sub = read_csv_strict(args.submission, "submission")
    classes = args.classes.split(",") if args.classes else None
    solution = read_solution(args.solution, classes)
    stage_log("score", f"read {args.submission} ({len(sub)} rows) and {args.solution} ({len(solution)} rows)")
    rep = score_submission(sub, solution, classes, name=str(args.submission))
    print(format_report(rep))
    png = Path(args.png) if args.png else Path(args.submission).with_suffix(".confusion.png")
    plot_confusion(rep.confusion, png, f"{Path(args.submission).name}: score {rep.score:.4f}")
    stage_log("score", f"wrote {png}")
    return 0

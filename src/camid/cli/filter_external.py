"""`camid filter-external SRC --rules R --out DIR [--truth CSV]`: keep only untouched camera originals of the
known classes; with ``--truth``, score the decisions against a pool's truth."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..data.layout import POOL_TRUTH
from ..forensics.filter_external import DEFAULT_REPORT_NAME, filter_external
from ..forensics.filter_score import load_truth, score_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="folder of scraped photos (searched recursively; "
                        "SRC/<class>/... pins the class by folder)")
    parser.add_argument("--rules", type=Path, default=Path("configs/external_rules.yaml"),
                        help="rules YAML (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True,
                        help="kept files go to OUT/<class>/; the report to OUT/" + DEFAULT_REPORT_NAME)
    parser.add_argument("--train", type=Path, metavar="DATA",
                        help="competition folder: also drop near-duplicates of DATA/train images")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--link", dest="copy", action="store_false",
                     help="hard-link kept files (default; copies when linking is impossible)")
    how.add_argument("--copy", dest="copy", action="store_true", help="copy kept files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for reading files (default: all cores, %(default)s)")
    parser.add_argument("--report", type=Path,
                        help="report CSV; re-running with the same report reuses unchanged "
                             "files' analysis (default: OUT/" + DEFAULT_REPORT_NAME + ")")
    parser.add_argument("--decode-all", action="store_true",
                        help="decode every readable JPEG, not only those passing the header "
                             "checks (slower; reports truncation and duplicates for all files)")
    parser.add_argument("--truth", type=Path, metavar="CSV",
                        help="score the decisions against a pool's truth (`camid simulate --external` "
                             f"writes DATA/{POOL_TRUTH}): precision/recall of keep, reason "
                             "confusion, written next to the report")
    parser.set_defaults(copy=False)


def main(args: argparse.Namespace) -> int:
    if args.truth:
        load_truth(args.truth)  # a missing or malformed truth file fails before minutes of reading
    report = filter_external(args.src, args.rules, Path(args.out), args.train, args.copy, args.workers,
                             args.report, args.decode_all)
    if args.truth:
        score_files(report, args.truth, report.parent)
    return 0

"""`camid filter-external SRC --rules R --out DIR`: keep only untouched camera originals of the known classes."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..forensics.filter_external import DEFAULT_REPORT_NAME, filter_external


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
    parser.set_defaults(copy=False)


def main(args: argparse.Namespace) -> int:
    filter_external(args.src, args.rules, Path(args.out), args.train, args.copy, args.workers, args.report,
                    args.decode_all)
    return 0

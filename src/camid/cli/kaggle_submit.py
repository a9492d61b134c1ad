"""`camid kaggle submit`: see ``camid.cli.kaggle``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.layout import SAMPLE_SUBMISSION
from . import kaggle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", help="submission CSV (fname,camera)")
    parser.add_argument("-m", "--message", required=True, help="the submission's description on Kaggle")
    parser.add_argument("--data", default=None, help=f"competition folder: validate against its {SAMPLE_SUBMISSION}")
    parser.add_argument("--dry-run", action="store_true", help="print the kaggle command instead of running it")


def main(args: argparse.Namespace) -> int:
    kaggle.submit(Path(args.submission), args.message, Path(args.data) if args.data else None, args.dry_run)
    return 0

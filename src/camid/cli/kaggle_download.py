"""`camid kaggle download`: see ``camid.cli.kaggle``."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import kaggle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="data/kaggle", help="where to unpack the competition (default data/kaggle)")
    parser.add_argument("--dry-run", action="store_true", help="print the kaggle command instead of running it")


def main(args: argparse.Namespace) -> int:
    kaggle.download(Path(args.data), args.dry_run)
    return 0

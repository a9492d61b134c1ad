"""`camid folds`: deterministic stratified folds over train/ and extra folders, written to models/folds.csv."""
from __future__ import annotations

import argparse

from ..data.folds import make_folds, write_folds
from ..data.layout import scan_train
from ..util.log import stage_log
from .common import add_common_arguments, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--out", default=None, help="output CSV (default: <workdir>/models/folds.csv)")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    classes, scan = scan_train(ws.data_dir, cfg.classes, cfg.extra_train_dirs)
    stage_log("folds", f"read {len(scan.table)} training images in {len(classes)} classes from {ws.data_dir}")
    for path, reason in scan.skipped:
        stage_log("folds", f"skipped {path}: {reason}")
    f = cfg.folds
    folds = make_folds(scan.table, f.mode, f.n_folds, f.holdout_fraction, f.seed, external=f.external)
    out = write_folds(folds, args.out or ws.folds_csv)
    counts = folds.groupby("fold").size().to_dict()
    stage_log("folds", f"wrote {out} ({f.mode}, seed {f.seed}): images per fold {counts}")
    return 0

"""`camid folds`: deterministic stratified folds over train/ and extra folders, written to models/folds.csv."""
from __future__ import annotations

import argparse

from ..data.folds import CASE_DEVICE, group_by_device, make_folds, write_folds
from ..data.layout import attach_devices, scan_train
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
    table = group_by_device(attach_devices(ws.data_dir, scan.table), f.group)
    folds = make_folds(table, f.mode, f.n_folds, f.holdout_fraction, f.seed, group_col="group", external=f.external)
    by_device = sorted(folds.loc[folds["case"] == CASE_DEVICE, "label"].unique())
    if by_device:
        stage_log("folds", f"grouped by device (each fold validates on devices it does not train on): {by_device}; "
                           "other classes by photo")
    out = write_folds(folds.drop(columns="group"), args.out or ws.folds_csv)
    counts = folds.groupby("fold").size().to_dict()
    stage_log("folds", f"wrote {out} ({f.mode}, seed {f.seed}, group {f.group}): images per fold {counts}")
    return 0
